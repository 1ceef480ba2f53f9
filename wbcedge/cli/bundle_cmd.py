"""`wbcedge bundle`: inspect, verify, pack and unpack model bundles (device side: no TensorFlow)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from wbcedge.cli import app
from wbcedge.cli.common import JSON_OPTION, console, examples, print_error, write_json

bundle_app = typer.Typer(help="Inspect, verify, pack and unpack model bundles.", no_args_is_help=True)
app.add_typer(bundle_app, name="bundle", rich_help_panel="On the device (no TensorFlow)")


@bundle_app.command("inspect", epilog=examples(
    "wbcedge bundle inspect                     # the built-in bundle",
    "wbcedge bundle inspect runs/my-run-bundle"))
def inspect_cmd(bundle: Path = typer.Argument(None, help="Bundle folder or archive (default: the built-in one)."),
                json_path: Path = JSON_OPTION) -> None:
    """Print what a bundle holds: classes, preprocessing, model files and their gate results."""
    from wbcedge.bundle import load_bundle, verify_bundle

    b = load_bundle(bundle, verify=False)
    m = b.manifest
    problems = verify_bundle(b.path)
    # Text from the manifest is data: escaped, so a class named "[/]" prints as it is.
    console.print(f"[bold]{escape(str(b.path))}[/]  format {escape(str(m.get('format')))} v{m.get('format_version')}, "
                  f"created {escape(str(m.get('created')))}, from run {escape(str(m.get('source_run')))}")
    console.print(f"classes: {escape(', '.join(b.classes))}; confidence threshold {b.threshold}")
    console.print(f"preprocess: {escape(json.dumps(m.get('preprocess')))}")
    table = Table(title="model files")
    for col in ("file", "backend", "precision", "size", "accuracy", "gate", "default"):
        table.add_column(col)
    for e in b.models:
        size, accuracy = e.get("size_bytes"), e.get("accuracy")  # optional in the schema
        table.add_row(escape(e["file"]), e["backend"], e["precision"], "—" if size is None else f"{size / 1e6:.2f} MB",
                      "—" if accuracy is None else f"{100 * accuracy:.2f}%", "ok" if e["within_budget"] else "OVER BUDGET",
                      "yes" if e["file"] == m.get("default_model") else "")
    console.print(table)
    console.print(f"deployable: {b.deployable}; verification: " + ("ok" if not problems else f"{len(problems)} problem(s)"))
    write_json(json_path, {**m, "verification_problems": problems, "path": str(b.path)})


@bundle_app.command("verify", epilog=examples(
    "wbcedge bundle verify runs/my-run-bundle.tar.gz"))
def verify_cmd(bundle: Path = typer.Argument(None, help="Bundle folder or archive (default: the built-in one)."),
               json_path: Path = JSON_OPTION) -> None:
    """Check every file's sha256 and the format version; exit 1 on any problem."""
    from wbcedge.bundle import DEFAULT_BUNDLE, load_bundle, verify_bundle

    b = load_bundle(bundle, verify=False)
    problems = verify_bundle(b.path)
    write_json(json_path, {"path": str(b.path), "ok": not problems, "problems": problems})
    if problems:
        for p in problems:
            console.print(f"[red]x[/] {p}", highlight=False)
        print_error(f"bundle {bundle or DEFAULT_BUNDLE} failed verification ({len(problems)} problem(s))")
        raise typer.Exit(1)
    console.print(f"[green]ok[/] {b.path}: {len(b.manifest['files'])} files match the manifest, format v{b.manifest['format_version']}")


@bundle_app.command("pack", epilog=examples(
    "wbcedge bundle pack runs/my-run-bundle --out my-model.tar.gz"))
def pack_cmd(bundle: Path = typer.Argument(..., help="Bundle folder."),
             out: Path = typer.Option(None, "--out", "-o", help="Archive path (default: BUNDLE.tar.gz).")) -> None:
    """Pack a verified bundle folder into one .tar.gz file."""
    from wbcedge.bundle import load_bundle, pack

    b = load_bundle(bundle)
    archive = pack(b.path, out or bundle.with_name(bundle.name + ".tar.gz"))
    console.print(f"wrote {archive}")


@bundle_app.command("unpack", epilog=examples(
    "wbcedge bundle unpack my-model.tar.gz ~/wbcedge/bundle"))
def unpack_cmd(archive: Path = typer.Argument(..., help="A bundle .tar.gz."),
               dest: Path = typer.Argument(..., help="Folder to unpack into.")) -> None:
    """Unpack and verify an archive; never writes outside DEST."""
    from wbcedge.bundle import load_bundle, unpack

    unpack(archive, dest)
    load_bundle(dest)
    console.print(f"unpacked and verified {dest}")
