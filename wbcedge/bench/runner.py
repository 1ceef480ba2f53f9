"""`wbcedge bench`: how fast, how big and how accurate a bundle is on this machine.

    result = run_bench(load_bundle(None), BenchOptions(threads=(1, 2)))
    console.print(rows_table(result)); write_json(Path("bench.json"), result)

For every backend x precision x thread count a fresh worker process
(`wbcedge.bench.worker`) loads the model cold and times it on real preprocessed
crops at batch 1: load, first inference, `runs` calls after `warmup`. This is
done in `repeats` rounds (every configuration once per round, alternating the
order), so machine noise hits all rows alike; p50/p90/p99 and throughput pool
the rounds, their p50 spread is the benchmark's own noise, RSS is the peak;
with labelled data, accuracy with its exact 95 % interval. The full pipeline (decode, focus, locate,
preprocess, infer, bookkeeping) runs over frames in another worker, and its
per-stage times are checked against the wall clock. The Keras baseline (the
same model through `model.predict`, one image at a time) runs in its own worker
only when TensorFlow is installed and the run folder is known: this process
never imports TensorFlow.

Results are one plain dict (JSON-ready). `compare(new, old)` gives new/old
ratios per matching row; `check_floors(result, floors)` lists every figure
that broke a bound given as `[SELECTOR:]METRIC(>=|<=|=)VALUE`.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from wbcedge.bench.machine import machine_info
from wbcedge.bundle import Bundle
from wbcedge.errors import WbcedgeError
from wbcedge.preprocess import IMAGE_SUFFIXES

PACKAGE = Path(__file__).resolve().parent.parent
REPO_ROOT = PACKAGE.parent
SAMPLE_CROPS = PACKAGE / "samples" / "pbc"
SAMPLE_FRAMES = PACKAGE / "samples" / "frames"
RESULT_FORMAT = "wbcedge-bench"
RESULT_VERSION = 1
WORKER_TIMEOUT_S = 1800
KERAS = "keras"


class BenchError(WbcedgeError):
    """A benchmark that cannot run as asked; the message says what to change."""


@dataclass
class BenchOptions:
    backends: tuple[str, ...] | None = None      # None: every backend the bundle has
    precisions: tuple[str, ...] | None = None    # None: every precision the bundle has
    threads: tuple[int, ...] | None = None       # None: default_threads()
    runs: int = 100                              # timed calls per block
    warmup: int = 10                             # untimed calls before the first block
    repeats: int = 3                             # rounds (a fresh process each); their p50 spread = noise
    data: Path | None = None                     # labelled crops (class folders or a manifest) for accuracy
    frames: Path | None = None                   # None: the built-in sample frames
    pipeline: bool = True
    pipeline_frames: int = 200                   # frames timed in total (split over `repeats`)
    baseline: bool = True                        # the Keras baseline, when TensorFlow and the run are here
    keras_run: Path | None = None                # None: found from the bundle's source_run
    keras_runs: int | None = None                # None: min(runs, 50) (model.predict is slow)


def default_threads() -> tuple[int, ...]:
    """1 and the runtime's default (up to 4 cores), e.g. (1, 2) on a 2-core machine, (1, 4) on a Pi 4."""
    from wbcedge.bench.machine import usable_cores
    return tuple(sorted({1, min(4, usable_cores())}))


# ---------------------------------------------------------------- statistics

def percentile(values, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def latency_stats(blocks: list[list[float]]) -> dict:
    """p50/p90/p99/mean over all timed calls, throughput at batch 1, and the p50 spread across blocks."""
    pooled = [t for b in blocks for t in b]
    block_p50 = [percentile(b, 50) for b in blocks]
    mid = float(np.median(block_p50))
    mean = float(np.mean(pooled))
    return {"p50_ms": percentile(pooled, 50), "p90_ms": percentile(pooled, 90), "p99_ms": percentile(pooled, 99),
            "mean_ms": mean, "min_ms": float(np.min(pooled)), "throughput_per_s": 1000.0 / mean if mean else None,
            "timed_calls": len(pooled), "p50_blocks_ms": block_p50,
            "spread_pct": 100.0 * (max(block_p50) - min(block_p50)) / mid if mid else None}


# ---------------------------------------------------------------- inputs

def sample_crop_paths(folder: Path = SAMPLE_CROPS) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def latency_inputs(spec, paths: list[Path] | None = None) -> np.ndarray:
    """Real crops, preprocessed by the bundle's own spec: what the model sees on the device."""
    from wbcedge.preprocess import read_image, to_model_input

    paths = paths if paths is not None else sample_crop_paths()
    if not paths:
        raise BenchError(f"no sample crops in {SAMPLE_CROPS}: the wbcedge install is incomplete; reinstall it")
    return np.stack([to_model_input(read_image(p), spec) for p in paths])


def labelled_data(source: Path, bundle: Bundle) -> tuple[list, np.ndarray, str]:
    """Records, class indices in the bundle's order, and a description, from class folders or a manifest.

    A manifest's test split is used when it has one, otherwise all its rows.
    """
    from wbcedge.data import EXCLUDED, load_split

    source = Path(source)
    if not source.exists():
        raise BenchError(f"--data {source}: no such folder or manifest; give a folder of class sub-folders "
                         "or a manifest made by `wbcedge data index`")
    try:
        records = load_split(source)
    except (ValueError, OSError) as exc:
        raise BenchError(f"--data {source}: {exc}") from None
    what = f"{source}"
    if source.is_file():
        test = [r for r in records if r.split == "test"]
        records = test or [r for r in records if r.split != EXCLUDED]
        what += " (test split)" if test else " (all rows)"
    if not records:
        raise BenchError(f"--data {source}: no labelled images found")
    classes = bundle.classes
    unknown = sorted({r.label for r in records} - set(classes))
    if unknown:
        raise BenchError(f"--data {source}: labels {unknown} are not classes of this bundle ({', '.join(classes)})")
    return records, np.array([classes.index(r.label) for r in records], np.int64), what


def accuracy_with_ci(y_true: np.ndarray, pred: list[int]) -> dict:
    pred = np.asarray(pred)
    correct, n = int((pred == y_true).sum()), int(len(y_true))
    out = {"accuracy": correct / n if n else None, "accuracy_n": n, "accuracy_ci95": None}
    try:
        from wbcedge.evaluation.metrics import proportion_ci
        lo, hi = proportion_ci(correct, n)
        out["accuracy_ci95"] = [lo, hi]
    except ModuleNotFoundError as exc:  # SciPy is in the report extra, not on every device
        out["accuracy_note"] = f"no 95% interval: {exc}"
    return out


def frame_paths(frames: Path | None) -> tuple[list[Path], str]:

    folder = Path(frames) if frames is not None else SAMPLE_FRAMES
    if frames is None and not folder.is_dir():
        raise BenchError(f"this install has no built-in sample frames ({SAMPLE_FRAMES}); "
                         "give a folder of microscope frames with --frames DIR, or --no-pipeline")
    if folder.is_file() and folder.suffix.lower() in IMAGE_SUFFIXES:
        return [folder], str(folder)
    if not folder.is_dir():
        raise BenchError(f"--frames {folder}: no such folder; give a folder of frame images (.jpg, .png, ...)")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise BenchError(f"--frames {folder}: holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return paths, str(folder)


# ---------------------------------------------------------------- selection and the Keras run

def select_models(bundle: Bundle, backends, precisions) -> list[dict]:
    """The bundle's model entries to benchmark, in a stable order (TFLite before ONNX, int8 before fp32)."""
    models = bundle.models
    have = ", ".join(f"{m['backend']}/{m['precision']}" for m in models) or "none"
    for name, wanted, key in (("backend", backends, "backend"), ("precision", precisions, "precision")):
        for w in wanted or ():
            if not any(m[key] == w for m in models):
                raise BenchError(f"{bundle.path} has no {name} '{w}' (it has: {have}); "
                                 f"choose from those, or re-export with the formats you need")
    chosen = [m for m in models if (not backends or m["backend"] in backends)
              and (not precisions or m["precision"] in precisions)]
    if not chosen:
        raise BenchError(f"{bundle.path} has no model matching backends={','.join(backends or ['any'])} "
                         f"precisions={','.join(precisions or ['any'])} (it has: {have})")
    order = {"tflite": 0, "onnx": 1}
    prec = {"int8": 0, "fp16": 1, "fp32": 2}
    return sorted(chosen, key=lambda m: (order.get(m["backend"], 9), prec.get(m["precision"], 9)))


def find_keras_run(bundle: Bundle, explicit: Path | None, cwd: Path | None = None) -> tuple[Path | None, str]:
    """The Keras run folder behind a bundle, and a sentence on how it was found (or why not)."""
    if explicit is not None:
        if not (Path(explicit) / "model.keras").is_file():
            raise BenchError(f"--keras-run {explicit}: not a run folder (no model.keras); give the folder "
                             "`wbcedge train` wrote, or leave the option out")
        return Path(explicit), f"--keras-run {explicit}"
    name = bundle.manifest.get("source_run")
    if not name:
        return None, "the bundle's manifest names no source_run; give --keras-run PATH for the Keras baseline"
    cwd = Path(cwd or Path.cwd())
    candidates = [base / sub / name for base in dict.fromkeys((cwd, REPO_ROOT)) for sub in ("training/runs", "runs")]
    for c in candidates:
        if (c / "model.keras").is_file():
            return c, f"source_run '{name}' found at {c}"
    return None, (f"the bundle's source run '{name}' is not under training/runs/ or runs/ here; "
                  "give --keras-run PATH for the Keras baseline")


# ---------------------------------------------------------------- workers

def run_worker(job: dict, tmp: Path, timeout: float = WORKER_TIMEOUT_S) -> dict:
    """Run one job in a fresh `python -m wbcedge.bench.worker` and return its JSON result."""
    tag = f"{job['kind']}-{int(time.monotonic_ns())}"
    job_path, out_path = tmp / f"{tag}.in.json", tmp / f"{tag}.out.json"
    job_path.write_text(json.dumps(job))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"))
    try:
        proc = subprocess.run([sys.executable, "-m", "wbcedge.bench.worker", str(job_path), str(out_path)],
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise BenchError(f"a benchmark worker ({job['kind']}) ran past {timeout:.0f} s; use fewer --runs") from None
    if not out_path.is_file():
        tail = (proc.stderr or proc.stdout).strip()[-1500:]
        raise BenchError(f"the benchmark worker ({job['kind']}) died with exit code {proc.returncode} "
                         f"before reporting (out of memory?):\n{tail}")
    result = json.loads(out_path.read_text())
    if not result.get("ok"):
        raise BenchError(f"benchmark worker ({job['kind']}) failed: {result.get('error')}\n"
                         f"{result.get('traceback', '')[-1500:]}")
    return result


def _model_row(entry: dict, bundle: Bundle, threads: int, rounds: list[dict]) -> dict:
    """One row from the worker results of its rounds (one fresh process per round)."""
    size = (bundle.path / entry["file"]).stat().st_size

    def median(key):
        return float(np.median([r[key] for r in rounds]))

    first = rounds[0]
    row = {"backend": entry["backend"], "precision": entry["precision"], "threads": threads,
           "file": entry["file"], "size_bytes": size, "size_mb": size / 1e6,
           "import_ms": median("import_ms"), "load_ms": median("load_ms"), "first_ms": median("first_ms"),
           **latency_stats([b for r in rounds for b in r["blocks_ms"]]),
           "rss_peak_mb": max((r["rss_peak_mb"] for r in rounds if r["rss_peak_mb"] is not None), default=None),
           "rss_base_mb": first["rss_base_mb"],
           "load_ms_rounds": [r["load_ms"] for r in rounds], "first_ms_rounds": [r["first_ms"] for r in rounds],
           "runtime": first["runtime"], "tensorflow_imported": any(r["tensorflow_imported"] for r in rounds),
           "accuracy": None, "accuracy_ci95": None, "accuracy_source": None, "speedup": None}
    if "xnnpack" in first:
        row["xnnpack"] = first["xnnpack"]
    if entry.get("accuracy") is not None:
        row["export_accuracy"] = entry["accuracy"]
    return row


# ---------------------------------------------------------------- the benchmark

def run_bench(bundle: Bundle, opts: BenchOptions, progress: Callable[[str], None] = lambda s: None,
              cwd: Path | None = None) -> dict:
    """Benchmark a verified bundle; see the module docstring. Raises BenchError on a request it cannot meet."""
    for name in ("runs", "repeats"):
        if getattr(opts, name) < 1:
            raise BenchError(f"--{name} {getattr(opts, name)}: give at least 1")
    if opts.warmup < 0:
        raise BenchError(f"--warmup {opts.warmup}: give 0 or more")
    threads = tuple(dict.fromkeys(opts.threads)) if opts.threads else default_threads()
    if any(t < 1 for t in threads):
        raise BenchError(f"--threads {','.join(map(str, threads))}: thread counts must be 1 or more")
    entries = select_models(bundle, opts.backends, opts.precisions)
    notes: list[str] = []
    frames, frames_label = (frame_paths(opts.frames) if opts.pipeline else ([], None))
    keras_run, keras_note = (None, "the Keras baseline was switched off (--no-baseline)")
    if opts.baseline:
        keras_run, keras_note = find_keras_run(bundle, opts.keras_run, cwd)
        if keras_run is not None and importlib.util.find_spec("tensorflow") is None:
            if opts.keras_run is not None:
                raise BenchError("--keras-run needs TensorFlow, which is not installed here "
                                 "(pip install 'wbcedge[train]'); on a device, leave the option out")
            keras_note, keras_run = f"{keras_note}, but TensorFlow is not installed: Keras baseline skipped", None
    if keras_run is not None:
        from wbcedge.preprocess import PreprocessSpec
        run_spec = PreprocessSpec.load(keras_run)
        if run_spec.input_size != bundle.spec.input_size:
            raise BenchError(f"the Keras run {keras_run} takes {run_spec.input_size}px inputs but the bundle "
                             f"{bundle.spec.input_size}px: it is not this bundle's source; give the right --keras-run")
    notes.append(keras_note)

    result: dict = {"format": RESULT_FORMAT, "format_version": RESULT_VERSION,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(),
                    "bundle": {"path": str(bundle.path), "default_model": bundle.manifest.get("default_model"),
                               "source_run": bundle.manifest.get("source_run"),
                               "input_size": bundle.spec.input_size, "deployable": bundle.deployable},
                    "options": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
                                "threads": list(threads)},
                    "rows": [], "baseline": None, "pipeline": None, "notes": notes}
    if opts.pipeline:
        result["options"]["frames"] = frames_label
    with tempfile.TemporaryDirectory(prefix="wbcedge-bench-") as tmp_name:
        tmp = Path(tmp_name)
        inputs_npy = tmp / "latency_inputs.npy"
        np.save(inputs_npy, latency_inputs(bundle.spec))
        data_npy, y_true = None, None
        if opts.data is not None:
            from wbcedge.preprocess import load_inputs
            records, y_true, what = labelled_data(opts.data, bundle)
            progress(f"accuracy data: {len(records)} labelled crops from {what}")
            data_npy = tmp / "data_inputs.npy"
            np.save(data_npy, load_inputs([r.path for r in records], bundle.spec))
            result["options"]["data"] = what

        # Rounds: every configuration once per round, each in a fresh process, in alternating order, so that
        # other jobs on the machine hit every row alike and the spread across rounds shows the drift too.
        configs = [(e, t) for e in entries for t in threads]
        rounds: dict[int, list[dict]] = {i: [] for i in range(len(configs))}
        predictions: dict[str, list[int]] = {}
        for r in range(opts.repeats):
            order = list(range(len(configs)))
            for i in (order if r % 2 == 0 else order[::-1]):
                entry, t = configs[i]
                want_accuracy = data_npy is not None and entry["file"] not in predictions
                job = {"kind": "model", "model": str(bundle.path / entry["file"]), "threads": t,
                       "runs": opts.runs, "warmup": opts.warmup, "repeats": 1, "inputs_npy": str(inputs_npy),
                       # accuracy does not depend on the thread count or the round: measured once per file
                       "data_npy": str(data_npy) if want_accuracy else None}
                res = run_worker(job, tmp)
                if "predictions" in res:
                    predictions[entry["file"]] = res["predictions"]
                rounds[i].append(res)
            progress(f"round {r + 1} of {opts.repeats}: {len(configs)} configuration{'s' * (len(configs) > 1)} "
                     "timed, each in a fresh process")
        for i, (entry, t) in enumerate(configs):
            row = _model_row(entry, bundle, t, rounds[i])
            if entry["file"] in predictions:
                row.update(accuracy_with_ci(y_true, predictions[entry["file"]]), accuracy_source="--data")
            elif row.get("export_accuracy") is not None:
                row.update(accuracy=row["export_accuracy"], accuracy_source="export report")
            result["rows"].append(row)
            progress(f"{row['backend']} {row['precision']} {t} thread{'s' * (t > 1)}: p50 {row['p50_ms']:.2f} ms "
                     f"(spread {row['spread_pct']:.0f}%), load {row['load_ms']:.0f} ms, "
                     f"RSS {row['rss_peak_mb'] or 0:.0f} MB")

        if keras_run is not None:
            progress(f"Keras baseline: {keras_run} (model.predict, one image at a time)")
            job = {"kind": "keras", "run": str(keras_run), "runs": opts.keras_runs or min(opts.runs, 50),
                   "warmup": min(opts.warmup, 5) if opts.warmup else 0, "repeats": opts.repeats,
                   "inputs_npy": str(inputs_npy), "data_npy": str(data_npy) if data_npy is not None else None}
            res = run_worker(job, tmp)
            base = {"backend": KERAS, "precision": "fp32", "threads": None, "mode": "model.predict",
                    "file": str(Path(keras_run) / "model.keras"),
                    "size_bytes": (Path(keras_run) / "model.keras").stat().st_size,
                    "import_ms": res["import_ms"], "load_ms": res["load_ms"], "first_ms": res["first_ms"],
                    **latency_stats(res["blocks_ms"]), "rss_peak_mb": res["rss_peak_mb"],
                    "rss_base_mb": res["rss_base_mb"], "runtime": res["runtime"],
                    "accuracy": None, "accuracy_ci95": None, "accuracy_source": None, "speedup": None}
            base["size_mb"] = base["size_bytes"] / 1e6
            if "predictions" in res:
                base.update(accuracy_with_ci(y_true, res["predictions"]), accuracy_source="--data")
            on_batch = latency_stats(res["on_batch_blocks_ms"])
            base["predict_on_batch"] = {"first_ms": res["on_batch_first_ms"], **on_batch}
            result["baseline"] = base
            for row in result["rows"]:
                row["speedup"] = base["p50_ms"] / row["p50_ms"] if row["p50_ms"] else None
                row["speedup_vs_predict_on_batch"] = on_batch["p50_ms"] / row["p50_ms"] if row["p50_ms"] else None
            progress(f"Keras model.predict p50 {base['p50_ms']:.1f} ms (predict_on_batch {on_batch['p50_ms']:.1f} ms)")

        if opts.pipeline:
            default = next((e for e in entries if e["file"] == bundle.manifest.get("default_model")), entries[0])
            t = max(threads)
            per_repeat = max(1, math.ceil(opts.pipeline_frames / opts.repeats))
            progress(f"pipeline: {per_repeat * opts.repeats} frames from {frames_label} with "
                     f"{default['file']} at {t} thread{'s' * (t > 1)}")
            job = {"kind": "pipeline", "bundle": str(bundle.path), "backend": default["backend"],
                   "precision": default["precision"], "threads": t, "frames": [str(p) for p in frames],
                   "frames_per_repeat": per_repeat, "repeats": opts.repeats,
                   "warmup_frames": min(len(frames), 10)}
            res = run_worker(job, tmp)
            result["pipeline"] = pipeline_summary(res, default, t, frames_label)
            p = result["pipeline"]
            progress(f"pipeline: {p['fps']:.1f} frames/s end to end, stages sum to {p['stages_ms_per_frame']:.1f} "
                     f"of {p['wall_ms_per_frame']:.1f} ms per frame (gap {p['stage_gap_pct']:+.1f}%)")
            if p["cells_per_frame"] == 0:
                notes.append("the locator found no cells in the pipeline frames: the infer stage timed nothing")
    try:  # other jobs on the machine during the run show here
        result["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        pass
    result["xnnpack"] = _xnnpack_summary(result["rows"])
    result["tensorflow_imported_by_device_path"] = any(r.get("tensorflow_imported") for r in result["rows"])
    return result


def pipeline_summary(res: dict, entry: dict, threads: int, frames_label: str) -> dict:
    """Per-stage ms per frame pooled over the blocks, end-to-end fps, and how far the stages miss the wall clock."""
    from wbcedge.device.pipeline import STAGES

    blocks = res["blocks"]
    frames = sum(b["frames"] for b in blocks)
    wall_s = sum(b["wall_s"] for b in blocks)
    stage_ms = {s: sum(b["ms_per_frame"][s] * b["frames"] for b in blocks) / max(frames, 1) for s in STAGES}
    stages_sum = sum(stage_ms.values())
    wall_ms = 1000.0 * wall_s / max(frames, 1)
    fps_blocks = [b["fps_end_to_end"] for b in blocks if b.get("fps_end_to_end")]
    mid = float(np.median(fps_blocks)) if fps_blocks else None
    problems = sorted({p for b in blocks for p in b.get("problems", [])})
    return {"backend": entry["backend"], "precision": entry["precision"], "threads": threads, "file": entry["file"],
            "frames_source": frames_label, "frames": frames, "cells": sum(b["cells"] for b in blocks),
            "cells_per_frame": sum(b["cells"] for b in blocks) / max(frames, 1),
            "stage_ms_per_frame": stage_ms, "stages_ms_per_frame": stages_sum, "wall_ms_per_frame": wall_ms,
            "stage_gap_pct": 100.0 * (wall_ms - stages_sum) / wall_ms if wall_ms else None,
            "fps": frames / wall_s if wall_s else None, "fps_blocks": fps_blocks,
            "spread_pct": 100.0 * (max(fps_blocks) - min(fps_blocks)) / mid if mid else None,
            "load_ms": res["load_ms"], "rss_peak_mb": res["rss_peak_mb"], "runtime": res["runtime"],
            "tensorflow_imported": res["tensorflow_imported"], "frame_problems": problems}


def _xnnpack_summary(rows: list[dict]) -> str:
    states = {r["xnnpack"].get("on") for r in rows if r.get("xnnpack")}
    if not states:
        return "not applicable (no TFLite rows)"
    if states == {True}:
        return "on"
    if states == {False}:
        return "OFF: TFLite ran without XNNPACK (int8 is 10-70x slower so)"
    return "mixed or unknown: see the xnnpack field of each TFLite row"


# ---------------------------------------------------------------- floors

# metric -> (where it lives, row key, the good direction, how a value is read from the command line)
METRICS: dict[str, tuple[str, str, str]] = {
    "p50_ms": ("row", "p50_ms", "<="), "p90_ms": ("row", "p90_ms", "<="), "p99_ms": ("row", "p99_ms", "<="),
    "first_ms": ("row", "first_ms", "<="), "load_ms": ("row", "load_ms", "<="),
    "rss_mb": ("row", "rss_peak_mb", "<="), "size_mb": ("row", "size_mb", "<="),
    "spread_pct": ("row", "spread_pct", "<="),
    "throughput": ("row", "throughput_per_s", ">="), "speedup": ("row", "speedup", ">="),
    "accuracy": ("row", "accuracy", ">="),          # in percent on the command line
    "fps": ("pipeline", "fps", ">="), "stage_gap_pct": ("pipeline", "stage_gap_pct", "<="),
}
FLOOR_SYNTAX = ("[BACKEND[/PRECISION[/THREADS]]:]METRIC(>=|<=|=)VALUE, e.g. fps=30, speedup=10, p50_ms<=5, "
                "tflite/int8/2:p50_ms<=3; '=' means 'at least' for fps, throughput, speedup and accuracy (percent) "
                "and 'at most' for *_ms, rss_mb, size_mb, spread_pct and stage_gap_pct; '*' matches anything")
_FLOOR_RE = re.compile(r"^\s*(?:(?P<sel>[A-Za-z0-9_*]+(?:/[A-Za-z0-9_*]+){0,2})\s*:)?\s*"
                       r"(?P<metric>[a-z0-9_]+)\s*(?P<op>>=|<=|=)\s*(?P<value>[-+0-9.eE]+)\s*%?\s*$")


@dataclass(frozen=True)
class Floor:
    text: str
    metric: str
    op: str               # ">=" or "<="
    value: float
    selector: tuple[str, ...] = ()   # (backend, precision, threads) prefix; "*" = any

    def matches(self, row: dict) -> bool:
        keys = (row.get("backend"), row.get("precision"), str(row.get("threads")))
        return all(s == "*" or s == k for s, k in zip(self.selector, keys))

    def broken_by(self, value: float) -> bool:
        return value < self.value if self.op == ">=" else value > self.value


def parse_floor(text: str) -> Floor:
    m = _FLOOR_RE.match(text)
    if not m:
        raise BenchError(f"--floor {text!r} is not understood; the form is {FLOOR_SYNTAX}")
    metric = m["metric"]
    if metric not in METRICS:
        raise BenchError(f"--floor {text!r}: unknown metric '{metric}'; known: {', '.join(METRICS)}")
    try:
        value = float(m["value"])
    except ValueError:
        raise BenchError(f"--floor {text!r}: '{m['value']}' is not a number") from None
    op = METRICS[metric][2] if m["op"] == "=" else m["op"]
    selector = tuple(m["sel"].split("/")) if m["sel"] else ()
    return Floor(text.strip(), metric, op, value, selector)


def _label(row: dict) -> str:
    threads = row.get("threads")
    return f"{row['backend']}/{row['precision']}" + (f"/{threads}" if threads is not None else "")


def check_floors(result: dict, floors: list[Floor]) -> list[str]:
    """One sentence per broken floor and row; a floor that no row could be checked against counts as broken."""
    broken = []
    for f in floors:
        where, key, _ = METRICS[f.metric]
        rows = [result["pipeline"]] if where == "pipeline" and result.get("pipeline") else \
            (result["rows"] if where == "row" else [])
        rows = [r for r in rows if f.matches(r)]
        checked = 0
        for r in rows:
            value = r.get(key)
            if value is None:
                continue
            checked += 1
            shown = 100 * value if f.metric == "accuracy" else value
            if f.broken_by(shown):
                broken.append(f"{_label(r)}{' pipeline' if where == 'pipeline' else ''}: "
                              f"{f.metric} = {shown:.4g}, floor {f.metric} {f.op} {f.value:g} (from --floor {f.text})")
        if checked == 0:
            if not rows:
                if where == "pipeline" and not result.get("pipeline"):
                    why = "the pipeline was not run (--no-pipeline)"
                elif f.selector:
                    why = f"nothing benchmarked matches {'/'.join(f.selector)}"
                else:
                    why = "nothing was benchmarked"
            else:
                why = {"speedup": "no Keras baseline was measured (see the notes for why)",
                       "accuracy": "no accuracy was measured (give --data) nor found in the bundle's export report",
                       }.get(f.metric, f"no row has a {f.metric} figure")
            broken.append(f"--floor {f.text} could not be checked: {why}")
    return broken


# ---------------------------------------------------------------- compare

COMPARED = ("p50_ms", "p90_ms", "p99_ms", "throughput_per_s", "load_ms", "first_ms", "rss_peak_mb", "size_bytes")


def load_result(path: Path) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise BenchError(f"--compare {path}: cannot read it ({exc.strerror or exc})") from None
    except json.JSONDecodeError as exc:
        raise BenchError(f"--compare {path}: not valid JSON ({exc})") from None
    if data.get("format") != RESULT_FORMAT:
        raise BenchError(f"--compare {path}: not a `wbcedge bench` result (format {data.get('format')!r}); "
                         "give a JSON file written by `wbcedge bench`")
    return data


def _key(row: dict) -> tuple:
    return (row.get("backend"), row.get("precision"), row.get("threads"))


def compare(new: dict, old: dict) -> dict:
    """new/old ratios per row matched by backend/precision/threads, for the pipeline, and what did not match."""
    def ratio(a, b):
        return a / b if a is not None and b not in (None, 0) else None

    new_rows = list(new["rows"]) + ([new["baseline"]] if new.get("baseline") else [])
    old_rows = {_key(r): r for r in list(old["rows"]) + ([old["baseline"]] if old.get("baseline") else [])}
    rows, unmatched = [], []
    for r in new_rows:
        o = old_rows.pop(_key(r), None)
        if o is None:
            unmatched.append(f"{_label(r)}: only in the new result")
            continue
        rows.append({"backend": r["backend"], "precision": r["precision"], "threads": r["threads"],
                     "ratios": {k: ratio(r.get(k), o.get(k)) for k in COMPARED}})
    unmatched += [f"{_label(o)}: only in the old result" for o in old_rows.values()]
    pipe = None
    if new.get("pipeline") and old.get("pipeline"):
        n, o = new["pipeline"], old["pipeline"]
        pipe = {"fps": ratio(n["fps"], o["fps"]),
                "stage_ms_per_frame": {s: ratio(v, o["stage_ms_per_frame"].get(s))
                                       for s, v in n["stage_ms_per_frame"].items()},
                "same_setup": all(n[k] == o[k] for k in ("file", "threads", "frames_source"))}
    notes = []
    if new["machine"].get("cpu") != old["machine"].get("cpu"):
        notes.append(f"different machines: {old['machine'].get('cpu')} (old) vs {new['machine'].get('cpu')} (new)")
    if new["bundle"]["path"] != old["bundle"]["path"]:
        notes.append(f"different bundles: {old['bundle']['path']} (old) vs {new['bundle']['path']} (new)")
    return {"old_created": old.get("created"), "rows": rows, "pipeline": pipe, "unmatched": unmatched, "notes": notes}


# ---------------------------------------------------------------- tables

def _f(value, fmt: str = ".2f", none: str = "-") -> str:
    return none if value is None else format(value, fmt)


def _num(value, none: str = "-") -> str:
    """3 significant figures, no exponent: 0.142, 1.42, 14.2, 142, 1420."""
    if value is None:
        return none
    a = abs(value)
    return f"{value:.3f}" if a < 1 else f"{value:.2f}" if a < 10 else f"{value:.1f}" if a < 100 else f"{value:.0f}"


def _acc(row: dict) -> str:
    if row.get("accuracy") is None:
        return "-"
    text = f"{100 * row['accuracy']:.1f}"
    ci = row.get("accuracy_ci95")
    if ci:
        text += f" ({100 * ci[0]:.1f}-{100 * ci[1]:.1f})"
    if row.get("accuracy_source") == "export report":
        text += " *"
    return text


ROW_HEADERS = ("model", "threads", "MB", "load", "first", "p50", "p90", "p99", "img/s", "RSS",
               "spread", "accuracy % (95% CI)", "vs Keras")


def row_cells(row: dict) -> list[str]:
    threads = "TF" if row.get("threads") is None else str(row["threads"])
    name = "keras predict" if row["backend"] == KERAS else f"{row['backend']} {row['precision']}"
    speedup = "1x" if row["backend"] == KERAS else (f"{_num(row['speedup'])}x" if row.get("speedup") else "-")
    return [name, threads, _num(row["size_mb"]), _num(row["load_ms"]), _num(row["first_ms"]),
            _num(row["p50_ms"]), _num(row["p90_ms"]), _num(row["p99_ms"]), _num(row["throughput_per_s"]),
            _f(row["rss_peak_mb"], ".0f"), _f(row.get("spread_pct"), ".0f") + "%", _acc(row), speedup]


def _all_rows(result: dict) -> list[dict]:
    return list(result["rows"]) + ([result["baseline"]] if result.get("baseline") else [])


def footnotes(result: dict) -> list[str]:
    o = result["options"]
    out = [f"machine: {machine_line_of(result)}",
           f"times in ms at batch 1 on real preprocessed crops: {o['repeats']} rounds, each running every row in a "
           f"fresh process ({o['warmup']} warm-up calls, then {o['runs']} timed calls); load and first call = median "
           "over the rounds, RSS = peak (MB); img/s = 1000 / mean ms; spread = (max - min) / median of the rounds' "
           f"p50 (the benchmark's own noise); MB = file size; XNNPACK: {result.get('xnnpack', '?')}"]
    if any(r.get("accuracy_source") == "export report" for r in result["rows"]):
        out.append("* accuracy from the bundle's export report (its test split); give --data to measure it here")
    if any(r.get("accuracy_source") == "--data" for r in result["rows"]):
        out.append(f"accuracy with exact (Clopper-Pearson) 95% interval on {o['data']}")
    base = result.get("baseline")
    if base:
        ob = base["predict_on_batch"]["p50_ms"]
        best = max((r for r in result["rows"] if r.get("speedup")), key=lambda r: r["speedup"], default=None)
        line = (f"vs Keras = Keras model.predict p50 / row p50 (model.predict on one image: {base['p50_ms']:.1f} ms; "
                f"the compiled model.predict_on_batch, which few users reach for: {ob:.2f} ms")
        if best is not None:
            line += f", {best['speedup_vs_predict_on_batch']:.1f}x slower than {_label(best)}"
        out.append(line + "); TF = TensorFlow's default threads")
    out += result.get("notes", [])
    return out


def machine_line_of(result: dict) -> str:
    from wbcedge.bench.machine import machine_line
    return machine_line(result["machine"])


def _table(title: str, headers, left: int = 1, caption: str | None = None):
    from rich import box
    from rich.table import Table

    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1))
    for i, h in enumerate(headers):
        table.add_column(h, justify="left" if i < left else "right", no_wrap=i < left)
    return table


def rows_table(result: dict):
    table = _table(f"wbcedge bench: {result['bundle']['path']}", ROW_HEADERS)
    for row in _all_rows(result):
        table.add_row(*row_cells(row), style="dim" if row["backend"] == KERAS else None)
    return table


def pipeline_rows(p: dict) -> list[list[str]]:
    total = p["wall_ms_per_frame"]
    rows = [[s, _num(ms), _f(100 * ms / total if total else None, ".1f") + "%"]
            for s, ms in p["stage_ms_per_frame"].items()]
    rows.append(["sum of stages", _num(p["stages_ms_per_frame"]),
                 _f(100 * p["stages_ms_per_frame"] / total if total else None, ".1f") + "%"])
    rows.append(["end to end (wall)", _num(total), "100.0%"])
    return rows


def pipeline_caption(p: dict) -> str:
    return (f"{p['fps']:.1f} frames/s end to end (spread {_f(p['spread_pct'], '.1f')}% across blocks), "
            f"{p['frames']} frames of {p['frames_source']}, {p['cells_per_frame']:.1f} cells per frame, "
            f"{p['backend']} {p['precision']} at {p['threads']} threads; stages miss the wall clock by "
            f"{p['stage_gap_pct']:+.1f}%")


def pipeline_table(result: dict):
    p = result["pipeline"]
    table = _table("pipeline per frame", ("stage", "ms/frame", "share"))
    for r in pipeline_rows(p):
        table.add_row(*r)
    return table


def compare_table(cmp: dict):
    table = _table(f"new / old (old: {cmp['old_created']}): below 1 is better, except img/s",
                   ("model", "threads", "p50", "p90", "p99", "img/s", "load", "first", "RSS", "size"))
    for r in cmp["rows"]:
        cells = []
        for k in COMPARED:
            v = r["ratios"][k]
            better = v is not None and ((v > 1.05) if k == "throughput_per_s" else (v < 0.95))
            worse = v is not None and ((v < 0.95) if k == "throughput_per_s" else (v > 1.05))
            text = _f(v, ".2f")
            cells.append(f"[green]{text}[/]" if better else f"[red]{text}[/]" if worse else text)
        threads = "TF" if r["threads"] is None else str(r["threads"])
        name = "keras predict" if r["backend"] == KERAS else f"{r['backend']} {r['precision']}"
        table.add_row(name, threads, *cells)
    return table


def markdown_tables(result: dict) -> str:
    """The same tables as Markdown (docs/bench.md)."""
    lines = ["| " + " | ".join(ROW_HEADERS) + " |", "|" + "---|" * len(ROW_HEADERS)]
    lines += ["| " + " | ".join(row_cells(r)) + " |" for r in _all_rows(result)]
    lines.append("")
    lines += [f"- {n}" for n in footnotes(result)]
    if result.get("pipeline"):
        p = result["pipeline"]
        lines += ["", "| stage | ms/frame | share |", "|---|---|---|"]
        lines += ["| " + " | ".join(r) + " |" for r in pipeline_rows(p)]
        lines += ["", pipeline_caption(p) + "."]
    return "\n".join(lines)


def default_result_path(now: float | None = None) -> Path:
    return Path(time.strftime("bench-%Y%m%d-%H%M%S.json", time.localtime(now)))


__all__ = ["BenchError", "BenchOptions", "Floor", "run_bench", "parse_floor", "check_floors", "compare",
           "load_result", "rows_table", "pipeline_table", "compare_table", "markdown_tables", "footnotes",
           "default_result_path", "latency_stats"]
