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

Results are one plain dict (JSON-ready). `wbcedge.bench.tables` shows them
(terminal tables, Markdown, new/old `compare`); `wbcedge.bench.floors` checks
them against bounds given as `[SELECTOR:]METRIC(>=|<=|=)VALUE`.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from wbcedge.bench import KERAS, RESULT_FORMAT, RESULT_VERSION, BenchError
from wbcedge.bench.machine import machine_info
from wbcedge.bundle import Bundle
from wbcedge.preprocess import IMAGE_SUFFIXES

PACKAGE = Path(__file__).resolve().parent.parent
REPO_ROOT = PACKAGE.parent
SAMPLE_CROPS = PACKAGE / "samples" / "pbc"
SAMPLE_FRAMES = PACKAGE / "samples" / "frames"
WORKER_TIMEOUT_S = 1800


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
    profile: Path | None = None                  # camera profile, as `wbcedge run --profile`: its focus threshold
                                                 # and scale; None: like `run` without one (no focus stage)


def tensorflow_installed() -> bool:
    """Whether TensorFlow could be imported here, without importing it (an import hook that refuses it counts as no)."""
    try:
        return importlib.util.find_spec("tensorflow") is not None
    except (ImportError, ValueError):
        return False


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
        if keras_run is not None and not tensorflow_installed():
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
            from wbcedge.device.recrop import load_cell_inputs
            records, y_true, what = labelled_data(opts.data, bundle)
            progress(f"accuracy data: {len(records)} labelled crops from {what}")
            data_npy = tmp / "data_inputs.npy"
            # The one crop policy: a set cut tighter or looser than training is re-cut by one factor.
            data_inputs, crops = load_cell_inputs([r.path for r in records], bundle.spec)
            np.save(data_npy, data_inputs)
            if crops.factor != 1.0 or crops.no_cell:
                progress(f"crops: re-cut x{crops.factor:.2f} to the trained cell scale; no cell found in "
                         f"{len(crops.no_cell)} of {crops.measured + len(crops.no_cell)} measured")
            result["options"]["data"] = what
            result["options"]["data_crops"] = {"factor": crops.factor, "median_fraction": crops.median_fraction,
                                               "no_cell": len(crops.no_cell)}

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
            # The headline baseline is the fair one: the compiled `predict_on_batch`. `model.predict` (what
            # most code calls, with a large per-call overhead) is the second figure, never the headline.
            predict = {"first_ms": res["first_ms"], **latency_stats(res["blocks_ms"])}
            base = {"backend": KERAS, "precision": "fp32", "threads": None, "mode": "predict_on_batch",
                    "file": str(Path(keras_run) / "model.keras"),
                    "size_bytes": (Path(keras_run) / "model.keras").stat().st_size,
                    "import_ms": res["import_ms"], "load_ms": res["load_ms"], "first_ms": res["on_batch_first_ms"],
                    **latency_stats(res["on_batch_blocks_ms"]), "rss_peak_mb": res["rss_peak_mb"],
                    "rss_base_mb": res["rss_base_mb"], "runtime": res["runtime"],
                    "accuracy": None, "accuracy_ci95": None, "accuracy_source": None, "speedup": None,
                    "model_predict": predict}
            base["size_mb"] = base["size_bytes"] / 1e6
            if "predictions" in res:
                base.update(accuracy_with_ci(y_true, res["predictions"]), accuracy_source="--data")
            result["baseline"] = base
            for row in result["rows"]:
                row["speedup"] = base["p50_ms"] / row["p50_ms"] if row["p50_ms"] else None
                row["speedup_vs_model_predict"] = predict["p50_ms"] / row["p50_ms"] if row["p50_ms"] else None
            progress(f"Keras predict_on_batch p50 {base['p50_ms']:.1f} ms (model.predict {predict['p50_ms']:.1f} ms)")

        if opts.pipeline:
            default = next((e for e in entries if e["file"] == bundle.manifest.get("default_model")), entries[0])
            t = max(threads)
            per_repeat = max(1, math.ceil(opts.pipeline_frames / opts.repeats))
            progress(f"pipeline: {per_repeat * opts.repeats} frames from {frames_label} with "
                     f"{default['file']} at {t} thread{'s' * (t > 1)}")
            job = {"kind": "pipeline", "bundle": str(bundle.path), "backend": default["backend"],
                   "precision": default["precision"], "threads": t, "frames": [str(p) for p in frames],
                   "frames_per_repeat": per_repeat, "repeats": opts.repeats,
                   "warmup_frames": min(len(frames), 10), **_run_settings(opts.profile)}
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


# ---------------------------------------------------------------- results

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


RESULTS_DIR = Path("runs") / "bench"


def default_result_path(now: float | None = None) -> Path:
    """runs/bench/bench-<date>-<time>.json: results gather in one folder, never loose in the current one."""
    return RESULTS_DIR / time.strftime("bench-%Y%m%d-%H%M%S.json", time.localtime(now))


def _run_settings(profile: Path | None) -> dict:
    """What `wbcedge run --profile` would use for the pipeline: the focus threshold (None: no focus stage) and scale."""
    if profile is None:
        return {"blur_threshold": None, "um_per_px": None}
    from wbcedge.device.capture import CameraProfile
    p = CameraProfile.load(profile)
    return {"blur_threshold": p.focus_threshold, "um_per_px": p.um_per_px}
