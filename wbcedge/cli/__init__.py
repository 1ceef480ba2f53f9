"""The `wbcedge` command line: a thin layer that wires the modules together.

Each verb lives in its own module under `wbcedge/cli/` and registers itself on
`app`; heavy imports (TensorFlow, runtimes) happen inside the commands, so
`wbcedge --help` and the device-side verbs never import TensorFlow.
"""

from __future__ import annotations

import os
import sys

import typer
from typer.core import TyperGroup

from wbcedge import __version__

DEBUG_ENV = "WBCEDGE_DEBUG"


class _OneErrorLine(TyperGroup):
    """The root command: every expected failure (a `WbcedgeError`) ends as one `error:` line.

    So does an optional package that is not installed (TensorFlow for `train` on a device,
    the report extra for `evaluate`): one line with the pip command, exit 5.

    Catching here rather than only in `main` means `CliRunner` tests and `python -m wbcedge`
    behave the same. Exit codes per kind are in `wbcedge.errors` and the README; `--debug`
    or WBCEDGE_DEBUG=1 lets the traceback through.
    """

    def invoke(self, ctx: typer.Context):
        from wbcedge.errors import WbcedgeError, missing_extra

        try:
            return super().invoke(ctx)
        except (WbcedgeError, ModuleNotFoundError) as exc:
            error = exc if isinstance(exc, WbcedgeError) else missing_extra(exc)
            if error is None or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
                raise
            from wbcedge.cli.common import print_error
            print_error(str(error))
            raise typer.Exit(error.exit_code) from None


app = typer.Typer(
    cls=_OneErrorLine,
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


def _flags_show_no_value() -> None:
    """typer 0.29's rich help prints `<bool>` beside every on/off flag, as if it took a value: show nothing."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich
    if getattr(shown, "wbcedge", False):
        return

    def display_type_rich(self, ctx):
        return None if self.is_flag and not self.count else shown(self, ctx)

    display_type_rich.wbcedge = True
    TyperOption.display_type_rich = display_type_rich


_flags_show_no_value()


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
from wbcedge.cli import review_cmd  # noqa: E402,F401  (after run: the help lists the workflow in order)
from wbcedge.cli import report_cmd  # noqa: E402,F401
from wbcedge.cli import adapt_cmd  # noqa: E402,F401  (after review: adapting uses the reviewed cells)


def main() -> None:
    """The console entry point; expected failures become one `error:` line (see `_OneErrorLine`)."""
    app(args=bare_camera_means_auto(sys.argv[1:]))


def bare_camera_means_auto(argv: list[str]) -> list[str]:
    """`wbcedge run --camera` with no value means `--camera auto` (click has no optional-value options)."""
    out = []
    for i, token in enumerate(argv):
        out.append(token)
        if token == "--camera" and (i + 1 == len(argv) or argv[i + 1].startswith("-")):
            out.append("auto")
    return out
