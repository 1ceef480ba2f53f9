"""One benchmark configuration, measured in a fresh process: `python -m wbcedge.bench.worker IN.json OUT.json`.

`wbcedge bench` starts one of these per backend / precision / thread count (and
one for the pipeline, one for the Keras baseline), so that every load time is a
cold load and every peak RSS belongs to one model alone. The job comes in as
JSON, the figures go out as JSON; nothing is printed on stdout.

Jobs (`kind`):
  model     a bundle's model file through wbcedge.device.runtime.Classifier (no TensorFlow)
  keras     a run folder's model.keras through Keras `model.predict` (TensorFlow)
  pipeline  CellPipeline + Recorder + CellTracker over frames, as `wbcedge run` does

Timing: `warmup` untimed calls, then `repeats` blocks of `runs` timed calls of
batch 1, each on a real preprocessed crop (cycled), with the garbage collector
off inside a block. Every result says whether TensorFlow ended up imported.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np


def rss_mb() -> float | None:
    """Resident memory now, in MB (Linux /proc; None elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return None


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process so far, in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    try:
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024
    except (ImportError, OSError):
        return None


def time_blocks(fn, batches: list[np.ndarray], runs: int, warmup: int, repeats: int) -> list[list[float]]:
    """Milliseconds per call: `repeats` lists of `runs` timings each, after `warmup` untimed calls."""
    n = len(batches)
    for i in range(warmup):
        fn(batches[i % n])
    blocks = []
    for _ in range(repeats):
        gc.collect()
        gc.disable()
        try:
            times = []
            for i in range(runs):
                x = batches[i % n]
                t0 = time.perf_counter()
                fn(x)
                times.append((time.perf_counter() - t0) * 1000.0)
        finally:
            gc.enable()
        blocks.append(times)
    return blocks


def _batches(inputs_npy: str) -> list[np.ndarray]:
    inputs = np.load(inputs_npy)
    return [np.ascontiguousarray(inputs[i:i + 1]) for i in range(len(inputs))]


def _xnnpack(clf) -> dict | None:
    """Whether ai-edge-litert applied a delegate (XNNPACK is its only default CPU delegate)."""
    if getattr(clf, "backend", None) != "tflite":
        return None
    try:
        names = clf.tflite_op_names()
    except Exception as exc:  # a private API: if it moves, say so rather than fail
        return {"on": None, "note": f"could not inspect the interpreter ({exc})"}
    delegated = sum(1 for n in names if n == "DELEGATE")
    return {"on": delegated > 0, "delegate_nodes": delegated, "nodes": len(names)}


def run_model(job: dict) -> dict:
    batches = _batches(job["inputs_npy"])
    t0 = time.perf_counter()
    from wbcedge.device import runtime
    if Path(job["model"]).suffix == ".tflite":
        runtime._tflite_interpreter_class()   # import the runtime now, so load_ms is the model alone
    else:
        import onnxruntime  # noqa: F401
    import_ms = (time.perf_counter() - t0) * 1000
    rss_base = rss_mb()
    t0 = time.perf_counter()
    clf = runtime.Classifier(Path(job["model"]), threads=job["threads"])
    load_ms = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    clf.predict(batches[0])
    first_ms = (time.perf_counter() - t0) * 1000
    blocks = time_blocks(clf.predict, batches, job["runs"], job["warmup"], job["repeats"])
    out = {"import_ms": import_ms, "load_ms": load_ms, "first_ms": first_ms, "blocks_ms": blocks,
           "rss_base_mb": rss_base, "rss_peak_mb": peak_rss_mb(), "runtime": clf.runtime,
           "threads": clf.threads, "input_size": clf.input_size, "input_dtype": str(clf.input_dtype)}
    if clf.backend == "tflite":
        out["xnnpack"] = _xnnpack(clf)
    if job.get("data_npy"):
        out["predictions"] = clf.predict_many(np.load(job["data_npy"]), 64).argmax(1).tolist()
    return out


def run_keras(job: dict) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    batches = _batches(job["inputs_npy"])
    t0 = time.perf_counter()
    import keras  # noqa: F401
    import_ms = (time.perf_counter() - t0) * 1000
    from wbcedge.train.run_folder import load_run
    rss_base = rss_mb()
    t0 = time.perf_counter()
    predictor = load_run(Path(job["run"]))
    load_ms = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    predictor.predict(batches[0])
    first_ms = (time.perf_counter() - t0) * 1000
    blocks = time_blocks(predictor.predict, batches, job["runs"], job["warmup"], job["repeats"])
    out = {"import_ms": import_ms, "load_ms": load_ms, "first_ms": first_ms, "blocks_ms": blocks,
           "rss_base_mb": rss_base, "rss_peak_mb": peak_rss_mb(), "runtime": f"keras {keras.__version__}",
           "input_size": int(predictor.keras_model.input_shape[1])}
    # What `model.predict` costs beyond the network itself: the same model through the compiled
    # `predict_on_batch` (an eager `model(x)` walks the layers one by one and is slower still).
    model = predictor.keras_model

    def on_batch(x):
        return np.asarray(model.predict_on_batch(x.astype(np.float32)))

    t0 = time.perf_counter()
    on_batch(batches[0])
    out["on_batch_first_ms"] = (time.perf_counter() - t0) * 1000
    out["on_batch_blocks_ms"] = time_blocks(on_batch, batches, job["runs"], job["warmup"], job["repeats"])
    if job.get("data_npy"):
        x = np.load(job["data_npy"])
        probs = np.concatenate([predictor.predict(x[i:i + 64]) for i in range(0, len(x), 64)])
        out["predictions"] = probs.argmax(1).tolist()
    return out


def run_pipeline(job: dict) -> dict:
    from wbcedge.bundle import load_bundle
    from wbcedge.device.capture import ImageFilesSource
    from wbcedge.device.pipeline import CellPipeline, StageTimer, run_session
    from wbcedge.device.records import Recorder
    from wbcedge.device.track import CellTracker

    bundle = load_bundle(Path(job["bundle"]), verify=False)  # the parent verified it
    t0 = time.perf_counter()
    pipeline = CellPipeline(bundle, job["backend"], job["precision"], job["threads"], um_per_px=job.get("um_per_px"))
    load_ms = (time.perf_counter() - t0) * 1000
    paths = [Path(p) for p in job["frames"]]

    def frames(n: int) -> list[Path]:
        return [paths[i % len(paths)] for i in range(n)]

    blocks = []
    with tempfile.TemporaryDirectory(prefix="wbcedge-bench-") as tmp:
        # Warm-up (untimed): the first frames pay for lazy allocation and the delegate's weight packing.
        for i in range(job["repeats"] + 1):
            n = job["warmup_frames"] if i == 0 else job["frames_per_repeat"]
            if n <= 0:
                continue
            pipeline.timer = StageTimer()
            recorder = Recorder(Path(tmp) / f"run{i}")
            source = ImageFilesSource(frames(n), "bench frames")
            # Exactly what `wbcedge run` does with the same profile: no focus stage without one.
            result = run_session(source, pipeline, recorder, CellTracker(tracking=False),
                                 blur_threshold=job.get("blur_threshold"))
            recorder.close(finished=True)
            if i == 0:
                continue
            blocks.append({"frames": result.frames_seen, "cells": len(result.labels),
                           "problems": source.problems, **result.timing})
    return {"load_ms": load_ms, "blocks": blocks, "rss_peak_mb": peak_rss_mb(),
            "model_file": pipeline.model_entry["file"], "threads": pipeline.classifier.threads,
            "runtime": pipeline.classifier.runtime}


JOBS = {"model": run_model, "keras": run_keras, "pipeline": run_pipeline}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        sys.stderr.write("usage: python -m wbcedge.bench.worker IN.json OUT.json (started by `wbcedge bench`)\n")
        return 2
    job = json.loads(Path(argv[0]).read_text())
    try:
        out = JOBS[job["kind"]](job)
        out["ok"] = True
    except Exception as exc:
        out = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    out["tensorflow_imported"] = "tensorflow" in sys.modules
    Path(argv[1]).write_text(json.dumps(out))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
