"""One crop policy: a set of single-cell crops cut tighter or looser than training is re-cut to the trained scale."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from wbcedge.device.locate import measure_cell_fraction
from wbcedge.device.recrop import crop_scale, load_cell_inputs, rescale_crop, single_cell_input
from wbcedge.evaluation.shifts import looser_crop, tighter_crop
from wbcedge.preprocess import PreprocessSpec, background_colour, read_image, square_window, to_model_input

REPO = Path(__file__).resolve().parent.parent
# The crop policy only: the built-in spec's colour normalisation (Reinhard) is a later, separate
# step that would change what the locator measures on the model inputs below.
SPEC = replace(PreprocessSpec.load(REPO / "wbcedge" / "default_bundle"), stain_reference=None)
CROPS = sorted((REPO / "wbcedge" / "samples" / "pbc").glob("*/*.jpg"))


def _write(folder: Path, images: list[np.ndarray]) -> list[Path]:
    folder.mkdir()
    paths = []
    for i, im in enumerate(images):
        paths.append(folder / f"{i:02d}.png")
        cv2.imwrite(str(paths[-1]), im)
    return paths


def _cell_px(model_inputs: np.ndarray) -> np.ndarray:
    """The located cell's diameter in model-input pixels, measured on what the model sees."""
    out = []
    for x in model_inputs:
        f = measure_cell_fraction(np.ascontiguousarray(x[..., ::-1]) if SPEC.color_order == "RGB" else x)
        out.append(np.nan if f is None else f * SPEC.input_size)
    return np.array(out)


def test_tighter_and_looser_sets_give_the_model_the_same_cell_size(tmp_path: Path) -> None:
    crops = [read_image(p) for p in CROPS]
    tight = _write(tmp_path / "tight", [tighter_crop(c, 1.5) for c in crops])
    loose = _write(tmp_path / "loose", [looser_crop(c, 1.8) for c in crops])
    x_tight, s_tight = load_cell_inputs(tight, SPEC, workers=1)
    x_loose, s_loose = load_cell_inputs(loose, SPEC, workers=1)
    # Widened and narrowed. (A crop 1.5x tighter cuts the larger cells, so the tight set measures
    # about 1.3x the spec, not 1.5x: 0.57 at the true 0.094 um/px of these crops.)
    assert s_tight.factor > 1.25 and s_loose.factor < 0.7
    # As given, the cells would be 1.5 x 1.8 = 2.7x apart in size (~70 px at 160 px inputs).
    a, b = _cell_px(x_tight), _cell_px(x_loose)
    ok = np.isfinite(a) & np.isfinite(b)
    assert ok.sum() >= len(crops) - 2
    # (<= 4 px with the previous locator, whose red-cell scale on the tight set read 1.5x too
    # coarse and happened to enlarge its cut cells; at the crops' true scale both locators read
    # the tight set 0.57-0.58, a 1.5x tighter crop cutting the larger cells.)
    assert float(np.median(np.abs(a[ok] - b[ok]))) <= 7.0, (a, b)
    # ...and at the trained fraction of the input, within 10 %.
    for sizes in (a[ok], b[ok]):
        assert float(np.median(sizes)) == pytest.approx(SPEC.cell_fraction * SPEC.input_size, rel=0.10)
    # Relative sizes survive: a small cell stays smaller than a large one (one factor per set).
    assert np.corrcoef(a[ok], b[ok])[0, 1] > 0.5


def test_cell_sized_crops_bring_every_cell_to_the_trained_fraction_whatever_its_own_cut() -> None:
    """`adapt --config` crop = "cell": each crop is re-cut by its own cell, so crops cut 1.8x looser
    and as given end with their cells at the same size (one factor per crop, not per set)."""
    from wbcedge.device.recrop import cell_sized_crops

    crops = [read_image(p) for p in CROPS]
    mixed = [looser_crop(c, 1.8) if i % 2 else c for i, c in enumerate(crops)]
    recut, scale = cell_sized_crops(mixed, SPEC)
    assert len(recut) == len(mixed) and scale.measured >= len(mixed) - 2
    sizes = _cell_px(np.stack([to_model_input(c, SPEC) for c in recut]))
    looser, given = sizes[1::2], sizes[0::2]
    target = SPEC.cell_fraction * SPEC.input_size
    for part in (looser, given):
        part = part[np.isfinite(part)]
        assert float(np.median(part)) == pytest.approx(target, rel=0.12), part
    # as given, the looser half's cells were 1.8x smaller than the other half's
    as_given = _cell_px(np.stack([to_model_input(c, SPEC) for c in mixed]))
    assert np.nanmedian(as_given[0::2]) > 1.5 * np.nanmedian(as_given[1::2])


def test_a_site_cut_looser_than_training_gets_one_factor_its_bundle_and_its_held_out_cells_share(tmp_path) -> None:
    """`adapt --config` crop = "site": the factor is measured on the labelled crops it is given, every
    crop (held-out ones too) is re-cut by it, the bundle's physical crop shrinks by it, and the
    size differences between cells survive (unlike crop = "cell")."""
    from wbcedge.data.manifest import Record
    from wbcedge.train.adapt_site import site_cut

    spec = replace(SPEC, crop_um=SPEC.crop_um or 14.0)
    paths = _write(tmp_path / "loose", [looser_crop(read_image(p), 1.5) for p in CROPS])
    rows = [Record(str(p), "neutrophil", "", 0, 0, "train") for p in paths]
    cut = site_cut("site", spec, rows[::2])                    # measured on half of them
    assert 0.55 < cut.recut < 0.8 and cut.median_fraction < 0.8 * spec.cell_fraction
    assert cut.spec.crop_um == pytest.approx(spec.crop_um * cut.recut, abs=0.01)
    sizes = _cell_px(cut.inputs(rows[1::2]))                  # the other half, re-cut by the same factor
    as_given = _cell_px(np.stack([to_model_input(read_image(p), spec) for p in paths[1::2]]))
    target = spec.cell_fraction * spec.input_size
    assert abs(np.nanmedian(sizes) - target) < 0.5 * abs(np.nanmedian(as_given) - target)
    ok = np.isfinite(sizes) & np.isfinite(as_given)
    assert np.corrcoef(sizes[ok], as_given[ok])[0, 1] > 0.8  # one factor: the order of sizes is kept
    # the parent's own crops are as given, and "parent" / an in-range site change nothing
    assert cut.parent_cell_inputs(rows[:1]).shape == (1, spec.input_size, spec.input_size, 3)
    assert site_cut("parent", spec, rows).recut is None
    given = [Record(str(p), "neutrophil", "", 0, 0, "train") for p in CROPS]
    assert site_cut("site", spec, given).spec == spec


def test_training_crops_are_used_as_given(tmp_path: Path) -> None:
    _, scale = load_cell_inputs(CROPS, SPEC, workers=1)
    assert scale.factor == 1.0 and scale.no_cell == []
    assert scale.median_fraction == pytest.approx(SPEC.cell_fraction, rel=0.15)


def test_no_cell_is_reported_and_the_crop_used_as_given(tmp_path: Path) -> None:
    blank = np.full((200, 220, 3), (230, 215, 205), np.uint8)
    paths = _write(tmp_path / "mixed", [blank, read_image(CROPS[0])])
    x, scale = load_cell_inputs(paths, SPEC, workers=1)
    assert x.shape == (2, SPEC.input_size, SPEC.input_size, 3)
    assert scale.no_cell == [str(paths[0])] and scale.measured == 1
    _, alone = single_cell_input(blank, SPEC)
    assert alone.factor == 1.0 and alone.no_cell == ["image"]
    assert crop_scale([None, None], SPEC).factor == 1.0


def test_rescale_and_square_window_pad_with_the_background_not_streaks() -> None:
    crop = read_image(CROPS[0])
    h, w = crop.shape[:2]
    wide = rescale_crop(crop, 2.0)
    assert wide.shape[:2] == (2 * min(h, w), 2 * min(h, w))
    assert (wide[:20, :20].reshape(-1, 3) == np.array(background_colour(crop))).all()
    side = max(h, w) * 2
    out = square_window(crop, w / 2, h / 2, side)
    top, left = int(round(h / 2 - side / 2)), int(round(w / 2 - side / 2))
    assert (out[-top:-top + h, -left:-left + w] == crop).all()      # the image itself is untouched
    assert rescale_crop(crop, 1.0) is crop
    narrow = rescale_crop(crop, 0.5)
    assert narrow.shape[:2] == (min(h, w) // 2, min(h, w) // 2)
