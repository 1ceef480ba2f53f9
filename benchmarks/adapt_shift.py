"""Does an adapted bundle's shift check know its own microscope from the parent's?

    PYTHONPATH=$PWD python benchmarks/adapt_shift.py build/adapt-bccd-e/bundle build/adapt-bccd-e/heldout \\
        --data training/pbc_split.csv --json build/adapt-bccd-e/shift.json

The site's held-out cells (never trained on, never used for the reference) should look like
the site; the parent's own test crops (PBC) should not: an adapted bundle taken back to the
parent's microscope, or to a third one, must say so. Per-cell scores come from the bundle's
default model file, as `wbcedge run` computes them; per-cell AUROC and the session alarm rate
over random sessions of `--cells` cells from each side (shift_bench.py's `auroc` and
`session_alarms`: the device's ShiftMonitor).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    from shift_bench import auroc, session_alarms   # benchmarks/ is the script's own folder

    from wbcedge.bundle import load_bundle
    from wbcedge.data import read_manifest
    from wbcedge.data.index import index_folder
    from wbcedge.device.runtime import Classifier
    from wbcedge.device.shift import ShiftReference
    from wbcedge.evaluation.evaluate import labelled_inputs
    from wbcedge.train.adapt_site import site_inputs

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("site_cells", type=Path, help="the site's held-out cells (class folders)")
    ap.add_argument("--data", type=Path, default=Path("training/pbc_split.csv"), help="the parent's manifest (test split)")
    ap.add_argument("--cells", type=int, default=50)
    ap.add_argument("--sessions", type=int, default=100)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    bundle = load_bundle(args.bundle)
    model_file = bundle.manifest["default_model"]
    if bundle.shift_reference_path is None:
        raise SystemExit(f"{args.bundle} has no shift reference: nothing to measure")
    reference = ShiftReference.load(bundle.shift_reference_path, model_file)
    classifier = Classifier(bundle.path / model_file)
    x_site = site_inputs(index_folder(args.site_cells).records, bundle.spec)
    x_parent, _ = labelled_inputs([r for r in read_manifest(args.data) if r.split == "test"], bundle.spec)
    scores = {}
    for name, x in (("site", x_site), ("parent", x_parent)):
        _, feats = classifier.predict_many_with_features(x)
        scores[name] = reference.cell_scores(feats, x)
    out = {"bundle": str(args.bundle), "model_file": model_file, "cells": {k: len(v) for k, v in scores.items()},
           "auroc_parent_vs_site": auroc(scores["site"], scores["parent"]),
           "cell_alarm_rate": {k: float((v > reference.cell_threshold).mean()) for k, v in scores.items()},
           "session_cells": args.cells, "sessions": args.sessions,
           "session_alarm_rate": {k: float(np.mean(session_alarms(v, reference, args.sessions, args.cells, seed=0)))
                                  for k, v in scores.items()}}
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
