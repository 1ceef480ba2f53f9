"""Another microscope without its labels: each run's classifier on PBC's test split and on
BCCD's annotated cells, as trained, with Reinhard stain normalisation to PBC at inference,
and with BatchNorm statistics re-estimated on BCCD's (unlabelled) cells. Keras, float32.

    PYTHONPATH=$PWD python benchmarks/robustness_eval.py training/runs/default-edge \\
        training/runs/robust-edge --bccd ../shared/data/bccd --json docs/figures/robustness.json

No BCCD label is used except to score. The BatchNorm row re-estimates on the very cells it
is scored on (transductive, unlabelled): an adaptation figure, not a zero-shot one.
`--save-adapted DIR` writes each run's BatchNorm-re-estimated model as a run folder there,
so `wbcedge export` can put it through the int8 gate.
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from wbcedge.data import read_manifest
from wbcedge.evaluation import metrics
from wbcedge.evaluation.evaluate import box_crop_inputs, labelled_inputs
from wbcedge.labels import CLASSES
from wbcedge.preprocess import stain_reference_of


def summary(y: np.ndarray, probs: np.ndarray) -> dict:
    res = metrics.classification_results(y, probs, CLASSES)
    counts = np.bincount(np.asarray(y), minlength=len(CLASSES))
    # BCCD is two-thirds neutrophils: a model that calls everything a neutrophil scores 62%, so
    # the mean recall over the classes with at least 10 cells is reported beside accuracy
    balanced = float(np.mean([res["per_class"][c]["recall"] for c, k in zip(CLASSES, counts) if k >= 10]))
    return {"n": int(len(y)), "accuracy": res["accuracy"], "accuracy_ci95": res["accuracy_ci95"],
            "balanced_recall": balanced,
            "recall": {c: v["recall"] for c, v in res["per_class"].items()},
            "recall_ci95": {c: v["recall_ci95"] for c, v in res["per_class"].items()},
            "pred": probs.argmax(1).tolist(), "true": np.asarray(y).tolist()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--bccd", type=Path, default=Path("../shared/data/bccd"))
    ap.add_argument("--manifest", type=Path, default=Path("training/pbc_split.csv"))
    ap.add_argument("--reference-crops", type=int, default=500, help="PBC train crops for the Reinhard reference")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--save-adapted", type=Path, default=None)
    ap.add_argument("--as-trained-only", action="store_true", help="skip the Reinhard and BatchNorm rows (ablations)")
    args = ap.parse_args()

    from wbcedge.train.bn_adapt import has_batchnorm, reestimate_batchnorm, save_without_optimizer
    from wbcedge.train.run_folder import load_run

    records = read_manifest(args.manifest)
    test = [r for r in records if r.split == "test"]
    train = [r for r in records if r.split == "train"]
    rng = np.random.default_rng(0)
    ref_recs = [train[i] for i in sorted(rng.permutation(len(train))[:args.reference_crops])]
    images, annotations = args.bccd / "JPEGImages", args.bccd / "Annotations"
    types_csv = args.bccd / "wbc_types.csv"
    out: dict = {"runs": {}}
    for run in args.runs:
        predictor = load_run(run)
        spec = predictor.spec
        ref_inputs, _ = labelled_inputs(ref_recs, replace(spec, stain_reference=None))
        reference = stain_reference_of([cv2.cvtColor(x, cv2.COLOR_RGB2BGR) for x in ref_inputs])
        rows = {}
        variants = [("as trained", spec)] + ([] if args.as_trained_only else
                                             [("reinhard", replace(spec, stain_reference=reference))])
        for label, s in variants:
            x_pbc, y_pbc = labelled_inputs(test, s)
            x_bccd, y_bccd, names = box_crop_inputs(s, images, annotations, types_csv)
            model = predictor.keras_model
            rows[label] = {"pbc": summary(y_pbc, model.predict(x_pbc.astype(np.float32), verbose=0)),
                           "bccd": summary(y_bccd, model.predict(x_bccd.astype(np.float32), verbose=0))}
            if args.as_trained_only or not has_batchnorm(model):  # a GroupNorm model has no stored statistics to re-estimate
                print(run, label, {k: round(v["bccd"]["accuracy"], 3) for k, v in rows.items()}, flush=True)
                continue
            adapted = reestimate_batchnorm(load_run(run).keras_model, x_bccd)
            rows[f"{label} + BN re-estimated on BCCD cells"] = {
                "pbc": summary(y_pbc, adapted.predict(x_pbc.astype(np.float32), verbose=0)),
                "bccd": summary(y_bccd, adapted.predict(x_bccd.astype(np.float32), verbose=0))}
            if args.save_adapted:
                folder = args.save_adapted / f"{run.name}-{label.replace(' ', '-')}-bccd-bn"
                folder.mkdir(parents=True, exist_ok=True)
                for f in ("labels.json", "config.json", "manifest.sha256", "versions.json"):
                    if (run / f).is_file():
                        shutil.copy(run / f, folder / f)
                s.save(folder)
                save_without_optimizer(adapted, folder / "model.keras")
            print(run, label, {k: round(v["bccd"]["accuracy"], 3) for k, v in rows.items()}, flush=True)
        out["runs"][str(run)] = {"stain_reference": reference, "rows": rows}
    base = str(args.runs[0])
    out["mcnemar_vs_first"] = {}
    for run, r in out["runs"].items():
        for row, v in r["rows"].items():
            for data in ("pbc", "bccd"):
                first = out["runs"][base]["rows"]["as trained"][data]
                y = np.array(first["true"])
                test_res = metrics.mcnemar(y, np.array(first["pred"]), np.array(v[data]["pred"]),
                                           names=(f"{base} as trained", f"{run} {row}"))
                out["mcnemar_vs_first"][f"{run} | {row} | {data}"] = {k: test_res[k] for k in ("b", "c", "p_value")}
    text = json.dumps(out, separators=(",", ":"))  # per-image predictions: compact
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    for run, r in out["runs"].items():
        for row, v in r["rows"].items():
            print(f"| {run} | {row} | {_fmt(v['pbc'])} | {_fmt(v['bccd'])} |")


def _fmt(v: dict) -> str:
    lo, hi = v["accuracy_ci95"]
    return f"{100 * v['accuracy']:.1f}% ({100 * lo:.1f}-{100 * hi:.1f}), balanced {100 * v['balanced_recall']:.1f}%"


if __name__ == "__main__":
    main()
