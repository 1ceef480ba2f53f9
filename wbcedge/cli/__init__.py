"""The `wbcedge` command line: a thin layer that wires the modules together.

Each verb lives in its own module under `wbcedge/cli/` and registers itself on
`app`; heavy imports (TensorFlow, runtimes) happen inside the commands, so
`wbcedge --help` and the device-side verbs never import TensorFlow.
"""

from __future__ import annotations

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


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """White blood cell classifiers from GPU box to microscope."""


# Registration order is the order `--help` lists the workflow in.
from wbcedge.cli import data_cmd, train_cmd, evaluate_cmd, export_cmd, run_cmd, bench_cmd, bundle_cmd  # noqa: E402,F401


def main() -> None:
    app(args=bare_camera_means_auto(sys.argv[1:]))


def bare_camera_means_auto(argv: list[str]) -> list[str]:
    """`wbcedge run --camera` with no value means `--camera auto` (click has no optional-value options)."""
    out = []
    for i, token in enumerate(argv):
        out.append(token)
        if token == "--camera" and (i + 1 == len(argv) or argv[i + 1].startswith("-")):
            out.append("auto")
    return out
