"""One crop policy for single-cell images: show the model cells at the scale it was trained on.

A set of single-cell crops from another source can be cut much tighter or looser than
the training crops (a cell filling 90 % of its crop looks twice as large as anything in
training). Before such crops become model inputs, the white cell in each is located
(`locate.locate_frame`, at the set's median red-cell scale) and its diameter / the crop's
shorter side measured. One source cuts its crops one way, so the median of those fractions over the set says how much
tighter or looser it is than training (`spec.cell_fraction`); every crop of the set is
then widened or narrowed by that one factor about its centre
(`preprocess.square_window`: parts past the crop's edge take its background colour).

Why one factor per set and not per crop: the located diameter of one cell is a model
(1.25 x its nucleus, docs/locate.md) that is off by 20-40 % for some cells (spread
eosinophil lobes, small lymphocytes), and the cell's size relative to others is itself a
clue to its type. Re-cutting each PBC test crop to the same fraction turned 105 of 108
correct answers into 15 (measured on the crops whose own fraction was more than 1.35x off
the spec); a factor per set keeps lymphocytes smaller than monocytes, as in training. A
set already within `TRAINED_RANGE` of the spec (PBC itself: median 0.44) is used exactly as
given. A single image is its own set. Images where no cell is found are reported and, for
the median, left out; they still get the set's factor.

Evaluation (`wbcedge evaluate --data`) and `wbcedge bench --data` go through here.
OpenCV and NumPy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from wbcedge.device.locate import LocatorConfig, estimate_um_per_px, locate_frame
from wbcedge.parallel import parallel_map
from wbcedge.preprocess import PreprocessSpec, read_image, square_window, to_model_input

# A set whose median located fraction is within this factor of spec.cell_fraction is used as
# given. PBC's own crops: median 0.44 (spec 0.44), per class 0.38-0.53 (docs/locate.md).
TRAINED_RANGE = 1.15


@dataclass(frozen=True)
class CropScale:
    """How a set of single-cell crops is re-cut: side x `factor` about each crop's centre."""
    factor: float                # > 1 widens (the source cuts tighter than training), < 1 narrows
    median_fraction: float | None  # median located cell diameter / crop side over the set
    measured: int                # crops in which a cell was found near the centre
    no_cell: list[str]           # names of the crops where none was


def cell_fraction_in_crop(image_bgr: np.ndarray, config: LocatorConfig | None = None,
                          um_per_px: float | None = None) -> float | None:
    """Diameter of the located cell nearest the centre / the image's shorter side; None when no
    cell lies within a quarter side of the centre. `um_per_px`: the set's scale, when measured."""
    h, w = image_bgr.shape[:2]
    side = float(min(h, w))
    cells = locate_frame(image_bgr, config, um_per_px).cells
    if not cells:
        return None
    cell = min(cells, key=lambda c: math.hypot(c.center[0] - w / 2.0, c.center[1] - h / 2.0))
    if abs(cell.center[0] - w / 2.0) > side / 4 or abs(cell.center[1] - h / 2.0) > side / 4:
        return None
    return cell.diameter / side


def crop_scale(fractions: list[float | None], spec: PreprocessSpec, names: list[str] | None = None) -> CropScale:
    """The one re-cut factor for a set of crops, from their located fractions (None: no cell found)."""
    names = names or [str(i) for i in range(len(fractions))]
    found = [f for f in fractions if f is not None]
    missing = [n for n, f in zip(names, fractions) if f is None]
    if not found:
        return CropScale(1.0, None, 0, missing)
    median = float(np.median(found))
    factor = median / spec.cell_fraction
    if abs(math.log(factor)) <= math.log(TRAINED_RANGE):
        factor = 1.0
    return CropScale(factor, median, len(found), missing)


def rescale_crop(image_bgr: np.ndarray, factor: float) -> np.ndarray:
    """The crop widened (factor > 1, background-coloured border) or narrowed (< 1) about its centre,
    as a square of side = shorter side x factor."""
    if factor == 1.0:
        return image_bgr
    h, w = image_bgr.shape[:2]
    return square_window(image_bgr, w / 2.0, h / 2.0, max(8, int(round(min(h, w) * factor))))


def single_cell_input(image_bgr: np.ndarray, spec: PreprocessSpec) -> tuple[np.ndarray, CropScale]:
    """The model input for one single-cell image, which is its own set (see the module doc)."""
    scale = crop_scale([cell_fraction_in_crop(image_bgr)], spec, ["image"])
    return to_model_input(rescale_crop(image_bgr, scale.factor), spec), scale


def cell_sized_crops(images_bgr: list[np.ndarray], spec: PreprocessSpec) -> tuple[list[np.ndarray], CropScale]:
    """Each crop re-cut about its centre so that its own located cell fills `spec.cell_fraction` of the
    side: the crops a bundle whose spec has no `crop_um` (cells sized to their boxes) is shown by the
    runner. Unlike `load_cell_inputs` (one factor per set, which keeps the size cue between cell types),
    this sizes every cell alike; crops where no cell is found get the set's median factor.
    `CropScale.factor` is that median."""
    if not images_bgr:
        return [], CropScale(1.0, None, 0, [])
    fractions = located_fractions(images_bgr)
    found = crop_scale(fractions, spec)   # the set's median fraction, cells found, crops without one
    median = found.median_fraction or spec.cell_fraction
    factors = [(f if f is not None else median) / spec.cell_fraction for f in fractions]
    crops = [rescale_crop(im, k) for im, k in zip(images_bgr, factors)]
    return crops, replace(found, factor=median / spec.cell_fraction)


def located_fractions(images_bgr: list[np.ndarray]) -> list[float | None]:
    """Each crop's located cell fraction (`cell_fraction_in_crop`), all segmented at the set's
    median red-cell scale (one source, one magnification)."""
    scales = [u for u in (estimate_um_per_px([im]) for im in images_bgr) if u]
    um_per_px = float(np.median(scales)) if scales else None
    return [cell_fraction_in_crop(im, um_per_px=um_per_px) for im in images_bgr]


def _scale_of(path: str) -> float | None:
    return estimate_um_per_px([read_image(Path(path))])


def _fraction_of(args: tuple[str, float | None]) -> float | None:
    path, um_per_px = args
    return cell_fraction_in_crop(read_image(Path(path)), um_per_px=um_per_px)


def _input_of(args: tuple[str, float, PreprocessSpec]) -> np.ndarray:
    path, factor, spec = args
    return to_model_input(rescale_crop(read_image(Path(path)), factor), spec)


def load_cell_inputs(paths: list, spec: PreprocessSpec, workers: int | None = None,
                     sample: int = 400, seed: int = 0) -> tuple[np.ndarray, CropScale]:
    """Model inputs for a set of single-cell image files, re-cut by the set's one factor, on all cores.

    The factor comes from the located fractions of up to `sample` of the files (seeded);
    `CropScale.no_cell` names the sampled files where no cell was found.
    """
    if not paths:
        return np.zeros((0, spec.input_size, spec.input_size, 3), np.uint8), CropScale(1.0, None, 0, [])
    chosen = list(paths)
    if len(chosen) > sample:
        rng = np.random.default_rng(seed)
        chosen = [chosen[i] for i in sorted(rng.choice(len(chosen), sample, replace=False))]
    # One source, one magnification: the median red-cell scale over the set segments every crop alike
    # (a crop shows few whole red cells, so its own estimate scatters, and lobes then merge or not).
    scales = [u for u in parallel_map(_scale_of, [str(p) for p in chosen], workers, chunksize=16) if u]
    um_per_px = float(np.median(scales)) if scales else None
    fractions = list(parallel_map(_fraction_of, [(str(p), um_per_px) for p in chosen], workers, chunksize=16))
    scale = crop_scale(fractions, spec, [str(p) for p in chosen])
    inputs = list(parallel_map(_input_of, [(str(p), scale.factor, spec) for p in paths], workers, chunksize=32))
    return np.stack(inputs), scale
