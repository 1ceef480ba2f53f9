"""The white-cell locator: committed BCCD sample frames, generated smears, and BCCD when present."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from wbcedge.device.locate import CellBox, LocatorConfig, estimate_um_per_px, locate_cells, measure_cell_fraction
from wbcedge.evaluation.locate_eval import evaluate_localization, iou, main, match_boxes, read_voc_boxes
from wbcedge.preprocess import read_image

REPO = Path(__file__).resolve().parent.parent
FRAMES = REPO / "wbcedge" / "samples" / "frames"
PBC_SAMPLES = REPO / "wbcedge" / "samples" / "pbc"
BCCD = REPO.parent / "shared" / "data" / "bccd"

BACKGROUND = (205, 203, 205)   # BGR, as measured on BCCD frames
RBC = (169, 159, 182)
CYTOPLASM = (204, 175, 190)
NUCLEUS = (217, 132, 150)


def _smear(wbc_center: tuple[int, int] | None = (330, 250), seed: int = 0, h: int = 480, w: int = 640
           ) -> tuple[np.ndarray, tuple[int, int, int, int] | None]:
    """A BCCD-like frame: pale background, ~100 px red discs with pale centres, a few platelets and
    (optionally) one white cell: a 190 px cytoplasm disc with a three-lobed nucleus.

    Returns the frame and the white cell's box (x0, y0, x1, y1), clipped to the frame.
    """
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), BACKGROUND, np.uint8)
    r_wbc = 95
    for _ in range(50):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        if wbc_center is not None and np.hypot(x - wbc_center[0], y - wbc_center[1]) < r_wbc + 45:
            continue
        cv2.circle(img, (x, y), 50, RBC, -1, cv2.LINE_AA)
        cv2.circle(img, (x, y), 17, (190, 182, 198), -1, cv2.LINE_AA)      # central pallor
    for _ in range(4):                                                      # platelets
        x, y = int(rng.integers(20, w - 20)), int(rng.integers(20, h - 20))
        cv2.circle(img, (x, y), 8, NUCLEUS, -1, cv2.LINE_AA)
    box = None
    if wbc_center is not None:
        cx, cy = wbc_center
        cv2.circle(img, (cx, cy), r_wbc, CYTOPLASM, -1, cv2.LINE_AA)
        for dx, dy, a in ((-38, -18, 20), (5, 22, -30), (42, -12, 60)):     # three lobes, thin strands
            cv2.ellipse(img, (cx + dx, cy + dy), (32, 24), a, 0, 360, NUCLEUS, -1, cv2.LINE_AA)
        cv2.line(img, (cx - 38, cy - 18), (cx + 5, cy + 22), NUCLEUS, 3)
        box = (max(0, cx - r_wbc), max(0, cy - r_wbc), min(w, cx + r_wbc), min(h, cy + r_wbc))
    img = cv2.GaussianBlur(img, (0, 0), 1.5)
    noise = rng.normal(0, 3, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8), box


def _sample_frames() -> list[Path]:
    return sorted(FRAMES.glob("*.jpg"))


# -- committed sample frames ---------------------------------------------------------------------

def test_samples_are_committed_with_their_attribution() -> None:
    frames = _sample_frames()
    assert len(frames) == 6
    for f in frames:
        assert (FRAMES / "annotations" / f"{f.stem}.xml").is_file()
    text = (FRAMES / "ATTRIBUTION.md").read_text()
    assert "BCCD" in text and "MIT" in text
    assert len((FRAMES / "wbc_types.csv").read_text().strip().splitlines()) == 7


def test_every_white_cell_in_the_sample_frames_is_found() -> None:
    res = evaluate_localization(FRAMES, FRAMES / "annotations")
    assert res["n_frames"] == 6 and res["n_gt"] == 7
    assert res["recall"] == 1.0, res["misses"]
    assert res["extra_box_rate"] == 0.0, res["misses"]
    for key in ("precision", "n_pred", "true_positives", "ms_per_frame", "misses"):
        assert key in res


def test_boxes_lie_in_the_frame_and_scores_are_probabilities() -> None:
    for path in _sample_frames():
        frame = read_image(path)
        h, w = frame.shape[:2]
        cells = locate_cells(frame)
        assert cells, path.name
        for c in cells:
            assert 0 <= c.x0 < c.x1 <= w and 0 <= c.y0 < c.y1 <= h
            assert 0.0 <= c.score <= 1.0
            assert isinstance(c.touches_edge, bool)
        assert [c.score for c in cells] == sorted((c.score for c in cells), reverse=True)


def test_a_larger_frame_of_the_same_field_gives_the_same_boxes_scaled() -> None:
    frame = read_image(FRAMES / "BloodImage_00010.jpg")
    small = [c.box for c in locate_cells(frame)]
    big = [tuple(v / 2 for v in c.box) for c in locate_cells(cv2.resize(frame, None, fx=2, fy=2))]
    assert len(small) == len(big) == 2
    assert len(match_boxes(big, small, iou_threshold=0.8)) == 2


def test_a_known_scale_gives_the_same_cells_as_the_measured_one() -> None:
    frames = [read_image(p) for p in _sample_frames()]
    um = estimate_um_per_px(frames)
    assert um is not None and 0.05 < um < 0.09          # BCCD: ~0.068 um per pixel
    for frame in frames:
        measured = [c.box for c in locate_cells(frame)]
        given = [c.box for c in locate_cells(frame, um_per_px=um)]
        assert len(match_boxes(given, measured, iou_threshold=0.7)) == len(measured) == len(given)


# -- generated frames ----------------------------------------------------------------------------

def test_one_multilobed_white_cell_among_red_cells_gives_one_box_around_it() -> None:
    frame, truth = _smear()
    cells = locate_cells(frame)
    assert len(cells) == 1
    cell = cells[0]
    assert iou(cell.box, truth) >= 0.6
    assert not cell.touches_edge
    cx, cy = cell.center
    assert abs(cx - 330) < 20 and abs(cy - 250) < 20


@pytest.mark.parametrize("center", [(30, 240), (320, 455)])
def test_a_cell_cut_by_the_frame_edge_is_flagged(center: tuple[int, int]) -> None:
    frame, truth = _smear(wbc_center=center, seed=1)
    cells = locate_cells(frame)
    assert len(cells) == 1
    assert cells[0].touches_edge
    assert iou(cells[0].box, truth) >= 0.5


def test_no_white_cell_no_box() -> None:
    assert locate_cells(np.full((480, 640, 3), BACKGROUND, np.uint8)) == []
    assert locate_cells(np.zeros((480, 640, 3), np.uint8)) == []
    red_cells_only, _ = _smear(wbc_center=None, seed=2)
    assert locate_cells(red_cells_only) == []


def test_bad_inputs_are_refused_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        locate_cells(np.zeros((480, 640), np.uint8))
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        locate_cells(np.zeros((480, 640, 3), np.float32))
    with pytest.raises(ValueError, match="um_per_px"):
        locate_cells(np.zeros((480, 640, 3), np.uint8), um_per_px=0)
    with pytest.raises(ValueError, match="min_cell_um"):
        LocatorConfig(min_cell_um=-1)


def test_cellbox_geometry() -> None:
    c = CellBox(10, 20, 50, 40, 0.9, False)
    assert c.box == (10, 20, 50, 40)
    assert c.center == (30.0, 30.0)
    assert c.diameter == 40.0


# -- the cell fraction in single-cell crops ------------------------------------------------------

def test_cell_fraction_of_a_generated_crop_follows_the_cell_size() -> None:
    frame, _ = _smear(wbc_center=(320, 240), seed=3)
    crop = frame[60:420, 140:500]                      # 360 px around a 190 px cell
    # With the scale known, crop and frame are segmented at the same resolution per micrometre.
    um = 0.075                                         # the generated red cells: 100 px = 7.5 um
    fraction = measure_cell_fraction(crop, um_per_px=um)
    assert fraction is not None
    assert fraction == pytest.approx(locate_cells(frame, um_per_px=um)[0].diameter / 360, rel=0.02)
    # Measured per image, the scales differ a little: a few per cent.
    assert measure_cell_fraction(crop) == pytest.approx(locate_cells(frame)[0].diameter / 360, rel=0.06)
    wider = cv2.copyMakeBorder(crop, 180, 180, 180, 180, cv2.BORDER_REPLICATE)
    assert measure_cell_fraction(wider, um_per_px=um) == pytest.approx(fraction / 2, rel=0.03)


def test_cell_fraction_of_the_pbc_sample_crops() -> None:
    crops = sorted(PBC_SAMPLES.glob("*/*.jpg"))
    if not crops:
        pytest.skip("no PBC sample crops in wbcedge/samples/pbc")
    um = estimate_um_per_px([read_image(p) for p in crops])
    fractions = [measure_cell_fraction(read_image(p), um_per_px=um) for p in crops]
    assert all(f is not None for f in fractions)
    assert all(0.25 < f < 0.75 for f in fractions)
    assert 0.38 < float(np.median(fractions)) < 0.52     # measured 0.44 over 1,500 PBC crops


def test_no_cell_no_fraction() -> None:
    assert measure_cell_fraction(np.full((360, 360, 3), BACKGROUND, np.uint8)) is None


# -- evaluation helpers --------------------------------------------------------------------------

def test_voc_boxes_and_iou() -> None:
    boxes = read_voc_boxes(FRAMES / "annotations" / "BloodImage_00010.xml")
    assert len(boxes) == 2 and all(len(b) == 4 for b in boxes)
    assert read_voc_boxes(FRAMES / "annotations" / "BloodImage_00010.xml", name="Platelets") != boxes
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert match_boxes([(0, 0, 10, 10), (0, 0, 9, 10)], [(0, 0, 10, 10)]) == [(0, 0, 1.0)]


def test_the_evaluation_command_prints_the_figures(capsys) -> None:
    assert main([str(FRAMES)]) == 0
    out = capsys.readouterr().out
    assert "recall" in out and "1.000" in out


# -- the whole BCCD dataset, when the shared data is there ----------------------------------------

@pytest.mark.skipif(not (BCCD / "Annotations").is_dir(), reason="BCCD not found at ../shared/data/bccd")
def test_bccd_recall_and_extra_boxes() -> None:
    res = evaluate_localization(BCCD / "JPEGImages", BCCD / "Annotations")
    assert res["n_frames"] == 364 and res["n_gt"] == 372
    # Measured: recall 0.989, extra 0.019 (6 of the 7 extra boxes are white cells in frames the
    # annotation gives no WBC box, see docs/locate.md); the targets are 0.95 and 0.10.
    assert res["recall"] >= 0.95
    assert res["extra_box_rate"] <= 0.10
