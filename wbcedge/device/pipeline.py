"""The device pipeline: frames in, located and classified white cells and a differential out.

    frame (BGR) -> focus check -> locate_cells -> crop_around_cell + to_model_input
                -> Classifier.predict (one batch per frame) -> tracker -> Recorder

No TensorFlow. Every stage is timed, so `wbcedge bench` and the run summary can
show which one is the slowest. Probabilities are temperature-scaled with the bundle's
calibration. Cells below the bundle's confidence threshold, or whose features lie
beyond the domain-shift check's per-cell limit (wbcedge.device.shift), are recorded
as "unidentified": kept for review, never forced into a class.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from typing import Callable

import cv2
import numpy as np

from wbcedge.bundle import Bundle
from wbcedge.device.capture import CameraLostError, FrameSource, focus_score
from wbcedge.device.confidence import apply_temperature
from wbcedge.device.locate import CellBox, LocatorConfig, estimate_um_per_px, locate_cells
from wbcedge.device.recrop import rescale_crop, single_cell_input
from wbcedge.device.runtime import Classifier
from wbcedge.device.shift import ShiftMonitor, ShiftReference
from wbcedge.imagefile import display_name, error_line
from wbcedge.preprocess import crop_around_cell, to_model_input

UNIDENTIFIED = "unidentified"
STAGES = ("decode", "focus", "locate", "preprocess", "infer", "bookkeeping")


@dataclass
class Cell:
    box: CellBox
    label: str
    confidence: float
    probs: np.ndarray
    crop: np.ndarray  # BGR crop as the model saw it (before resizing)
    ood: float | None = None  # domain-shift score (None: the shift check is off)


@dataclass
class StageTimer:
    """Seconds spent per stage, summed over frames."""
    seconds: dict = field(default_factory=lambda: {s: 0.0 for s in STAGES})
    frames: int = 0

    def add(self, stage: str, dt: float) -> None:
        self.seconds[stage] += dt

    def summary(self, wall_s: float | None = None) -> dict:
        n = max(self.frames, 1)
        total = sum(self.seconds.values())
        out = {"frames": self.frames,
               "ms_per_frame": {s: 1000 * v / n for s, v in self.seconds.items()},
               "stages_ms_per_frame": 1000 * total / n,
               "fps_from_stages": self.frames / total if total else None}
        if wall_s is not None:
            out["wall_s"] = wall_s
            out["fps_end_to_end"] = self.frames / wall_s if wall_s else None
        return out


class CellPipeline:
    """Locate and classify the white cells of one frame with a bundle's model."""

    def __init__(self, bundle: Bundle, backend: str | None = None, precision: str | None = None,
                 threads: int | None = None, locator: LocatorConfig | None = None,
                 um_per_px: float | None = None, threshold: float | None = None, single_cell: bool = False):
        self.bundle = bundle
        self.spec = bundle.spec
        self.classes = bundle.classes
        self.model_entry = bundle.model_entry(backend, precision)
        self.classifier = Classifier(bundle.model_path(backend, precision), threads=threads)
        self.classifier.check_classes(self.classes)
        self.locator = locator or LocatorConfig()
        self.um_per_px = um_per_px
        # Where the scale came from, for the session record: "profile", "red cells", or None while the
        # red cells of no frame so far could be measured (each frame is then sized on its own).
        self.scale_source = "profile" if um_per_px is not None else None
        self.threshold = bundle.threshold if threshold is None else threshold
        self.temperature = bundle.temperature
        ref_path = bundle.shift_reference_path
        self.shift_reference = (ShiftReference.load(ref_path, self.model_entry["file"])
                                if ref_path is not None and self.classifier.has_features else None)
        self.timer = StageTimer()
        # Every image is one white cell (crops from another source): see `_analyse_single_cell`.
        self.single_cell = single_cell
        self.note = ""          # what the last analysed image's record should say, if anything

    def new_monitor(self) -> ShiftMonitor | None:
        """A session's running shift score, or None when the shift check is off for this bundle/file."""
        return ShiftMonitor(self.shift_reference) if self.shift_reference is not None else None

    def classify(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Calibrated probabilities and OOD scores (None when the check is off) of a batch of model inputs."""
        probs, features = self.classifier.predict_with_features(inputs)
        probs = apply_temperature(probs, self.temperature)
        scores = self.shift_reference.cell_scores(features, inputs) if self.shift_reference is not None else None
        return probs, scores

    def analyse(self, image: np.ndarray) -> list[Cell]:
        if self.single_cell:
            return self._analyse_single_cell(image)
        t0 = time.perf_counter()
        if self.um_per_px is None:
            # The magnification does not change during a run: measure it once, from the
            # red cells of the first frame that shows enough of them, and keep it.
            self.um_per_px = estimate_um_per_px([image], self.locator)
            self.scale_source = "red cells" if self.um_per_px is not None else None
        boxes = locate_cells(image, self.locator, um_per_px=self.um_per_px)
        t1 = time.perf_counter()
        crops = [crop_around_cell(image, b.box, self.spec, self.um_per_px) for b in boxes]
        inputs = np.stack([to_model_input(c, self.spec) for c in crops]) if crops else None
        t2 = time.perf_counter()
        probs, scores = self.classify(inputs) if inputs is not None else (np.zeros((0, len(self.classes))), None)
        t3 = time.perf_counter()
        self.timer.add("locate", t1 - t0)
        self.timer.add("preprocess", t2 - t1)
        self.timer.add("infer", t3 - t2)
        cells = []
        for i, (box, crop, p) in enumerate(zip(boxes, crops, probs)):
            ood = None if scores is None else float(scores[i])
            cells.append(Cell(box, *self._label(p, ood), p, crop, ood))
        self.note = "" if cells else "no white cell found"
        return cells

    def _analyse_single_cell(self, image: np.ndarray) -> list[Cell]:
        """A single-cell image: its cell shown at the trained scale (`device.recrop`), or the image as
        given when no cell is found in it (and `note` says so). Always one cell per image."""
        t0 = time.perf_counter()
        x, scale = single_cell_input(image, self.spec)
        crop = rescale_crop(image, scale.factor)
        t1 = time.perf_counter()
        probs, scores = self.classify(x[None])
        p = probs[0]
        t2 = time.perf_counter()
        self.timer.add("preprocess", t1 - t0)
        self.timer.add("infer", t2 - t1)
        self.note = "no white cell found: classified as given" if scale.no_cell else ""
        ood = None if scores is None else float(scores[0])
        h, w = image.shape[:2]
        return [Cell(CellBox(0, 0, w, h, 1.0, False), *self._label(p, ood), p, crop, ood)]

    def _label(self, p: np.ndarray, ood: float | None) -> tuple[str, float]:
        """The cell's label and confidence: its top class, or unidentified when the calibrated confidence
        is below the threshold or the cell is beyond the shift check's per-cell limit."""
        k = int(np.argmax(p))
        conf = float(p[k])
        unlike_training = ood is not None and ood > self.shift_reference.cell_threshold
        return (self.classes[k] if conf >= self.threshold and not unlike_training else UNIDENTIFIED), conf


@dataclass
class SessionResult:
    labels: list[str]
    frames_seen: int
    frames_blurred: int
    stop_reason: str
    timing: dict
    error: str | None = None
    domain_shift: dict | None = None   # ShiftMonitor.state() at the end; None when the check is off
    frames_skipped: int = 0
    no_overlap_frames: int = 0


NO_OVERLAP = "no-overlap"
NO_OVERLAP_WARNING = ("consecutive frames share no overlap (the stage moved more than about a third of the field "
                      "between frames, or the picture changed completely): cells cannot be matched across them, so "
                      "the same cell may be counted again or missed. Move the stage more slowly or raise the frame rate.")


class StopFlag:
    """Set by SIGINT/SIGTERM: the loop finishes the current frame, then writes the report."""

    def __init__(self):
        self.reason: str | None = None

    def __bool__(self) -> bool:
        return self.reason is not None

    def install(self):
        def handler(signum, _frame):
            self.reason = f"stopped by {signal.Signals(signum).name}"
        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        return lambda: [signal.signal(s, h) for s, h in previous.items()]


def run_session(source: FrameSource, pipeline: CellPipeline, recorder, tracker, *, count_target: int | None = None,
                blur_threshold: float | None = None, count_edge_cells: bool | None = None,
                stop: StopFlag | None = None, on_frame: Callable[[object, list, list], None] | None = None,
                shift_monitor: ShiftMonitor | None = None,
                on_warning: Callable[[str], None] | None = None) -> SessionResult:
    """Capture until the source ends, the count is reached, or a stop; every counted cell is recorded as it goes.

    `shift_monitor` (from `pipeline.new_monitor()`) gets the OOD score of every counted cell.

    A frame that cannot be used (the source skipped it, or locating/classifying it
    failed on its pixels) is recorded as a skipped frame with its reason, and the run
    goes on. On a stream, consecutive frames whose motion cannot be measured (no
    overlap) are recorded as `no-overlap` warnings; `on_warning` hears the first of each
    series, and each frame that could not be analysed (the source's own skips reach the
    user through the source's `on_problem`).
    """
    stop = StopFlag() if stop is None else stop
    timer = pipeline.timer
    labels: list[str] = []
    seen = blurred_frames = skipped = no_overlap = 0
    in_gap = False
    reason, error = "source ended", None
    edge_ok = (not source.is_stream) if count_edge_cells is None else count_edge_cells
    t_start = time.perf_counter()
    it = iter(source)

    def record_skipped() -> int:
        taken = source.take_skipped() if hasattr(source, "take_skipped") else []
        for s in taken:
            recorder.add_skipped(s.name, s.reason)
        return len(taken)

    while not stop:
        t0 = time.perf_counter()
        try:
            frame = next(it)
        except StopIteration:
            skipped += record_skipped()
            break
        except CameraLostError as exc:
            skipped += record_skipped()
            reason, error = "camera lost", str(exc)
            break
        skipped += record_skipped()
        t1 = time.perf_counter()
        timer.add("decode", t1 - t0)
        seen += 1
        score = None
        is_blurred = False
        if blur_threshold:
            score = focus_score(frame.image)
            is_blurred = score < blur_threshold
        timer.add("focus", time.perf_counter() - t1)
        try:
            cells = [] if is_blurred else pipeline.analyse(frame.image)
        except (ValueError, cv2.error) as exc:  # pixels the locator or the model cannot take: skip the frame
            why = f"could not be analysed ({error_line(exc)})"
            recorder.add_skipped(frame.name, why)
            if on_warning:
                on_warning(f"skipped {display_name(frame.name)}: {why}")
            skipped += 1
            seen -= 1  # counted as skipped, not as seen
            continue
        t2 = time.perf_counter()
        statuses = tracker.update(frame.image, [(*c.box.center, c.box.diameter) for c in cells]) if cells or tracker.tracking else []
        motion = getattr(tracker, "last_motion", None) if source.is_stream else None
        if motion is not None and not motion.used:
            no_overlap += 1
            recorder.add_warning(NO_OVERLAP, NO_OVERLAP_WARNING, frame.index)
            if not in_gap and on_warning:
                on_warning(f"frame {frame.index}: {NO_OVERLAP_WARNING}")
            in_gap = True
        elif motion is not None:
            in_gap = False
        counted = []
        for cell, status in zip(cells, statuses):
            if str(status) != "new" or (cell.box.touches_edge and not edge_ok):
                continue
            recorder.add_cell(frame.index, frame.name, cell.box.box, cell.label, cell.confidence, cell.crop,
                              ood_score=cell.ood, probs=cell.probs)
            if shift_monitor is not None and cell.ood is not None:
                shift_monitor.add(cell.ood)
            labels.append(cell.label)
            counted.append(cell)
        blurred_frames += int(is_blurred)
        recorder.commit_frame(frame.index, frame.name, focus=score, blurred=is_blurred,
                              note="blurred: not analysed" if is_blurred else pipeline.note)
        timer.add("bookkeeping", time.perf_counter() - t2)
        timer.frames += 1
        if on_frame:
            on_frame(frame, cells, counted)
        classified = sum(1 for lab in labels if lab != UNIDENTIFIED)
        if count_target and classified >= count_target:
            reason = f"reached {count_target} classified cells"
            break
    if stop:
        reason = stop.reason
    return SessionResult(labels, seen, blurred_frames, reason, timer.summary(time.perf_counter() - t_start), error,
                         shift_monitor.state() if shift_monitor is not None else None,
                         frames_skipped=skipped, no_overlap_frames=no_overlap)
