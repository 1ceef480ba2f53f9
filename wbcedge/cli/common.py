"""Small helpers every command shares: the console, clean errors, --json output."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console

from wbcedge.jsonable import to_jsonable

# Piped or logged output gets 120 columns rather than rich's 80, so tables stay one row per line.
console = Console(stderr=False, width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True, soft_wrap=True)  # errors keep paths on one line


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one clear error line (what happened, what to do) and exit non-zero."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def write_json(path: Path | None, data: Any) -> None:
    """Write a command's results as JSON when the user gave `--json PATH` ('-' = stdout)."""
    if path is None:
        return
    text = json.dumps(data, indent=2, default=to_jsonable)
    if str(path) == "-":
        sys.stdout.write(text + "\n")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


JSON_OPTION = typer.Option(None, "--json", help="Also write the results as JSON to this path ('-' for stdout).")
