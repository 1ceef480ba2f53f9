"""fp32 against int8 TFLite for the paper's five models, on this machine, in one run.

Each model is built with random weights (latency does not depend on the weights),
converted to fp32 and full-integer int8 TFLite with `wbcedge.train.convert.to_tflite`
(int8 calibrated on ~50 preprocessed sample crops from wbcedge/samples/pbc), and
then timed through `wbcedge.device.runtime.Classifier`, batch 1, at `--threads` threads,
in a fresh process that never imports TensorFlow. The timing alternates fp32 and
int8 in short rounds (fp32 first in even rounds, int8 first in odd ones), so
machine noise (other jobs on a shared box) hits both precisions alike; the
speed-up is fp32 p50 / int8 p50 over all rounds, and the per-round ratios give
its range.

Run from the repository root (figures and the command used: docs/bench.md):

    nice -n 5 python benchmarks/zoo_bench.py --json zoo_bench.json --doc docs/bench.md
    nice -n 5 python benchmarks/zoo_bench.py --bundle wbcedge/default_bundle   # a bundle's own files

Converting the three large backbones to int8 takes minutes each on 2 cores.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from wbcedge.preprocess import PreprocessSpec

REPO = Path(__file__).resolve().parents[1]
MODELS = ("residual_cnn", "mobilenet_v2", "inception_v3", "xception", "resnet50")
MIN_SIZE = {"inception_v3": 75, "xception": 71}
TARGET_1_5X = {"residual_cnn", "resnet50"}     # int8 at least 1.5x faster than fp32 at p50
BEGIN, END = "<!-- zoo_bench:begin -->", "<!-- zoo_bench:end -->"


def calibration_images(size: int, n: int) -> np.ndarray:
    """Real PBC sample crops through the device's preprocessing, plus flips and quarter turns up to n."""
    from wbcedge.bench.runner import sample_crop_paths
    from wbcedge.preprocess import PreprocessSpec, read_image, to_model_input

    spec = PreprocessSpec(input_size=size)
    base = [to_model_input(read_image(p), spec) for p in sample_crop_paths()]
    flips = [np.ascontiguousarray(b[:, ::-1]) for b in base]
    turns = [np.ascontiguousarray(np.rot90(b)) for b in base]
    images = list(base) + flips + turns
    return np.stack(images[:n])


def convert_all(models: list[str], size: int, calib: int, work: Path, log) -> list[dict]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    from wbcedge.train import convert
    from wbcedge.train.models import create_model

    out = []
    for name in models:
        s = max(size, MIN_SIZE.get(name, 0))
        calibration = calibration_images(s, calib)
        model = create_model(name, input_size=s, weights="none")
        entry = {"model": name, "input_size": s, "params": int(model.count_params()), "calibration": len(calibration)}
        for precision in ("fp32", "int8"):
            path = work / f"{name}_{s}_{precision}.tflite"
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):  # the converter prints its whole signature
                convert.to_tflite(model, path, precision, calibration if precision == "int8" else None)
            entry[f"{precision}_convert_s"] = time.perf_counter() - t0
            entry[f"{precision}_file"] = str(path)
            entry[f"{precision}_bytes"] = path.stat().st_size
            log(f"{name} {s}px {precision}: {path.stat().st_size / 1e6:.1f} MB, converted in "
                f"{entry[f'{precision}_convert_s']:.0f} s")
        out.append(entry)
        del model
        keras.backend.clear_session()
    return out


def bundle_entries(path: Path) -> list[dict]:
    """A bundle's fp32 and int8 TFLite files as one entry (no building, no converting)."""
    from wbcedge.bundle import load_bundle

    b = load_bundle(path)
    entry = {"model": f"bundle {b.path.name} ({b.manifest.get('source_run') or 'no source run'})",
             "input_size": b.spec.input_size, "params": None, "calibration": None}
    for precision in ("fp32", "int8"):
        m = b.model_entry("tflite", precision)
        entry[f"{precision}_file"] = str(b.path / m["file"])
        entry[f"{precision}_bytes"] = (b.path / m["file"]).stat().st_size
        entry[f"{precision}_convert_s"] = None
    return [entry]


def time_all(entries: list[dict], threads: int, rounds: int, runs: int, warmup: int) -> list[dict]:
    """Alternating fp32/int8 rounds for every model; one process, no TensorFlow."""
    from wbcedge.bench.runner import latency_stats
    from wbcedge.bench.worker import _xnnpack, time_blocks
    from wbcedge.preprocess import PreprocessSpec, read_image, to_model_input
    from wbcedge.bench.runner import sample_crop_paths
    from wbcedge.device.runtime import Classifier

    for e in entries:
        spec = PreprocessSpec(input_size=e["input_size"])
        batches = [to_model_input(read_image(p), spec)[None] for p in sample_crop_paths()]
        clfs = {p: Classifier(Path(e[f"{p}_file"]), threads=threads) for p in ("fp32", "int8")}
        for p, clf in clfs.items():
            time_blocks(clf.predict, batches, 0, warmup, 1)
            e[f"{p}_xnnpack"] = _xnnpack(clf)
        blocks = {"fp32": [], "int8": []}
        for r in range(rounds):
            order = ("fp32", "int8") if r % 2 == 0 else ("int8", "fp32")
            for p in order:
                blocks[p] += time_blocks(clfs[p].predict, batches, runs, 0, 1)
        for p in ("fp32", "int8"):
            e[p] = latency_stats(blocks[p])
        per_round = [np.median(f) / np.median(i) for f, i in zip(blocks["fp32"], blocks["int8"])]
        e["speedup"] = e["fp32"]["p50_ms"] / e["int8"]["p50_ms"]
        e["speedup_rounds"] = {"min": float(np.min(per_round)), "median": float(np.median(per_round)),
                               "max": float(np.max(per_round))}
        e["threads"] = threads
        del clfs
        print(f"{e['model']}: fp32 {e['fp32']['p50_ms']:.2f} ms, int8 {e['int8']['p50_ms']:.2f} ms, "
              f"{e['speedup']:.2f}x", file=sys.stderr, flush=True)
    return entries


def markdown(result: dict) -> str:
    from wbcedge.bench.machine import machine_line

    a = result["args"]
    lines = [BEGIN,
             f"Measured {result['created']} with `{result['command']}`",
             "",
             f"Machine: {machine_line(result['machine'])}.",
             "",
             f"Batch 1, {a['threads']} threads, XNNPACK on; {a['rounds']} alternating rounds of {a['runs']} calls per "
             f"precision after {a['warmup']} warm-up calls (fp32 first in even rounds, int8 first in odd ones); "
             + (f"the bundle's own files ({a['bundle']}). " if a.get("bundle") else
                "random weights; int8 = full integer (uint8 in and out), calibrated on "
                f"{a['calib']} preprocessed sample crops; mobilenet_v2 at width 1.0 (the paper's; the default edge "
                "model is width 0.35). ")
             + "Speed-up = fp32 p50 / int8 p50; the range is the per-round ratio's min-max.",
             "",
             "| model | input | params | fp32 MB | int8 MB | fp32 p50 ms | int8 p50 ms | fp32 p90 / int8 p90 ms | "
             "speed-up | per-round range | target | int8 convert s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in result["models"]:
        need = 1.5 if e["model"] in TARGET_1_5X else 1.0
        met = e["speedup"] >= need if need > 1 else e["speedup"] > 1.0
        target = f"{'>=' if need > 1 else '>'} {need:g}x: {'met' if met else '**missed**'}"
        if e["model"] not in MODELS:
            target = "none set"  # a bundle's files
        lines.append(
            f"| {e['model']} | {e['input_size']} | {_opt(e['params'], 1e-6, '.1f', ' M')} | "
            f"{e['fp32_bytes'] / 1e6:.1f} | "
            f"{e['int8_bytes'] / 1e6:.1f} | {e['fp32']['p50_ms']:.2f} | {e['int8']['p50_ms']:.2f} | "
            f"{e['fp32']['p90_ms']:.2f} / {e['int8']['p90_ms']:.2f} | **{e['speedup']:.2f}x** | "
            f"{e['speedup_rounds']['min']:.2f}-{e['speedup_rounds']['max']:.2f}x | {target} | "
            f"{_opt(e['int8_convert_s'], 1, '.0f')} |")
    lines.append(END)
    return "\n".join(lines)


def _opt(value, scale: float, fmt: str, suffix: str = "") -> str:
    return "-" if value is None else format(value * scale, fmt) + suffix


def write_doc(doc: Path, block: str) -> None:
    text = doc.read_text() if doc.is_file() else "# Benchmarks\n\n"
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    doc.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated (default: all five)")
    parser.add_argument("--size", type=int, default=PreprocessSpec.input_size, help="input size (raised to a family's minimum)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10, help="alternating fp32/int8 rounds")
    parser.add_argument("--runs", type=int, default=20, help="timed calls per precision per round")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--calib", type=int, default=50, help="int8 calibration images")
    parser.add_argument("--work", type=Path, default=None, help="keep the .tflite files here (default: a temp folder)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--doc", type=Path, default=None, help="write the Markdown table into this file")
    parser.add_argument("--bundle", type=Path, default=None,
                        help="time this bundle's fp32 and int8 TFLite files the same way instead of building models")
    parser.add_argument("--time-only", type=Path, default=None, help=argparse.SUPPRESS)  # the timing child
    args = parser.parse_args()

    if args.time_only is not None:  # child: time converted files, no TensorFlow in this process
        job = json.loads(args.time_only.read_text())
        entries = time_all(job["models"], args.threads, args.rounds, args.runs, args.warmup)
        job["models"] = entries
        job["tensorflow_imported"] = "tensorflow" in sys.modules
        args.time_only.write_text(json.dumps(job))
        return

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    from wbcedge.bench.machine import machine_info

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {', '.join(MODELS)}")
    tmp = None
    work = args.work
    if work is None:
        tmp = tempfile.TemporaryDirectory(prefix="wbcedge-zoo-")
        work = Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/zoo_bench.py " + " ".join(sys.argv[1:])
    started = time.perf_counter()
    entries = bundle_entries(args.bundle) if args.bundle else convert_all(models, args.size, args.calib, work, log)
    job_path = work / "timing.json"
    job_path.write_text(json.dumps({"models": entries}))
    log("timing (fresh process, no TensorFlow) ...")
    subprocess.run([sys.executable, __file__, "--time-only", str(job_path), "--threads", str(args.threads),
                    "--rounds", str(args.rounds), "--runs", str(args.runs), "--warmup", str(args.warmup)],
                   check=True)
    timed = json.loads(job_path.read_text())
    result = {"created": time.strftime("%Y-%m-%d"), "command": command, "machine": machine_info(),
              "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "models": timed["models"], "timing_process_imported_tensorflow": timed["tensorflow_imported"],
              "total_s": time.perf_counter() - started}
    block = markdown(result)
    print(block)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.doc:
        write_doc(args.doc, block)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
