"""The `wbcedge` command line: a thin layer that wires the modules together.

Each verb lives in its own module under `wbcedge/cli/` and registers itself on
`app`; heavy imports (TensorFlow, runtimes) happen inside the commands, so
`wbcedge --help` and the device-side verbs never import TensorFlow.
"""

from __future__ import annotations

import os
import sys

import typer

from wbcedge import __version__

app = typer.Typer(
    name="wbcedge",
    help=(
        "White blood cell classifiers from GPU box to microscope.\n\n"
        "Workflow: `data` (index, split, check, augment) -> `train` -> `evaluate` -> "
        "`export --int8` (accuracy-gated bundle) -> `run --camera` on the device -> `bench`."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"wbcedge {__version__}")
        raise typer.Exit()


DEBUG_ENV = "WBCEDGE_DEBUG"


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help=f"Show the traceback of an error (also: {DEBUG_ENV}=1)."),
) -> None:
    """White blood cell classifiers from GPU box to microscope."""
    if debug:
        os.environ[DEBUG_ENV] = "1"


# Registration order is the order `--help` lists the workflow in.
from wbcedge.cli import bench_cmd, bundle_cmd, data_cmd, evaluate_cmd, export_cmd, run_cmd, train_cmd  # noqa: E402,F401


def main() -> None:
    """The console entry point: every expected failure (a `WbcedgeError`) ends as one `error:` line.

    Exit codes per kind are listed in `wbcedge.errors` and the README; `--debug` or
    WBCEDGE_DEBUG=1 re-raises so the traceback shows.
    """
    from wbcedge.errors import WbcedgeError

    try:
        app(args=bare_camera_means_auto(sys.argv[1:]))
    except WbcedgeError as exc:
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        from wbcedge.cli.common import err_console
        err_console.print("[bold red]error:[/] ", end="", highlight=False)
        err_console.print(str(exc), markup=False, highlight=False)
        sys.exit(exc.exit_code)


def bare_camera_means_auto(argv: list[str]) -> list[str]:
    """`wbcedge run --camera` with no value means `--camera auto` (click has no optional-value options)."""
    out = []
    for i, token in enumerate(argv):
        out.append(token)
        if token == "--camera" and (i + 1 == len(argv) or argv[i + 1].startswith("-")):
            out.append("auto")
    return out
