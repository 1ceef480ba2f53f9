"""How large the white cell is in a set of single-cell crops, measured with the device's own locator.

The runner crops each located cell so that it fills the same share of the crop as in
training (`PreprocessSpec.cell_fraction`), or, when the frame's scale is known, crops the
same physical size (`PreprocessSpec.crop_um`). Both come from the training data: this
measures them instead of assuming PBC's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def measure_cell_scale(paths: Sequence[str], um_per_px: float | None = None, max_images: int = 300,
                       seed: int = 0, progress: Callable[[int], None] | None = None) -> dict:
    """Median cell fraction over (a seeded sample of) the crops; with `um_per_px`, the crop side in um."""
    from wbcedge.device.locate import measure_cell_fraction
    from wbcedge.preprocess import read_image

    if um_per_px is not None and not (np.isfinite(um_per_px) and um_per_px > 0):
        raise ValueError(f"--um-per-px {um_per_px}: give the data's micrometres per pixel, e.g. 0.0934 for PBC")
    rng = np.random.default_rng(seed)
    chosen = [paths[i] for i in sorted(rng.permutation(len(paths))[:max_images])]
    fractions, sides = [], []
    for path in chosen:
        image = read_image(path)
        sides.append(min(image.shape[:2]))
        fraction = measure_cell_fraction(image, um_per_px=um_per_px)
        if fraction is not None:
            fractions.append(fraction)
        if progress:
            progress(1)
    side = float(np.median(sides)) if sides else None
    fraction = float(np.median(fractions)) if fractions else None
    crop_um = side * um_per_px if (side and um_per_px) else None
    return {
        "images_measured": len(chosen), "cells_found": len(fractions),
        "cell_fraction": round(fraction, 4) if fraction else None,
        "cell_fraction_iqr": [round(float(q), 4) for q in np.percentile(fractions, [25, 75])] if fractions else None,
        "crop_side_px": side, "um_per_px": um_per_px,
        "crop_um": round(crop_um, 2) if crop_um else None,
        "cell_diameter_um": round(fraction * crop_um, 2) if (fraction and crop_um) else None,
        "how": "median over the crops of the located white cell's diameter / the crop's shorter side "
               "(wbcedge.device.locate.measure_cell_fraction)" +
               ("; crop_um = median crop side x --um-per-px" if um_per_px else
                "; no --um-per-px given: no physical crop size"),
    }
