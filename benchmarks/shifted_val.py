"""Choose a robust model without another microscope's labels: PBC validation crops under the
locator bench's controlled shifts (`wbcedge.evaluation.shifts`), scored per run folder, or per
model file of a bundle folder (the int8 drop under shift, with the device runtime).

    PYTHONPATH=$PWD nice -n 10 python benchmarks/shifted_val.py training/runs/default-edge \\
        training/runs/robust-edge --per-class 100 --json build/eval/shifted-val.json

Every shift of `shifts.SHIFTS` at its middle and strong strength is applied to the raw crop (BGR,
before the crop policy), then the crop goes through the model's own `to_model_input`; "mixed"
applies three shifts drawn at random per crop at middle strength (another microscope differs in
several ways at once). The shift functions are not the training augmentation's (OpenCV/NumPy
here, TensorFlow ops there), though stain and blur imitate the same physics, so a high score
here is a necessary sign of robustness, not proof of it. Only the validation split is read:
this is a selection criterion, and the test split and BCCD stay for the report.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from wbcedge.data import read_manifest
from wbcedge.evaluation.shifts import SHIFTS
from wbcedge.labels import CLASSES, class_indices
from wbcedge.preprocess import read_image, to_model_input


def sample_records(manifest: Path, split: str, per_class: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    records = [r for r in read_manifest(manifest) if r.split == split]
    chosen = []
    for c in CLASSES:
        rows = [r for r in records if r.label == c]
        chosen += [rows[i] for i in sorted(rng.permutation(len(rows))[:per_class])]
    return chosen


def shifted_sets(images: list[np.ndarray], seed: int) -> dict[str, list[np.ndarray]]:
    """Name -> the crops under that shift (BGR); "none" is the crops as given."""
    sets = {"none": images}
    for level, strength_index in (("middle", 1), ("strong", 2)):
        for shift in SHIFTS:
            rng = np.random.default_rng(seed)
            sets[f"{shift.name} {level}"] = [shift.apply(im, shift.levels[strength_index], rng) for im in images]
    rng = np.random.default_rng(seed + 1)
    mixed = []
    for im in images:
        for k in rng.permutation(len(SHIFTS))[:3]:
            im = SHIFTS[k].apply(im, SHIFTS[k].levels[1], rng)
        mixed.append(im)
    sets["mixed (3 shifts, middle)"] = mixed
    return sets


def predictors(paths: list[Path]):
    """(name, spec, predict) per run folder (its Keras model) or per model file of a bundle folder
    (the device runtime: int8 files under shift, without another microscope's labels)."""
    for path in paths:
        if (path / "manifest.json").is_file():
            from wbcedge.bundle import load_bundle
            from wbcedge.device.runtime import Classifier

            bundle = load_bundle(path)
            for entry in bundle.manifest["models"]:
                yield f"{path}/{entry['file']}", bundle.spec, Classifier(bundle.path / entry["file"], threads=2).predict_many
        else:
            from wbcedge.train.run_folder import load_run

            run = load_run(path)
            yield str(path), run.spec, run.predict_many


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--manifest", type=Path, default=Path("training/pbc_split.csv"))
    ap.add_argument("--split", default="val")
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    records = sample_records(args.manifest, args.split, args.per_class, args.seed)
    y = class_indices(r.label for r in records)
    sets = shifted_sets([read_image(r.path) for r in records], args.seed)
    results = {}
    for name, spec, predict in predictors(args.runs):
        acc = {shift: float((predict(np.stack([to_model_input(im, spec) for im in ims])).argmax(1) == y).mean())
               for shift, ims in sets.items()}
        middle = [v for k, v in acc.items() if k.endswith(" middle")]
        strong = [v for k, v in acc.items() if k.endswith(" strong")]
        summary = {"clean": acc["none"], "mean_middle": float(np.mean(middle)), "mean_strong": float(np.mean(strong)),
                   "worst_middle": float(np.min(middle)), "mixed": acc["mixed (3 shifts, middle)"]}
        results[name] = {"summary": summary, "per_shift": acc, "n": len(y)}
        print(name, json.dumps({k: round(v, 4) for k, v in summary.items()}), flush=True)
    print("\n| shift | " + " | ".join("/".join(Path(r).parts[-2:]) for r in results) + " |")
    print("|---|" + "---|" * len(results))
    for name in sets:
        print(f"| {name} | " + " | ".join(f"{v['per_shift'][name]:.1%}" for v in results.values()) + " |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"per_class": args.per_class, "split": args.split, "seed": args.seed,
                                         "results": results}, indent=1))


if __name__ == "__main__":
    main()
