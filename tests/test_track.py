"""Counting each cell once across frames, with stage motion."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from wbcedge.device.track import CellStatus, CellTracker

NEW, SEEN = CellStatus.NEW, CellStatus.SEEN


def _smear(h: int = 480, w: int = 640, seed: int = 0) -> np.ndarray:
    """A textured BGR field (blurred noise), enough structure for phase correlation."""
    rng = np.random.default_rng(seed)
    gray = cv2.GaussianBlur(rng.integers(0, 255, (h, w), dtype=np.uint8), (0, 0), 3)
    gray = cv2.normalize(gray, None, 0, 255, cv2.NORM_MINMAX)
    return cv2.merge([gray, (gray * 0.8).astype(np.uint8), gray])


def test_same_cells_without_motion_are_counted_once() -> None:
    tracker = CellTracker()
    field = _smear()
    cells = [(100.0, 120.0, 40.0), (400.0, 300.0, 36.0)]
    assert tracker.update(field, cells) == [NEW, NEW]
    for _ in range(3):
        jitter = [(x + 1.5, y - 1.0, d) for x, y, d in cells]  # locator jitter of a pixel or two
        assert tracker.update(field, jitter) == [SEEN, SEEN]
    assert tracker.new_count == 2
    assert tracker.last_motion is not None and abs(tracker.last_motion.dx) < 1 and abs(tracker.last_motion.dy) < 1


@pytest.mark.parametrize("dy, dx", [(25, -45), (-30, 60), (0, 80)])
def test_cells_moved_by_the_stage_are_counted_once(dy: int, dx: int) -> None:
    tracker = CellTracker()
    field = _smear()
    cells = [(200.0, 200.0, 40.0), (450.0, 260.0, 40.0)]
    assert tracker.update(field, cells) == [NEW, NEW]
    moved = np.roll(field, (dy, dx), axis=(0, 1))
    shifted = [(x + dx, y + dy, d) for x, y, d in cells]
    # Each move is larger than half a cell diameter: without motion compensation they would look new.
    assert all(np.hypot(dx, dy) > 0.5 * d for _, _, d in cells)
    assert tracker.update(moved, shifted) == [SEEN, SEEN]
    assert tracker.last_motion.dx == pytest.approx(dx, abs=1.5)
    assert tracker.last_motion.dy == pytest.approx(dy, abs=1.5)
    assert tracker.last_track_ids == [0, 1]


def test_real_translation_of_a_larger_slide() -> None:
    slide = _smear(700, 1000, seed=3)
    tracker = CellTracker()
    view = lambda y, x: slide[y:y + 480, x:x + 640]  # noqa: E731 - the camera's window on the slide
    cell_on_slide = (400.0, 350.0, 44.0)
    x0, y0 = 100, 80
    first = (cell_on_slide[0] - x0, cell_on_slide[1] - y0, 44.0)
    assert tracker.update(view(y0, x0), [first]) == [NEW]
    x1, y1 = 160, 50  # the stage moved 60 px left-right and 30 px up-down
    second = (cell_on_slide[0] - x1, cell_on_slide[1] - y1, 44.0)
    another = (50.0, 400.0, 40.0)
    assert tracker.update(view(y1, x1), [second, another]) == [SEEN, NEW]
    assert tracker.new_count == 2


def test_a_new_centre_is_new_and_each_cell_matches_once() -> None:
    tracker = CellTracker()
    field = _smear()
    assert tracker.update(field, [(300.0, 200.0, 40.0)]) == [NEW]
    # Two detections near the one remembered cell: the nearer one is it, the other is a new cell.
    assert tracker.update(field, [(320.0, 200.0, 40.0), (302.0, 201.0, 40.0)]) == [NEW, SEEN]
    assert tracker.update(field, [(600.0, 50.0, 30.0)]) == [NEW]
    assert tracker.new_count == 3


def test_cells_that_leave_the_field_are_forgotten() -> None:
    tracker = CellTracker()
    field = _smear()
    tracker.update(field, [(20.0, 240.0, 30.0), (320.0, 240.0, 30.0)])
    moved = np.roll(field, (0, -60), axis=(0, 1))  # stage moves: the left cell leaves the field
    assert tracker.update(moved, [(260.0, 240.0, 30.0)]) == [SEEN]
    assert len(tracker.tracks) == 1


def test_unmatched_cells_are_forgotten_after_a_while() -> None:
    tracker = CellTracker(forget_after=2)
    field = _smear()
    tracker.update(field, [(100.0, 100.0, 30.0)])
    tracker.update(field, [])
    tracker.update(field, [])
    assert len(tracker.tracks) == 1
    tracker.update(field, [])
    assert tracker.tracks == []
    assert tracker.update(field, [(100.0, 100.0, 30.0)]) == [NEW]


def test_tracking_off_for_independent_stills() -> None:
    tracker = CellTracker(tracking=False)
    field = _smear()
    cells = [(100.0, 100.0, 40.0), (300.0, 300.0, 40.0)]
    assert tracker.update(field, cells) == [NEW, NEW]
    assert tracker.update(field, cells) == [NEW, NEW]
    assert tracker.new_count == 4 and tracker.tracks == []


def test_a_change_of_frame_size_starts_afresh() -> None:
    tracker = CellTracker()
    tracker.update(_smear(), [(100.0, 100.0, 40.0)])
    assert tracker.update(_smear(240, 320), [(100.0, 100.0, 40.0)]) == [NEW]


def test_featureless_frames_fall_back_to_no_motion() -> None:
    tracker = CellTracker()
    blank = np.full((240, 320, 3), 200, np.uint8)
    tracker.update(blank, [(100.0, 100.0, 30.0)])
    assert tracker.update(blank, [(101.0, 100.0, 30.0)]) == [SEEN]
    assert str(SEEN) == "seen"
