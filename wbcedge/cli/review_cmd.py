"""`wbcedge review`: the review station in the browser, and `review export` for adaptation data."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.core import TyperGroup

from wbcedge.cli import app
from wbcedge.cli.common import JSON_OPTION, console, examples, write_json


class _SessionOrCommand(TyperGroup):
    """`wbcedge review SESSION` means `wbcedge review open SESSION`; `review export ...` stays a command."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["open", *args]
        return super().parse_args(ctx, args)


review_app = typer.Typer(cls=_SessionOrCommand, no_args_is_help=True, add_completion=False,
                         help="Verify, relabel and sign off a counting session in the browser "
                              "(`wbcedge review SESSION`); export the reviewed cells for `wbcedge adapt`.")
app.add_typer(review_app, name="review", rich_help_panel="On the device (no TensorFlow)")


@review_app.command("open", epilog=examples(
    "wbcedge review open runs/session-20261201-101500",
    "wbcedge review open runs/session-20261201-101500 --host 0.0.0.0 --no-browser"))
def review_open(
    session: Path = typer.Argument(..., help="A session folder written by `wbcedge run` (runs/session-...)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; 0.0.0.0 serves the lab network "
                             "(an access token is printed and required for every change)."),
    port: int = typer.Option(8765, "--port", help="Port to listen on."),
    no_browser: bool = typer.Option(False, "--no-browser", help="Do not open a browser window."),
) -> None:
    """Open the review station for one session (the default verb: `wbcedge review SESSION`)."""
    from wbcedge.device.review import require_web

    require_web()
    import uvicorn

    from wbcedge.device.review.app import LOOPBACK_HOSTS, create_app, is_loopback, new_token

    token = None if is_loopback(host) else new_token()
    web = create_app(session, token=token, allowed_hosts=None if token else LOOPBACK_HOSTS)
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/"
    if token:
        url += f"?token={token}"
        console.print(f"access token: {token}  (every change needs it; share it only with the reviewers)",
                      markup=False, highlight=False, soft_wrap=True)
    console.print(f"review station for {session} at {url}  (Ctrl-C to stop)", markup=False, highlight=False,
                  soft_wrap=True)
    if not no_browser:
        import threading
        import webbrowser
        threading.Timer(1.0, webbrowser.open, args=(url,)).start()
    uvicorn.run(web, host=host, port=port, log_level="warning")


@review_app.command("export", epilog=examples(
    "wbcedge review export runs/session-20261201-101500 runs/session-20261202-093000 --out site-cells",
    "wbcedge adapt --data site-cells --out site-bundle"))
def review_export(
    sessions: list[Path] = typer.Argument(..., help="One or more reviewed session folders."),
    out: Path = typer.Option(..., "--out", "-o", help="A new folder: <class>/<session>_<cell>.jpg and manifest.csv."),
    include_unreviewed: bool = typer.Option(False, "--include-unreviewed",
                                            help="Also write cells nobody reviewed, under the model's label."),
    json_path: Path = JSON_OPTION,
) -> None:
    """Write the reviewed cells as a class-folder tree plus a data manifest, ready for `wbcedge adapt --data DIR`."""
    from wbcedge.device.review.export import export_reviewed

    result = export_reviewed(sessions, out, include_unreviewed=include_unreviewed)
    total = sum(result.written.values())
    console.print(f"{total} reviewed crops -> {result.out} ({', '.join(f'{k} {v}' for k, v in result.written.items())}); "
                  f"manifest {result.manifest}", markup=False, highlight=False)
    if result.skipped:
        console.print("left out: " + ", ".join(f"{v} {k}" for k, v in result.skipped.items()),
                      markup=False, highlight=False)
    write_json(json_path, {"out": str(result.out), "manifest": str(result.manifest), "written": result.written,
                           "skipped": result.skipped})
