"""Small helpers every command shares: the console, clean errors, --json output."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console

from wbcedge.errors import InputDataError, OutputFolderError
from wbcedge.jsonable import to_jsonable

# Piped or logged output gets 120 columns rather than rich's 80, so tables stay one row per line.
console = Console(stderr=False, width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True, soft_wrap=True)  # errors keep paths on one line


def fail(message: str) -> NoReturn:
    """Refuse an option value or combination: one clear error line (what happened, what to do), exit 2."""
    raise InputDataError(message)


def print_error(message: str) -> None:
    """The one `error:` line; the message is printed literally (paths and floors hold square brackets)."""
    err_console.print("[bold red]error:[/] ", end="", highlight=False)
    err_console.print(message, markup=False, highlight=False)


def write_json(path: Path | None, data: Any) -> None:
    """Write a command's results as JSON when the user gave `--json PATH` ('-' = stdout)."""
    if path is None:
        return
    text = json.dumps(data, indent=2, default=to_jsonable)
    if str(path) == "-":
        sys.stdout.write(text + "\n")
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    except OSError as exc:
        raise OutputFolderError(f"cannot write --json {path}: {exc.strerror or exc}; give a writable path") from exc


JSON_OPTION = typer.Option(None, "--json", help="Also write the results as JSON to this path ('-' for stdout) "
                           "(default: no JSON).", show_default=False)


def examples(*lines: str) -> str:
    """A verb's help epilog: 'Examples:' then one real command per line (escaped, so `[device]` survives)."""
    from rich.markup import escape

    return "Examples:\n" + "\n".join(escape(line) for line in lines)
