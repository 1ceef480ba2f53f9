"""How far the differential for the sample's class mix (`wbcedge.device.class_mix`, EM over a session's
cells) is from the true count, against counting each cell's top class (figures in docs/runner.md).

    PYTHONPATH=$PWD python benchmarks/class_mix_check.py --pbc training/pbc_split.csv
    PYTHONPATH=$PWD python benchmarks/class_mix_check.py --bundle B --frames ../shared/data/bccd/JPEGImages \
        --types ../shared/data/bccd/wbc_types.csv [--only build/adapt-bccd-k/frames_not_labelled.csv] [--um-per-px 0.0687]

--pbc: the bundle's classifier (with its calibrated temperature, as the runner applies it) on the PBC
test split, resampled `--draws` times to a blood-like mix of `--cells` cells (neutrophils 60%,
lymphocytes 30%, monocytes 6%, eosinophils 3%, basophils 1%): the home microscope, a sample whose mix
is not the training one.
--frames: every frame of a folder with one white-cell type each (`--types` CSV image,wbc_types) goes
through the runner's pipeline (`CellPipeline.analyse`: locate, crop, classify, calibrate) as one
session; each located cell takes its frame's type as the truth. "counted" is the differential as
`wbcedge run` reports it (top class of the identified cells), "EM" the column for the sample's mix
(every located cell, unidentified included). Nothing here is fitted: the estimate has no setting.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from wbcedge.bundle import DEFAULT_BUNDLE, load_bundle
from wbcedge.device.class_mix import estimate_mix

BLOOD = {"basophil": 0.01, "eosinophil": 0.03, "lymphocyte": 0.30, "monocyte": 0.06, "neutrophil": 0.60}


def shares(labels: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(labels, minlength=k) / max(len(labels), 1)


def max_error_pp(a: np.ndarray, b: np.ndarray) -> float:
    return float(100 * np.abs(a - b).max())


def pbc_figures(bundle, split_csv: Path, cells: int, draws: int, seed: int) -> dict:
    from wbcedge.data.manifest import read_manifest
    from wbcedge.device.confidence import apply_temperature
    from wbcedge.device.runtime import Classifier
    from wbcedge.preprocess import load_inputs

    test = [r for r in read_manifest(split_csv) if r.split == "test"]
    classes = list(bundle.classes)
    y = np.array([classes.index(r.label) for r in test])
    probs = apply_temperature(Classifier(bundle.path / bundle.manifest["default_model"]).predict_many(
        load_inputs([r.path for r in test], bundle.spec)), bundle.temperature)
    k, rng = len(classes), np.random.default_rng(seed)
    errors = {"counted": [], "em": []}
    for _ in range(draws):
        idx = np.concatenate([rng.choice(np.flatnonzero(y == i), round(cells * BLOOD[c]), replace=True)
                              for i, c in enumerate(classes)])
        true = shares(y[idx], k)
        errors["counted"].append(max_error_pp(shares(probs[idx].argmax(1), k), true))
        errors["em"].append(max_error_pp(estimate_mix(probs[idx]).mix, true))
    return {"test_images": len(y), "cells_per_draw": cells, "draws": draws,
            "mean_max_error_pp": {k_: round(float(np.mean(v)), 2) for k_, v in errors.items()},
            "worst_max_error_pp": {k_: round(float(np.max(v)), 2) for k_, v in errors.items()}}


def frame_session(bundle, frames: Path, types_csv: Path, only: Path | None, um_per_px: float | None) -> dict:
    from wbcedge.device.pipeline import UNIDENTIFIED, CellPipeline
    from wbcedge.evaluation.evaluate import read_frame_types
    from wbcedge.preprocess import read_image

    types = read_frame_types(types_csv)
    if only is not None:
        with open(only, newline="") as f:
            keep = {row["image"] for row in csv.DictReader(f)}
        types = {name: t for name, t in types.items() if name in keep}
    pipeline = CellPipeline(bundle, um_per_px=um_per_px)
    probs, truth, labels, seen = [], [], [], 0
    for name, t in sorted(types.items()):
        if not (frames / name).is_file():
            continue
        seen += 1
        pipeline.um_per_px = um_per_px   # without a camera profile's scale: each still measured on its own
        for cell in pipeline.analyse(read_image(frames / name)):
            probs.append(cell.probs)
            truth.append(t)
            labels.append(cell.label)
    classes = list(bundle.classes)
    k = len(classes)
    y = np.array([classes.index(t) for t in truth])
    identified = np.array([lab != UNIDENTIFIED for lab in labels])
    counted = shares(np.array([classes.index(lab) for lab in np.array(labels)[identified]], int), k)
    true = shares(y, k)
    mix = estimate_mix(np.asarray(probs)).mix
    pct = lambda v: {c: round(100 * float(v[i]), 1) for i, c in enumerate(classes)}
    return {"frames": seen, "cells": len(y), "unidentified": int((~identified).sum()),
            "true": pct(true), "counted": pct(counted), "em": pct(mix),
            "max_error_pp": {"counted": round(max_error_pp(counted, true), 1), "em": round(max_error_pp(mix, true), 1)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    ap.add_argument("--pbc", type=Path, help="a data manifest with a test split (PBC: training/pbc_split.csv)")
    ap.add_argument("--cells", type=int, default=300)
    ap.add_argument("--draws", type=int, default=50)
    ap.add_argument("--frames", type=Path, help="a folder of frames with one white-cell type each")
    ap.add_argument("--types", type=Path, help="CSV image,wbc_types of those frames")
    ap.add_argument("--only", type=Path, help="CSV with an image column: only these frames")
    ap.add_argument("--um-per-px", type=float, default=None, help="the site's scale (as a camera profile fixes it)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    bundle = load_bundle(args.bundle, verify=False)
    out: dict = {"bundle": str(args.bundle)}
    if args.pbc:
        out["pbc_blood_mix"] = pbc_figures(bundle, args.pbc, args.cells, args.draws, args.seed)
    if args.frames:
        if not args.types:
            ap.error("--frames needs --types (CSV image,wbc_types)")
        out["frame_session"] = frame_session(bundle, args.frames, args.types, args.only, args.um_per_px)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
