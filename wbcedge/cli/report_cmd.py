"""`wbcedge report SESSION_DIR`: write the differential, CSV, JSON and HTML again from a session's database.

For a session that was killed, lost power, or whose report files were deleted: the
cells committed to `cells.db` are all that is needed. The files are written by the same
function as `wbcedge run` and the review sign-off (`device.report.write_session_outputs`),
so the domain-shift result and a signed-off review come back too.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import typer

from wbcedge.cli import app
from wbcedge.cli.common import JSON_OPTION, console, examples, write_json


@app.command("report", rich_help_panel="On the device (no TensorFlow)", epilog=examples(
        "wbcedge report runs/session-20261201-101500        # after a crash, a kill or a power cut",
        "wbcedge report runs/session-20261201-101500 --reference lab-ranges.toml"))
def report_cmd(
    session_dir: Path = typer.Argument(..., help="A session folder written by `wbcedge run` (holds cells.db)."),
    reference: Path = typer.Option(None, "--reference", help="Reference ranges (.json/.toml); default: the session's, "
                                   "else adult ranges."),
    json_path: Path = JSON_OPTION,
) -> None:
    """Rebuild differential.json/.csv and report.html of a session from its database (also after a crash)."""
    from wbcedge.device.differential import load_reference
    from wbcedge.device.records import DB_FILE, read_meta, read_skipped
    from wbcedge.device.report import format_differential, rebuild_outputs, skipped_line
    from wbcedge.errors import InputDataError, InputFileMissingError, OutputFolderError
    from wbcedge.imagefile import display_name

    if not (session_dir / DB_FILE).is_file():
        # the input is missing (exit 2, as `wbcedge review` says it), not an output folder that cannot be written
        raise InputFileMissingError(f"{session_dir} is not a session folder ({DB_FILE} is missing): give the folder "
                                    "`wbcedge run` wrote (runs/session-...)")
    try:
        ref = load_reference(reference) if reference else None
    except (OSError, ValueError) as exc:
        raise InputDataError(str(exc)) from None
    try:
        paths = rebuild_outputs(session_dir, reference=ref)
        meta = read_meta(session_dir)
        skipped = read_skipped(session_dir)
    except sqlite3.DatabaseError as exc:
        raise OutputFolderError(f"{session_dir / DB_FILE} cannot be read ({exc}); the session database is damaged") from None
    doc = json.loads(paths["json"].read_text(encoding="utf-8"))
    diff = doc["differential"]
    console.print(format_differential(diff))
    signoff = (doc.get("review") or {}).get("signoff")
    if signoff:
        console.print(f"reviewed labels, signed off by {signoff['reviewer']} at {signoff.get('time_text', '')}",
                      markup=False, highlight=False)
    if skipped:
        console.print(display_name(skipped_line(skipped)), markup=False, highlight=False)
    state = "finished" if "finished_at" in meta else "interrupted"
    console.print(f"{state} session; rebuilt {paths['json']}, {paths['csv']} and {paths['html']}",
                  markup=False, highlight=False)
    write_json(json_path, {"session_dir": str(session_dir), "differential": diff, "review": doc.get("review"),
                           "paths": {k: str(v) for k, v in paths.items()}})
