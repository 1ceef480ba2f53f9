"""Count each cell once on a live camera: match cells across frames, allowing for stage motion.

On a camera or video the same white cell stays in view for many frames, and the
stage moves between fields. `CellTracker.update(frame, cells)` takes one frame
(BGR uint8, as capture delivers it) and the centres of the cells located in it,
and says for each cell whether it is NEW (count it) or SEEN (counted already).

Between frames it measures the stage motion by phase correlation of downscaled
gray frames (`cv2.phaseCorrelate`), shifts every remembered cell by that motion,
and matches new centres to the shifted ones. A remembered cell whose shifted centre
has left the field is forgotten: if the stage comes back to it, it is counted again
(a known limit; sweep a smear in one direction, as for a manual differential).

For a folder of independent stills, construct with `tracking=False`: every frame
is a new field and every cell is NEW.

Pass only the frames you locate cells in: the motion is measured from the last
frame given to `update`. Phase correlation follows a shift up to about a third of
the field between two frames; a faster move loses the match, and cells are then
matched as if the stage had not moved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Iterable, Sequence

import cv2
import numpy as np


class CellStatus(str, Enum):
    NEW = "new"     # not seen before: count it
    SEEN = "seen"   # the same cell as in an earlier frame: already counted

    def __str__(self) -> str:
        return self.value


@dataclass
class Track:
    id: int
    x: float
    y: float
    diameter: float
    last_frame: int
    hits: int = 1


@dataclass(frozen=True)
class Motion:
    dx: float          # how far the picture moved between the two frames, in frame pixels (+x right)
    dy: float          # (+y down)
    response: float    # phase-correlation peak strength, 0..1; low = unreliable
    used: bool         # False when the measurement was too weak and motion was taken as zero


CellCentre = tuple[float, float, float]  # (x, y, diameter) in frame pixels


class CellTracker:
    """Decides per located cell whether it is NEW or SEEN.

    tracking: False for independent stills (every cell NEW, nothing remembered).
    match_fraction: a new centre matches a remembered cell within this fraction of
        the larger of their diameters (default half a diameter), and at least `min_match_px`.
    forget_after: forget a cell not matched for this many updates even if it is still
        in the field (a false detection, or a cell the locator keeps missing).
    motion_width: frames are shrunk to this width before phase correlation.
    min_response: below this peak strength the measured motion is ignored.
    """

    def __init__(self, tracking: bool = True, match_fraction: float = 0.5, min_match_px: float = 4.0,
                 forget_after: int = 100, motion_width: int = 320, min_response: float = 0.05):
        if match_fraction <= 0 or min_match_px < 0 or forget_after < 1 or motion_width < 32:
            raise ValueError("match_fraction must be > 0, min_match_px >= 0, forget_after >= 1, motion_width >= 32")
        self.tracking = tracking
        self.match_fraction = match_fraction
        self.min_match_px = min_match_px
        self.forget_after = forget_after
        self.motion_width = motion_width
        self.min_response = min_response
        self.tracks: list[Track] = []
        self.last_motion: Motion | None = None
        self.last_track_ids: list[int] = []
        self.new_count = 0
        self._next_id = 0
        self._frame_no = -1
        self._prev_small: np.ndarray | None = None
        self._prev_shape: tuple[int, int] | None = None
        self._scale = 1.0
        self._window: np.ndarray | None = None

    def reset(self) -> None:
        """Forget everything (e.g. a new slide)."""
        self.tracks.clear()
        self._prev_small = None
        self._prev_shape = None
        self.last_motion = None
        self.last_track_ids = []

    def update(self, frame_bgr: np.ndarray, cells: Iterable[CellCentre]) -> list[CellStatus]:
        """NEW or SEEN for each (x, y, diameter) in `cells`, in the same order."""
        cells = [(float(x), float(y), float(d)) for x, y, d in cells]
        self._frame_no += 1
        if not self.tracking:
            ids = list(range(self._next_id, self._next_id + len(cells)))
            self._next_id += len(cells)
            self.new_count += len(cells)
            self.last_track_ids = ids
            return [CellStatus.NEW] * len(cells)

        h, w = frame_bgr.shape[:2]
        if self._prev_shape != (h, w):
            self.reset()  # a different camera mode: nothing to compare with
        small = self._small_gray(frame_bgr)
        if self._prev_small is not None:
            self.last_motion = self._measure(self._prev_small, small)
            if self.last_motion.used:
                for t in self.tracks:
                    t.x += self.last_motion.dx
                    t.y += self.last_motion.dy
        self._prev_small, self._prev_shape = small, (h, w)

        # Cells whose centre left the field are gone; so are long-unmatched ones.
        self.tracks = [t for t in self.tracks
                       if 0 <= t.x < w and 0 <= t.y < h and self._frame_no - t.last_frame <= self.forget_after]

        statuses, ids = self._match(cells)
        self.last_track_ids = ids
        return statuses

    # ------------------------------------------------------------ internals

    def _small_gray(self, frame_bgr: np.ndarray) -> np.ndarray:
        gray = frame_bgr if frame_bgr.ndim == 2 else cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY)
        h, w = gray.shape[:2]
        self._scale = min(1.0, self.motion_width / w)
        if self._scale < 1.0:
            gray = cv2.resize(gray, (max(8, round(w * self._scale)), max(8, round(h * self._scale))),
                              interpolation=cv2.INTER_AREA)
        small = gray.astype(np.float32)
        if self._window is None or self._window.shape != small.shape:
            self._window = cv2.createHanningWindow((small.shape[1], small.shape[0]), cv2.CV_32F)
        return small

    def _measure(self, prev: np.ndarray, cur: np.ndarray) -> Motion:
        (dx, dy), response = cv2.phaseCorrelate(prev, cur, self._window)
        if not (math.isfinite(dx) and math.isfinite(dy)) or response < self.min_response:
            return Motion(0.0, 0.0, float(response), False)
        return Motion(dx / self._scale, dy / self._scale, float(response), True)

    def _match(self, cells: Sequence[CellCentre]) -> tuple[list[CellStatus], list[int]]:
        # Greedy nearest-first matching: each remembered cell matches at most one new centre.
        pairs = []
        for i, (x, y, d) in enumerate(cells):
            for j, t in enumerate(self.tracks):
                dist = math.hypot(x - t.x, y - t.y)
                if dist <= max(self.min_match_px, self.match_fraction * max(d, t.diameter)):
                    pairs.append((dist, i, j))
        pairs.sort()
        cell_track: dict[int, int] = {}
        used_tracks: set[int] = set()
        for _, i, j in pairs:
            if i in cell_track or j in used_tracks:
                continue
            cell_track[i] = j
            used_tracks.add(j)

        statuses, ids = [], []
        for i, (x, y, d) in enumerate(cells):
            if i in cell_track:
                t = self.tracks[cell_track[i]]
                t.x, t.y, t.diameter = x, y, 0.5 * (t.diameter + d)
                t.last_frame, t.hits = self._frame_no, t.hits + 1
                statuses.append(CellStatus.SEEN)
                ids.append(t.id)
            else:
                t = Track(self._next_id, x, y, d, self._frame_no)
                self._next_id += 1
                self.tracks.append(t)
                self.new_count += 1
                statuses.append(CellStatus.NEW)
                ids.append(t.id)
        return statuses, ids
