"""`wbcedge run`: the microscope-side job. No TensorFlow anywhere on this path."""

from __future__ import annotations

from pathlib import Path

import typer

from wbcedge.cli import app
from wbcedge.cli.common import JSON_OPTION, console, err_console, examples, write_json


@app.command("run", rich_help_panel="On the device (no TensorFlow)", epilog=examples(
        "wbcedge run                          # a demonstration on the built-in frames (another microscope)",
        "wbcedge run --source slide01/ --profile device/profiles/usb-microscope.toml --count 200",
        "wbcedge run --camera jetson --profile device/profiles/jetson-csi.toml --count 100 --show"))
def run_cmd(
    source: str = typer.Option(None, "--source", "-s", help="Image, folder, glob or video file (default: built-in sample frames)."),
    camera: str = typer.Option(None, "--camera", help="A live camera: auto (also a bare --camera), pi, jetson, "
                               "or a V4L2 index such as 0 (default: no camera: --source or the built-in frames).",
                               show_default=False),
    bundle: Path = typer.Option(None, "--bundle", "-b", help="Bundle folder or archive (default: the built-in one)."),
    profile: Path = typer.Option(None, "--profile", help="Camera profile .toml with the scale (um per pixel) and focus threshold, "
                                "see device/profiles/ (default: none: no focus check, crops sized relative to each cell)."),
    count: int = typer.Option(None, "--count", help="Stop once this many cells are classified (100, 200, 400) (default: no limit: until the "
                                "source ends or Ctrl-C)."),
    out: Path = typer.Option(None, "--out", "-o", help="Session folder (default: runs/session-<date>-<time>)."),
    backend: str = typer.Option(None, "--backend", help="tflite or onnx (default: the bundle's default model)."),
    precision: str = typer.Option(None, "--precision", help="int8 or fp32 (default: the bundle's default model)."),
    threads: int = typer.Option(None, "--threads", help="Inference threads (default: up to 4)."),
    threshold: float = typer.Option(None, "--threshold", help="Confidence below which a cell is 'unidentified' (default: the bundle's)."),
    reference: Path = typer.Option(None, "--reference", help="Reference ranges (.json/.toml) for the flags; default: adult ranges."),
    show: bool = typer.Option(False, "--show", help="Open a live window with boxes and running counts."),
    serve: bool = typer.Option(False, "--serve", help="Serve the review station with the live frame, boxes, running "
                               "differential and focus in a browser (needs the web extra); it stays open after the "
                               "count for review until Ctrl-C."),
    host: str = typer.Option("127.0.0.1", "--host", help="With --serve: the address to listen on (0.0.0.0: the lab "
                             "network; a token is printed and required for changes)."),
    port: int = typer.Option(8765, "--port", help="With --serve: the port."),
    single_cell: bool = typer.Option(False, "--single-cell", help="Every image is one white cell (crops from another "
                                     "source): it is re-cut so the cell has the trained scale; an image where no "
                                     "cell is found is classified as given, and its record says so."),
    strict: bool = typer.Option(False, "--strict", help="Exit with code 7 when the domain-shift alarm fires "
                                "(the cells look unlike the model's training data)."),
    json_path: Path = JSON_OPTION,
) -> None:
    """Locate, classify and count white cells; write the session folder and print the differential."""
    from rich.panel import Panel
    from rich.text import Text

    from wbcedge.device.banner import banners
    from wbcedge.device.report import format_differential
    from wbcedge.device.session import CountOptions, count_cells
    from wbcedge.errors import DOMAIN_SHIFT_EXIT

    opts = CountOptions(source=source, camera=camera, bundle=bundle, profile=profile, count=count, out=out,
                        backend=backend, precision=precision, threads=threads, threshold=threshold,
                        reference=reference, show=show, serve=serve, host=host, port=port, single_cell=single_cell)
    result = count_cells(opts, on_message=lambda m: console.print(m, markup=False, highlight=False, soft_wrap=True),
                         on_warning=lambda m: err_console.print(f"warning: {m}", markup=False, highlight=False))
    notices = banners({**result.meta, "domain_shift": result.domain_shift}, result.differential)
    for notice in notices:
        console.print(Panel(Text(notice), style="bold yellow", expand=False))
    console.print(format_differential(result.differential))
    if result.frames_skipped:  # each was warned about as it was skipped: here only how many, and where the list is
        n = result.frames_skipped
        err_console.print(f"warning: {n} frame{'s' * (n != 1)} skipped: named above, and listed in "
                          f"{result.paths['html']}", markup=False, highlight=False)
    if result.timing:
        fps = result.timing.get("fps_end_to_end") or 0
        console.print(f"{result.frames_seen} frames ({result.frames_blurred} blurred), {fps:.1f} frames/s; "
                      f"stop: {result.stop_reason}; report: {result.paths['html']}", markup=False, highlight=False)
    for notice in notices:  # again under the table, where the eye lands last
        console.print(notice.split(":")[0] + ": see the notice above.", style="bold yellow", markup=False,
                      highlight=False)
    write_json(json_path, {"session_dir": str(result.session_dir), "run_dir": str(result.session_dir),
                           "differential": result.differential, "meta": result.meta,
                           "domain_shift": result.domain_shift})
    shift = result.domain_shift or {}
    if shift.get("alarm") is False and shift.get("judged"):
        console.print(f"domain-shift check: no alarm (score {shift['score']:.2f}, threshold {shift['threshold']:.2f}, "
                      f"{shift['cells']} cells)", markup=False, highlight=False)
    if result.server is not None:
        console.print(f"counting ended; the review station stays open at {result.server.url} for review "
                      f"(Ctrl-C to stop)", markup=False, highlight=False, soft_wrap=True)
        result.server.wait()
    if result.error:
        err_console.print(f"error: {result.error}\nAll {len(result.labels)} cells recorded so far are kept in "
                          f"{result.session_dir}.", markup=False, highlight=False)
        raise typer.Exit(3)
    if strict and result.shift_alarm:
        raise typer.Exit(DOMAIN_SHIFT_EXIT)
