"""Measure the int8 ONNX quantization options on a run: activation type and per-channel weights.

    python benchmarks/export_options.py training/runs/default-edge --data training/pbc_split.csv

For each option: accuracy on the test split with its 95% interval, top-1 agreement with
the float model, file size, and p50 latency at batch 1 and 2 threads (onnxruntime, the
variants timed in alternating rounds so machine noise hits them alike).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--calib", type=int, default=300)
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from wbcedge.train import convert
    from wbcedge.data import read_manifest
    from wbcedge.evaluation.evaluate import labelled_inputs
    from wbcedge.train.run_folder import load_run
    from wbcedge.train.export import calibration_records
    from wbcedge.evaluation.metrics import classification_results
    from wbcedge.preprocess import load_inputs
    from wbcedge.device.runtime import Classifier

    run = load_run(args.run)
    records = read_manifest(args.data)
    test = [r for r in records if r.split == "test"]
    calib = load_inputs([r.path for r in calibration_records(records, args.calib, 0)], run.spec)
    x, y = labelled_inputs(test, run.spec)
    float_pred = run.predict(x).argmax(1)
    variants = {"uint8 activations, per-channel": ("uint8", True), "int8 activations, per-channel": ("int8", True),
                "uint8 activations, per-tensor": ("uint8", False)}
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = convert.to_onnx(run.keras_model, Path(tmp) / "fp32.onnx")
        clfs = {}
        for name, (act, per_channel) in variants.items():
            path = convert.quantize_onnx(fp32, Path(tmp) / f"{act}-{per_channel}.onnx", calib, act, per_channel)
            clf = Classifier(path, threads=2)
            probs = clf.predict_many(x)
            res = classification_results(y, probs, run.classes)
            rows[name] = {"accuracy": res["accuracy"], "accuracy_ci95": res["accuracy_ci95"],
                          "agreement_with_float": float((probs.argmax(1) == float_pred).mean()),
                          "size_bytes": path.stat().st_size, "times_ms": []}
            clfs[name] = clf
        one = x[:1]
        for _ in range(3):
            for name, clf in clfs.items():
                for _ in range(20):
                    clf.predict(one)
                for _ in range(args.runs // 3):
                    t0 = time.perf_counter()
                    clf.predict(one)
                    rows[name]["times_ms"].append(1000 * (time.perf_counter() - t0))
    print(f"{len(test)} test images; float accuracy {100 * np.mean(float_pred == y):.2f}%")
    print("| variant | accuracy (95% CI) | agreement with float | size | p50 ms (2 threads) |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        r["p50_ms"] = float(np.median(r.pop("times_ms")))
        lo, hi = r["accuracy_ci95"]
        print(f"| {name} | {100 * r['accuracy']:.2f}% ({100 * lo:.1f}-{100 * hi:.1f}) | "
              f"{100 * r['agreement_with_float']:.1f}% | {r['size_bytes'] / 1e6:.2f} MB | {r['p50_ms']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
