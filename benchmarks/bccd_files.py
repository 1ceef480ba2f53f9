"""Every model file of a bundle on BCCD's annotated cells (int8 included), with the device runtime.

    PYTHONPATH=$PWD python benchmarks/bccd_files.py build/gn-bundle --bccd ../shared/data/bccd

`wbcedge evaluate BUNDLE --frames` scores the bundle's default file, which for a bundle that
failed the export gate is its fp32 file; this scores each file on the same box crops
(`evaluate.box_crop_inputs`: the single-cell frames, cut as the runner cuts them).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    from wbcedge.bundle import load_bundle
    from wbcedge.device.runtime import Classifier
    from wbcedge.evaluation.evaluate import box_crop_inputs

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--bccd", type=Path, default=Path("../shared/data/bccd"))
    args = ap.parse_args()
    bundle = load_bundle(args.bundle)
    x, y, _ = box_crop_inputs(bundle.spec, args.bccd / "JPEGImages", args.bccd / "Annotations",
                              args.bccd / "wbc_types.csv")
    for entry in bundle.manifest["models"]:
        pred = Classifier(bundle.path / entry["file"], threads=2).predict_many(x).argmax(1)
        recall = {c: round(float((pred[y == i] == i).mean()), 3) for i, c in enumerate(bundle.classes) if (y == i).any()}
        print(entry["file"], json.dumps({"cells": len(y), "accuracy": round(float((pred == y).mean()), 4), "recall": recall}))


if __name__ == "__main__":
    main()
