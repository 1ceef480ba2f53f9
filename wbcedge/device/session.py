"""A counting session: everything `wbcedge run` does, as one library call.

    result = count_cells(CountOptions(source="frames/", count=200))
    print(result.differential, result.session_dir)

`CountOptions` validates every option when it is made (a bad value raises an
`InputDataError` naming the option and its allowed range); `count_cells` checks the
bundle, profile, source and output folder before the first frame is captured, runs
the capture loop, and writes the session folder (SQLite records, crops,
`differential.json`/`.csv`, `report.html`). A lost camera or a full disk ends the
session with every cell recorded so far kept and reported (`result.error`).
`result.domain_shift` says whether the cells looked like the model's training data
(wbcedge.device.shift); `result.shift_alarm` is True when they did not.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from wbcedge.device.banner import ADAPTATION_KEY, CHECK_KEY
from wbcedge.errors import InputDataError
from wbcedge.imagefile import display_name

SAMPLE_FRAMES = Path(__file__).resolve().parent.parent / "samples" / "frames"
"""Six real BCCD frames shipped with the package: the default source of `wbcedge run`."""
SESSIONS_DIR = Path("runs")
COUNT_RANGE = (1, 1_000_000)     # --count: cells to classify before stopping
THREADS_RANGE = (1, 256)         # --threads: inference threads


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def default_session_dir(now: float | None = None) -> Path:
    """`runs/session-<date>-<time>`: a counting session folder (a training run lives in `training/runs/`)."""
    return SESSIONS_DIR / time.strftime("session-%Y%m%d-%H%M%S", time.localtime(now))


@dataclass
class CountOptions:
    """What to count and how; every field has a default and is checked when the options are made."""
    source: str | None = None        # image, folder, glob or video; None with no camera: the built-in frames
    camera: str | None = None        # auto, pi, jetson or a V4L2 index
    bundle: Path | None = None       # None: the built-in bundle
    profile: Path | None = None      # camera profile .toml
    count: int | None = None         # stop after this many classified cells
    out: Path | None = None          # the session folder; None: runs/session-<date>-<time>
    backend: str | None = None       # tflite or onnx
    precision: str | None = None     # int8 or fp32
    threads: int | None = None
    threshold: float | None = None   # confidence below which a cell is unidentified
    reference: Path | None = None    # reference ranges for the flags
    show: bool = False               # live OpenCV window
    single_cell: bool = False        # every image is one white cell (crops from another source)
    serve: bool = False              # the review station with the live frame, in the browser
    host: str = "127.0.0.1"          # where --serve listens (0.0.0.0: the lab network, with a token)
    port: int = 8765

    def __post_init__(self) -> None:
        lo, hi = COUNT_RANGE
        if self.count is not None and not (_whole(self.count) and lo <= self.count <= hi):
            raise InputDataError(f"--count {self.count!r}: give a whole number of cells in [{lo}, {hi}], "
                                 "e.g. 100, 200 or 400")
        lo, hi = THREADS_RANGE
        if self.threads is not None and not (_whole(self.threads) and lo <= self.threads <= hi):
            raise InputDataError(f"--threads {self.threads!r}: give a whole number of threads in [{lo}, {hi}]")
        if self.threshold is not None and not (isinstance(self.threshold, (int, float))
                                               and not isinstance(self.threshold, bool)
                                               and not math.isnan(self.threshold) and 0.0 <= self.threshold <= 1.0):
            raise InputDataError(f"--threshold {self.threshold!r}: give a confidence in [0, 1], e.g. 0.6")
        if not (_whole(self.port) and 1 <= self.port <= 65535):
            raise InputDataError(f"--port {self.port!r}: give a whole number port in [1, 65535], e.g. 8765")
        if self.backend is not None and self.backend not in ("tflite", "onnx"):
            raise InputDataError(f"--backend {self.backend}: choose tflite or onnx")
        if self.precision is not None and self.precision not in ("int8", "fp32"):
            raise InputDataError(f"--precision {self.precision}: choose int8 or fp32")

    @property
    def builtin_samples(self) -> bool:
        return self.source is None and self.camera is None


@dataclass
class CountResult:
    session_dir: Path
    differential: dict
    meta: dict
    labels: list[str]
    paths: dict = field(default_factory=dict)
    frames_seen: int | None = None
    frames_blurred: int | None = None
    frames_skipped: int | None = None
    timing: dict | None = None
    stop_reason: str = ""
    error: str | None = None   # a lost camera or a failed disk; the session folder keeps what was recorded
    server: Any = None         # with serve: the review station, still serving (call .wait() or .stop())
    domain_shift: dict | None = None   # differential.json's "domain_shift"

    @property
    def shift_alarm(self) -> bool:
        return bool(self.domain_shift and self.domain_shift.get("alarm"))


def count_cells(opts: CountOptions, *, on_message: Callable[[str], None] = lambda m: None,
                on_warning: Callable[[str], None] = lambda m: None) -> CountResult:
    """Run one counting session; everything that can be wrong is checked before the first frame."""
    from wbcedge.bundle import BundleError, load_bundle
    from wbcedge.device.capture import CameraProfile, SourceError, open_source
    from wbcedge.device.differential import ADULT_REFERENCE, load_reference
    from wbcedge.device.pipeline import CellPipeline, StopFlag, run_session
    from wbcedge.device.records import OutputError, Recorder, read_cells, read_skipped
    from wbcedge.device.report import skipped_line, write_session_outputs
    from wbcedge.device.shift import SHIFT_OFF
    from wbcedge.device.track import CellTracker

    bundle = load_bundle(opts.bundle)
    if not bundle.deployable:
        raise BundleError(f"bundle {bundle.path} is not deployable: its export failed the accuracy gate "
                          f"(see {bundle.path / 'report.md'}). Re-export it, or export with --force if you accept the loss")
    profile = CameraProfile.load(opts.profile) if opts.profile else None
    reference = load_reference(opts.reference) if opts.reference else ADULT_REFERENCE
    jetson_camera = bool(opts.camera) and opts.camera.split(":")[0] in ("jetson", "csi", "nvargus")
    if opts.show or jetson_camera:  # say which OpenCV runs, and refuse before capture if it cannot do the job
        from wbcedge.device.opencv_build import check_for
        on_message(check_for(show=opts.show, gstreamer=jetson_camera).describe())
    src_arg = str(SAMPLE_FRAMES) if opts.builtin_samples else opts.source
    out = Path(opts.out) if opts.out else default_session_dir()
    pipeline = CellPipeline(bundle, opts.backend, opts.precision, opts.threads, threshold=opts.threshold,
                            um_per_px=profile.um_per_px if profile else None, single_cell=opts.single_cell)
    src = open_source(src_arg, opts.camera, profile, on_problem=on_warning)
    try:
        recorder = Recorder(out)
    except OutputError:
        src.close()
        raise
    meta: dict[str, Any] = {
        "source": getattr(src, "label", src_arg), "builtin_samples": opts.builtin_samples,
        "bundle": str(bundle.path), "model_file": pipeline.model_entry["file"], "threshold": pipeline.threshold,
        "classes": bundle.classes, "reference": str(opts.reference) if opts.reference else None,
        "profile": profile.to_dict() if profile else None, "count_target": opts.count, "single_cell": opts.single_cell,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "calibration": bundle.manifest.get("calibration"),
        # the bundle's measured accuracy on another microscope, for the demo and shift banners
        CHECK_KEY: bundle.manifest.get(CHECK_KEY), ADAPTATION_KEY: bundle.manifest.get(ADAPTATION_KEY)}
    for k, v in meta.items():
        recorder.set_meta(k, v)
    on_message(f"counting white cells from {display_name(str(meta['source']))} with "
               f"{bundle.path.name}/{pipeline.model_entry['file']} -> {out}")
    monitor = pipeline.new_monitor()
    if monitor is None:
        on_warning(SHIFT_OFF)

    live = server = None
    if opts.serve:
        from wbcedge.device.review.live import start_live_station
        try:
            live, server = start_live_station(out, opts.host, opts.port, profile.focus_threshold if profile else None,
                                              on_message)
        except BaseException:
            src.close()
            recorder.close(finished=False)
            raise
    stop = StopFlag()
    restore = stop.install()
    window = None
    if opts.show:
        from wbcedge.device.display import LiveWindow
        window = LiveWindow(bundle.classes, shift_monitor=monitor)
    hooks = [h for h in (window.update if window else None, live.update if live else None) if h]
    result, error = None, None
    try:
        with src:
            result = run_session(src, pipeline, recorder, CellTracker(tracking=src.is_stream), count_target=opts.count,
                                 blur_threshold=profile.focus_threshold if profile else None, stop=stop,
                                 on_frame=(lambda *a: [h(*a) for h in hooks]) if hooks else None,
                                 shift_monitor=monitor, on_warning=on_warning)
    except OutputError as exc:
        error = str(exc)
    finally:
        restore()
        if window:
            window.close()
        if live:
            live.finish()
    if result is None:  # the disk failed: report from what the database holds
        labels = [c.label for c in read_cells(out)]
        stop_reason = "output error"
    else:
        labels, stop_reason, error = result.labels, result.stop_reason, result.error
    if result is not None and result.frames_seen == 0 and stop_reason == "source ended" and not src.live:
        recorder.close(finished=False)
        if server is not None:
            server.stop()
        raise SourceError(no_readable_image(str(meta["source"]), result.frames_skipped))
    meta.update(stop_reason=stop_reason, error=error, um_per_px=pipeline.um_per_px,
                scale_source=pipeline.scale_source or "not measured: no frame showed red cells that fit its "
                "white cells, so each frame was sized on its own (give a camera profile with um_per_px)",
                frames=result.frames_seen if result else None,
                blurred_frames=result.frames_blurred if result else None,
                skipped_frames=result.frames_skipped if result else None,
                no_overlap_frames=result.no_overlap_frames if result else None,
                timing=result.timing if result else None)
    domain_shift = (monitor.state() if monitor is not None
                    else {"score": None, "threshold": None, "alarm": None, "cells": len(labels), "note": SHIFT_OFF})
    meta.update(temperature=pipeline.temperature)
    for k, v in {**meta, "domain_shift": domain_shift}.items():  # all a later report needs is in cells.db
        recorder.set_meta(k, v)
    recorder.close(finished=error is None)
    skipped = read_skipped(out)
    if skipped:
        meta.update(skipped_frames=len(skipped), skipped_summary=skipped_line(skipped))
    paths = write_session_outputs(out, reference=reference)
    diff = json.loads(paths["json"].read_text(encoding="utf-8"))["differential"]
    return CountResult(session_dir=out, differential=diff, meta=meta, labels=labels, paths=paths,
                       frames_seen=result.frames_seen if result else None,
                       frames_blurred=result.frames_blurred if result else None,
                       frames_skipped=result.frames_skipped if result else None,
                       timing=result.timing if result else None, stop_reason=stop_reason, error=error, server=server,
                       domain_shift=domain_shift)


def no_readable_image(source: str, skipped: int) -> str:
    """The error of a file source that gave no frame: every file unreadable (or none at all)."""
    why = (f" ({skipped} file was skipped, see the warning above)" if skipped == 1 else
           f" ({skipped} files were skipped, see the warnings above)" if skipped else "")
    return (f"no readable image was found in {display_name(source)}{why}. Point --source at JPEG or PNG frames "
            f"(a file, a folder or a glob such as 'slide01/*.jpg') or at a video file.")
