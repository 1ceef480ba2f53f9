"""The data set's cell scale, kept in a side file next to its manifest.

`wbcedge data index DIR --out runs/mine/manifest.csv [--um-per-px 0.093]` measures how
large the white cell is in the crops (the located cell's diameter over the crop side,
`wbcedge.device.cell_scale`) and writes `runs/mine/manifest.scale.json`:

    {"images_measured": 300, "cells_found": 296, "cell_fraction": 0.44, "cell_fraction_iqr": [0.40, 0.48],
     "crop_side_px": 360, "um_per_px": 0.0934, "crop_um": 33.6, "cell_diameter_um": 14.8, "how": "..."}

`um_per_px` and `crop_um` are null unless the user gave the scale: a physical crop size is
asked, never guessed. `split` and `augment` carry the side file to the manifests they
write; `train` reads it and tells which crop policy the model will use on the device.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

SCALE_SUFFIX = ".scale.json"


def scale_path(manifest: Path | str) -> Path:
    """manifest.csv -> manifest.scale.json, next to it."""
    manifest = Path(manifest)
    return manifest.with_name(manifest.name.removesuffix(".csv") + SCALE_SUFFIX)


def write_scale(manifest: Path | str, scale: dict) -> Path:
    path = scale_path(manifest)
    path.write_text(json.dumps(scale, indent=2) + "\n")
    return path


def read_scale(manifest: Path | str) -> dict | None:
    """The side file of a manifest, or None when its data set's scale was never measured."""
    path = scale_path(manifest)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}): delete it and run `wbcedge data index` again") from None


def copy_scale(src_manifest: Path | str, dst_manifest: Path | str) -> Path | None:
    """Carry the side file along when a manifest is rewritten under another name (split, augment)."""
    src, dst = scale_path(src_manifest), scale_path(dst_manifest)
    if not src.is_file() or src.resolve() == dst.resolve():
        return None
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst
