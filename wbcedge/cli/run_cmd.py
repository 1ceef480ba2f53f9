"""`wbcedge run`: the microscope-side job. No TensorFlow anywhere on this path."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from wbcedge.cli import app
from wbcedge.cli.common import JSON_OPTION, console, err_console, fail, write_json

SAMPLE_FRAMES = Path(__file__).resolve().parent.parent / "samples" / "frames"


@app.command("run", rich_help_panel="On the device (no TensorFlow)")
def run_cmd(
    source: str = typer.Option(None, "--source", "-s", help="Image, folder, glob or video file (default: built-in sample frames)."),
    camera: str = typer.Option(None, "--camera", help="A live camera: auto (also a bare --camera), pi, jetson, "
                               "or a V4L2 index such as 0.", show_default=False),
    bundle: Path = typer.Option(None, "--bundle", "-b", help="Bundle folder or archive (default: the built-in one)."),
    profile: Path = typer.Option(None, "--profile", help="Camera profile .toml (see device/profiles/)."),
    count: int = typer.Option(None, "--count", help="Stop once this many cells are classified (100, 200, 400)."),
    out: Path = typer.Option(None, "--out", "-o", help="Run folder (default: runs/run-<date>-<time>)."),
    backend: str = typer.Option(None, "--backend", help="tflite or onnx (default: the bundle's default model)."),
    precision: str = typer.Option(None, "--precision", help="int8 or fp32 (default: the bundle's default model)."),
    threads: int = typer.Option(None, "--threads", help="Inference threads (default: up to 4)."),
    threshold: float = typer.Option(None, "--threshold", help="Confidence below which a cell is 'unidentified' (default: the bundle's)."),
    reference: Path = typer.Option(None, "--reference", help="Reference ranges (.json/.toml) for the flags; default: adult ranges."),
    show: bool = typer.Option(False, "--show", help="Open a live window with boxes and running counts."),
    json_path: Path = JSON_OPTION,
) -> None:
    """Locate, classify and count white cells; write the run folder and print the differential."""
    from wbcedge.bundle import BundleError, load_bundle
    from wbcedge.capture import CameraProfile, CameraLostError, ProfileError, SourceError, open_source
    from wbcedge.count import ADULT_REFERENCE, differential, load_reference
    from wbcedge.pipeline import CellPipeline, StopFlag, run_session
    from wbcedge.record import OutputError, Recorder
    from wbcedge.report import format_differential, write_outputs
    from wbcedge.track import CellTracker

    if count is not None and count <= 0:
        fail(f"--count {count}: give a positive number of cells, e.g. 100, 200 or 400")
    # Everything that can be wrong is checked before the first frame is captured.
    try:
        b = load_bundle(bundle)
    except BundleError as e:
        fail(str(e))
    if not b.deployable:
        fail(f"bundle {b.path} is not deployable: its export failed the accuracy gate (see {b.path / 'report.md'}). "
             "Re-export it, or export with --force if you accept the loss")
    try:
        cam_profile = CameraProfile.load(profile) if profile else None
        ref = load_reference(reference) if reference else ADULT_REFERENCE
    except (ProfileError, OSError, ValueError) as e:
        fail(str(e))
    builtin = source is None and camera is None
    src_arg = str(SAMPLE_FRAMES) if builtin else source
    out = out or Path("runs") / time.strftime("run-%Y%m%d-%H%M%S")
    try:
        pipeline = CellPipeline(b, backend, precision, threads, threshold=threshold,
                                um_per_px=cam_profile.um_per_px if cam_profile else None)
        src = open_source(src_arg, camera, cam_profile, on_problem=lambda m: err_console.print(f"[yellow]warning:[/] {m}"))
    except (BundleError, SourceError, CameraLostError, FileNotFoundError, ValueError) as e:
        fail(str(e))
    try:
        recorder = Recorder(out)
    except OutputError as e:
        src.close()
        fail(str(e))
    meta = {"source": src.label if hasattr(src, "label") else src_arg, "builtin_samples": builtin,
            "bundle": str(b.path), "model_file": pipeline.model_entry["file"], "threshold": pipeline.threshold,
            "profile": cam_profile.to_dict() if cam_profile else None, "count_target": count,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for k, v in meta.items():
        recorder.set_meta(k, v)

    console.print(f"counting white cells from {meta['source']} with {b.path.name}/{pipeline.model_entry['file']} -> {out}")
    stop = StopFlag()
    restore = stop.install()
    window = _LiveWindow(b.classes) if show else None
    error = None
    try:
        with src:
            result = run_session(src, pipeline, recorder, CellTracker(tracking=src.is_stream), count_target=count,
                                 blur_threshold=cam_profile.focus_threshold if cam_profile else None, stop=stop,
                                 on_frame=window.update if window else None)
    except OutputError as e:
        result, error = None, str(e)
    finally:
        restore()
        if window:
            window.close()
    if result is None:  # the disk failed: report from what the database holds
        from wbcedge.record import read_cells
        labels = [c.label for c in read_cells(out)]
        stop_reason = "output error"
    else:
        labels, stop_reason, error = result.labels, result.stop_reason, result.error
    diff = differential(labels, b.classes, reference=ref)
    meta.update(stop_reason=stop_reason, error=error, um_per_px=pipeline.um_per_px, frames=result.frames_seen if result else None,
                blurred_frames=result.frames_blurred if result else None, timing=result.timing if result else None)
    recorder.set_meta("stop_reason", stop_reason)
    recorder.close(finished=error is None)
    try:
        paths = write_outputs(out, diff, meta)
    except OutputError as e:
        fail(f"{e}")
    console.print(format_differential(diff))
    if result:
        t = result.timing
        console.print(f"{result.frames_seen} frames ({result.frames_blurred} blurred), {t['fps_end_to_end'] or 0:.1f} frames/s; "
                      f"stop: {stop_reason}; report: {paths['html']}", highlight=False)
    write_json(json_path, {"run_dir": str(out), "differential": diff, "meta": meta})
    if error:
        err_console.print(f"[bold red]error:[/] {error}\nAll {len(labels)} cells recorded so far are kept in {out}.",
                          highlight=False)
        raise typer.Exit(3)


class _LiveWindow:
    """--show: boxes and running counts in an OpenCV window (needs a display and a GUI OpenCV build)."""

    def __init__(self, classes):
        self.counts = {c: 0 for c in (*classes, "unidentified")}

    def update(self, frame, cells, counted):
        import cv2
        for c in counted:
            self.counts[c.label] += 1
        view = frame.image.copy()
        for c in cells:
            x0, y0, x1, y1 = c.box.box
            cv2.rectangle(view, (x0, y0), (x1, y1), (0, 255, 0), 2)
            cv2.putText(view, f"{c.label} {c.confidence:.2f}", (x0, max(12, y0 - 4)),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 255, 0), 1)
        text = "  ".join(f"{k[:4]} {v}" for k, v in self.counts.items())
        cv2.putText(view, text, (8, view.shape[0] - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1)
        try:
            cv2.imshow("wbcedge", view)
            cv2.waitKey(1)
        except cv2.error as exc:
            raise SystemExit(f"--show needs a display and an OpenCV build with GUI support ({exc}); "
                             "run headless (the default) and open report.html instead") from exc

    def close(self):
        import cv2
        try:
            cv2.destroyAllWindows()
        except cv2.error:
            pass
