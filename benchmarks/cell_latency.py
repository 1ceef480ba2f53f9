"""Per-cell device latency of two bundles, measured in one process with their rounds interleaved,
so the shared machine's noise hits both alike (issue 15: "within 1.5x of today's").

    python benchmarks/cell_latency.py build/old-bundle wbcedge/default_bundle --rounds 60

A cell's cost on the device = its preprocessing (`to_model_input`: square crop, resize, and the
bundle's stain normalisation when its spec has one) + one call of the bundle's default model
file at batch 1 (probabilities and features), on the raw crops `wbcedge run` cuts from the
built-in sample frames. No TensorFlow. Reports the median per cell and the ratio to the first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from wbcedge.bundle import load_bundle
from wbcedge.device.locate import estimate_um_per_px, locate_cells
from wbcedge.device.runtime import Classifier
from wbcedge.preprocess import IMAGE_SUFFIXES, crop_around_cell, read_image, to_model_input

REPO = Path(__file__).resolve().parents[1]


def sample_crops(frames: Path, spec) -> list:
    images = [read_image(p) for p in sorted(frames.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    um = estimate_um_per_px(images)
    return [crop_around_cell(im, c.box, spec, um) for im in images for c in locate_cells(im, um_per_px=um)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundles", nargs="+", type=Path)
    ap.add_argument("--frames", type=Path, default=REPO / "wbcedge" / "samples" / "frames")
    ap.add_argument("--rounds", type=int, default=30)
    # one thread: two interpreters with thread pools in one process slow whichever runs second
    # (measured: 0.78 against 1.92 ms for two identical architectures at 2 threads; 0.54 and 0.52
    # ms each alone)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model-file", help="this file of every bundle (e.g. model_int8.tflite) instead of its default "
                                         "(a bundle that failed the gate defaults to its fp32 file)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    loaded = []
    for path in args.bundles:
        bundle = load_bundle(path)
        model = Classifier(bundle.path / (args.model_file or bundle.manifest["default_model"]), threads=args.threads)
        crops = sample_crops(args.frames, bundle.spec)
        for crop in crops[:3]:  # warm-up
            model.predict_many_with_features(to_model_input(crop, bundle.spec)[None])
        loaded.append((str(path), bundle.spec, model, crops, {"preprocess": [], "infer": []}))
    for r in range(args.rounds):
        for _, spec, model, crops, times in (loaded if r % 2 == 0 else loaded[::-1]):  # alternate the order
            for crop in crops:
                t0 = time.perf_counter()
                x = to_model_input(crop, spec)
                t1 = time.perf_counter()
                model.predict_many_with_features(x[None])
                t2 = time.perf_counter()
                times["preprocess"].append(1000 * (t1 - t0))
                times["infer"].append(1000 * (t2 - t1))
    results = {}
    for name, spec, _, crops, times in loaded:
        pre, inf = statistics.median(times["preprocess"]), statistics.median(times["infer"])
        results[name] = {"cells": len(crops), "stain_normalisation": spec.stain_reference is not None,
                         "preprocess_ms": round(pre, 3), "infer_ms": round(inf, 3), "per_cell_ms": round(pre + inf, 3)}
    first = results[str(args.bundles[0])]["per_cell_ms"]
    for name, r in results.items():
        r["ratio_to_first"] = round(r["per_cell_ms"] / first, 2)
        print(name, json.dumps(r))
    if args.json:
        args.json.write_text(json.dumps({"rounds": args.rounds, "threads": args.threads, "results": results}, indent=1))


if __name__ == "__main__":
    main()
