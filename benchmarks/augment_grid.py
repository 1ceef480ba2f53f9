"""Picture grid of the training augmentations (docs/augment.md): one row per option alone,
then the full robust recipe; columns are seeds.

    PYTHONPATH=$PWD python benchmarks/augment_grid.py --out docs/figures/augment_grid.png
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from wbcedge.preprocess import PreprocessSpec, load_inputs  # noqa: E402
from wbcedge.train.augment import AugmentConfig, make_augment  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = sorted((ROOT / "wbcedge" / "samples" / "pbc").rglob("*.jpg"))

ROWS = {
    "original": {},
    "scale": dict(scale=True),
    "hed stain": dict(hed=0.05, hed_bias=0.015),
    "white balance + tint": dict(white_balance=0.12, tint=0.08),
    "brightness contrast gamma": dict(brightness=0.12, contrast=0.25, gamma=0.25),
    "defocus": dict(defocus=1.0),
    "motion blur": dict(motion=1.0),
    "noise": dict(noise=6.0),
    "jpeg": dict(jpeg=1.0),
    "all (default)": None,
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--image", type=Path, default=None, help="a single-cell crop (default: a bundled PBC sample)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "figures" / "augment_grid.png")
    ap.add_argument("--columns", type=int, default=6)
    args = ap.parse_args()
    import tensorflow as tf

    spec = PreprocessSpec.load(ROOT / "training" / "runs" / "default-edge")
    image = args.image or SAMPLES[0]
    x = load_inputs([image], spec, workers=1).astype(np.float32)
    batch = np.repeat(x, args.columns, axis=0)
    rows = []
    for name, opts in ROWS.items():
        cfg = AugmentConfig() if opts is None else replace(AugmentConfig.none(), **opts)
        out = np.concatenate([make_augment(cfg, spec.cell_fraction)(batch[i:i + 1], tf.constant([7, i])).numpy()
                              for i in range(args.columns)])
        tiles = [np.clip(t, 0, 255).astype(np.uint8) for t in out]
        label = np.full((spec.input_size, 150, 3), 255, np.uint8)
        for j, word in enumerate(name.split(" ")[:4]):
            cv2.putText(label, word, (4, 30 + 22 * j), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        rows.append(np.concatenate([label] + tiles, axis=1))
    grid = np.concatenate(rows, axis=0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    print(f"wrote {args.out} from {image.relative_to(ROOT) if image.is_relative_to(ROOT) else image}")


if __name__ == "__main__":
    main()
