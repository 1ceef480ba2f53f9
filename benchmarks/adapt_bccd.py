"""BCCD as "the new site" for `wbcedge adapt` (figures in docs/adapt.md).

    PYTHONPATH=$PWD nice -n 10 python benchmarks/adapt_bccd.py --work build/adapt-bccd [--curve]

1. Cuts every annotated white cell of BCCD with the default model's own crop policy
   (`preprocess.crop_around_cell`) at the site's one scale (`--scale site`, the default: the median
   of the frames' red-cell estimates, as a lab's camera profile fixes it and the runner then uses
   it for every frame; `--scale frame`: each frame's own estimate, as runs A-H did) and saves it
   at the model's input size.
2. Labelled site cells: frames with one WBC box and one type; per class at most `--per-class`
   (20), and never more than `--max-share` (half) of the class, so every class keeps held-out
   cells to report (fewer than 3 -> the class is not adapted). All other labelled cells are the
   held-out check (`--test`): never trained, stopped or selected on.
   Unlabelled site cells (BatchNorm statistics): the WBC boxes of frames that are not labelled
   cells (several boxes or types), so no held-out cell is seen even without its label.
3. Runs `wbcedge adapt ... --test HELDOUT --unlabelled UNLABELLED`, then the end-to-end frame
   figure through the runner's pipeline (`evaluate_frame_types`) with the parent and the adapted
   bundle, on every single-type frame except those that gave a labelled cell.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from wbcedge.bundle import load_bundle
from wbcedge.device.records import MAX_CROP_SIDE, bounded_crop
from wbcedge.evaluation.evaluate import read_frame_types
from wbcedge.evaluation.locate_eval import read_voc_boxes
from wbcedge.labels import CLASSES
from wbcedge.preprocess import crop_around_cell, read_image, to_model_input

REPO = Path(__file__).resolve().parents[1]


def site_scale(bccd: Path) -> float:
    """The site's micrometres per pixel as a lab's camera profile would fix it: one magnification, so
    the median of the per-frame red-cell estimates over all its frames (no label is read)."""
    from wbcedge.device.locate import estimate_um_per_px

    scales = [estimate_um_per_px([read_image(p)]) for p in sorted((bccd / "JPEGImages").glob("*.jpg"))]
    return float(np.median([s for s in scales if s is not None]))


def cut_cells(bccd: Path, spec, um_per_px: float | str | None = None, as_recorded: bool = False,
              record_side: int = MAX_CROP_SIDE) -> tuple[list[tuple[str, str, np.ndarray]], list[tuple[str, np.ndarray]]]:
    """(labelled cells [(frame, class, model input)], unlabelled cells [(name, model input)]), cut at
    `um_per_px` (the site's scale), at each frame's own red-cell estimate (None), or sized to each
    cell's box ("relative": the cell fills the spec's cell_fraction of the crop side)."""
    from wbcedge.device.locate import estimate_um_per_px

    types = read_frame_types(bccd / "wbc_types.csv")
    labelled, unlabelled = [], []
    for xml in sorted((bccd / "Annotations").glob("*.xml")):
        name = xml.stem + ".jpg"
        image_path = bccd / "JPEGImages" / name
        if not image_path.is_file():
            continue
        boxes = read_voc_boxes(xml)
        if not boxes:
            continue
        image = read_image(image_path)
        scale = None if um_per_px == "relative" else um_per_px or estimate_um_per_px([image])
        crops = [crop_around_cell(image, box, spec, scale) for box in boxes]
        # as a session records them (BGR, at most 224 px: what `review export` gives a lab), or model inputs
        cells = [bounded_crop(c, record_side) if as_recorded else to_model_input(c, spec) for c in crops]
        if len(boxes) == 1 and name in types:
            labelled.append((name, types[name], cells[0]))
        else:
            unlabelled += [(f"{xml.stem}_{i}", c) for i, c in enumerate(cells)]
    return labelled, unlabelled


def choose(labelled, per_class: int, max_share: float, seed: int) -> set[str]:
    """Frames whose cell is labelled for adaptation: seeded, at most per_class and max_share of each class."""
    rng = np.random.default_rng(seed)
    chosen = set()
    for c in CLASSES:
        frames = sorted(f for f, label, _ in labelled if label == c)
        k = min(per_class, int(len(frames) * max_share))
        if k < 3:
            continue
        chosen |= {frames[i] for i in rng.permutation(len(frames))[:k]}
    return chosen


def save(path: Path, cell: np.ndarray, spec, as_recorded: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = cell if as_recorded or spec.color_order != "RGB" else cv2.cvtColor(cell, cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(path), bgr)


def build_site(bccd: Path, work: Path, per_class: int, max_share: float, seed: int,
               um_per_px: float | str | None = None, as_recorded: bool = False,
               record_side: int = MAX_CROP_SIDE) -> dict:
    # Cut as the runner cuts, but saved with the colours the microscope gave: the model's own
    # stain normalisation (when its spec has one) is applied when `adapt` reads the cells.
    spec = replace(load_bundle().spec, stain_reference=None)
    labelled, unlabelled = cut_cells(bccd, spec, um_per_px, as_recorded, record_side)
    chosen = choose(labelled, per_class, max_share, seed)
    for part in ("labelled", "heldout", "unlabelled"):
        for old in (work / part).rglob("*.png") if (work / part).exists() else []:
            old.unlink()
    counts = {c: {"labelled": 0, "heldout": 0} for c in CLASSES}
    for frame, label, cell in labelled:
        part = "labelled" if frame in chosen else "heldout"
        save(work / part / label / (Path(frame).stem + ".png"), cell, spec, as_recorded)
        counts[label][part] += 1
    for name, cell in unlabelled:
        save(work / "unlabelled" / f"{name}.png", cell, spec, as_recorded)
    with open(bccd / "wbc_types.csv", newline="") as f:
        types_rows = list(csv.DictReader(f))
    with open(work / "frames_not_labelled.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "wbc_types"])
        writer.writeheader()
        writer.writerows(r for r in types_rows if r["image"] not in chosen)
    summary = {"counts": counts, "unlabelled_cells": len(unlabelled), "labelled_frames": sorted(chosen),
               "per_class": per_class, "max_share": max_share, "seed": seed,
               "um_per_px": um_per_px if um_per_px else "per frame"}
    (work / "site.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def frame_figures(bccd: Path, work: Path, bundle: Path, um_per_px: float | None = None) -> dict:
    from wbcedge.evaluation.evaluate import evaluate_frame_types

    out = {}
    for name, path in (("parent", None), ("adapted", bundle)):
        out[name] = evaluate_frame_types(path, bccd / "JPEGImages", work / "frames_not_labelled.csv",
                                         um_per_px=um_per_px)
        print(f"frames, {name}: {out[name]['frames']} frames, accuracy {100 * out[name]['accuracy']:.1f}% "
              f"(95% CI {100 * out[name]['accuracy_ci95'][0]:.1f}-{100 * out[name]['accuracy_ci95'][1]:.1f})", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bccd", type=Path, default=REPO.parent / "shared" / "data" / "bccd")
    ap.add_argument("--work", type=Path, default=REPO / "build" / "adapt-bccd")
    ap.add_argument("--per-class", type=int, default=20)
    ap.add_argument("--max-share", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--curve", action="store_true")
    ap.add_argument("--config", type=Path, default=None, help="adapt settings passed to `wbcedge adapt --config`")
    ap.add_argument("--skip-adapt", action="store_true", help="only build the site folders (and frames if adapted)")
    ap.add_argument("--scale", choices=("site", "frame", "relative"), default="site",
                    help="cut every cell at the site's one scale, as a camera profile fixes it and the runner "
                         "uses it (default), at each frame's own red-cell estimate (runs A-H of docs/adapt.md), "
                         "or sized to each cell's box (relative: the cell fills the spec's cell_fraction)")
    ap.add_argument("--as-recorded", action="store_true",
                    help="save each cell as a session records it (at most 224 px, the crop's own pixels) instead "
                         "of at the model's input size (runs A-J), so adapt can re-cut it (crop = \"cell\")")
    ap.add_argument("--record-side", type=int, default=MAX_CROP_SIDE,
                    help="with --as-recorded: the largest side a saved cell keeps, in px (default: what a session "
                         "records)")
    args = ap.parse_args()
    if not (args.bccd / "wbc_types.csv").is_file():
        sys.exit(f"{args.bccd} has no wbc_types.csv: give --bccd PATH to the BCCD folder")
    um_per_px = site_scale(args.bccd) if args.scale == "site" else "relative" if args.scale == "relative" else None
    if isinstance(um_per_px, float):
        print(f"site scale: {um_per_px:.4f} um/px (median of the frames' red-cell estimates)", flush=True)
    site = build_site(args.bccd, args.work, args.per_class, args.max_share, args.seed, um_per_px, args.as_recorded,
                      args.record_side)
    print(json.dumps(site["counts"]), f"unlabelled cells: {site['unlabelled_cells']}", flush=True)
    bundle = args.work / "bundle"
    if not args.skip_adapt:
        cmd = [sys.executable, "-m", "wbcedge", "adapt", "--data", str(args.work / "labelled"),
               "--test", str(args.work / "heldout"), "--unlabelled", str(args.work / "unlabelled"),
               "--out", str(bundle), "--seed", str(args.seed), "--json", str(args.work / "adapt.json")]
        cmd += ["--curve"] if args.curve else []
        cmd += ["--config", str(args.config)] if args.config else []
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=False)
    if (bundle / "manifest.json").is_file():
        frames = frame_figures(args.bccd, args.work, bundle, um_per_px if isinstance(um_per_px, float) else None)
        (args.work / "frames.json").write_text(json.dumps(frames, indent=2) + "\n")


if __name__ == "__main__":
    main()
