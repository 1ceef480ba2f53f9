"""`wbcedge data`: index, split, check and augment image sets (thin wiring over wbcedge.data)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from wbcedge import data
from wbcedge.cli import app
from wbcedge.cli.common import JSON_OPTION, console, err_console, examples, fail, write_json
from wbcedge.data.scale import copy_scale
from wbcedge.imagefile import display_name
from wbcedge.labels import CLASSES, SKIP, UnknownClassError, normalize_class

data_app = typer.Typer(
    help="Index, split, check and augment WBC image sets.\n\n"
         "Workflow: `index DIR` -> `split MANIFEST` -> `check MANIFEST` -> `augment MANIFEST --out DIR`.",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data", rich_help_panel="On the training box")

MAX_LISTED = 20  # duplicate groups listed one by one; --json always holds all of them


# ---------------------------------------------------------------- commands

@data_app.command("index", epilog=examples(
    "wbcedge data index ../shared/data/pbc --out runs/pbc/manifest.csv",
    "wbcedge data index my_cells/ --map Segmented=neutrophil --map Junk=skip --out runs/mine/manifest.csv"))
def index_cmd(
    folder: Path = typer.Argument(..., help="Folder with one sub-folder of images per class."),
    out: Path = typer.Option(Path("manifest.csv"), "--out", "-o", help="Manifest CSV to write."),
    mapping: list[str] = typer.Option(None, "--map", metavar="NAME=CLASS",
                                      help="Map a folder name onto a class, or NAME=skip to leave it out. "
                                           "Repeat for several folders (default: folder names as they are)."),
    um_per_px: float = typer.Option(None, "--um-per-px", min=0.0, help="The crops' scale in micrometres per pixel "
                                    "(PBC: 0.0934), from the scanner or a stage micrometer; records the physical crop "
                                    "size the device will crop to (default: none: crops sized relative to each cell)."),
    scale_sample: int = typer.Option(300, "--scale-sample", min=0, help="Crops to measure the cell size on "
                                     "(0: do not measure)."),
    json_path: Path = JSON_OPTION,
) -> None:
    """Index a class-folder tree into a manifest: path, label, sha256, width, height.

    It also measures how large the white cell is in the crops and writes it, with the
    physical crop size when --um-per-px is given, to NAME.scale.json beside the manifest;
    `wbcedge train` reads it to choose how the device will crop cells.
    """
    out_console = _console_for(json_path)
    class_map = _parse_map(mapping)
    with _progress(out_console, "indexing", None) as advance:
        result = data.index_folder(folder, class_map, progress=advance)
    _print_problems(out_console, result.problems)
    if not result.records:
        fail(f"no usable images under {folder} (see the lines above): expected e.g. {folder}/neutrophil/*.jpg")
    data.write_manifest(result.records, out)
    counts = {c: 0 for c in CLASSES}
    for r in result.records:
        counts[r.label] += 1
    table = Table(title="Images per class")
    table.add_column("class")
    table.add_column("images", justify="right")
    for c, n in counts.items():
        table.add_row(c, str(n))
    table.add_row("[bold]all", f"[bold]{len(result.records)}")
    out_console.print(table)
    duplicates = data.duplicate_groups(result.records)
    conflicts = data.conflicting_groups(result.records)
    skipped = sum(1 for p in result.problems if p.action == "skipped")
    kept = sum(1 for p in result.problems if p.action.startswith("kept"))
    out_console.print(
        f"{len(result.problems)} line(s) above: {skipped} file(s) skipped, {kept} kept after conversion, "
        f"{len(result.problems) - skipped - kept} folder(s) empty or left out. {len(duplicates)} group(s) of "
        f"identical files, {len(conflicts)} with conflicting labels.", highlight=False)
    scale = _measure_scale(out_console, result.records, out, um_per_px, scale_sample)
    out_console.print(f"Indexed {folder}; wrote {out}. Next: wbcedge data split {out}", highlight=False)
    write_json(json_path, {
        "command": "index", "folder": str(folder), "manifest": str(out), "images": len(result.records),
        "counts": counts, "problems": [asdict(p) for p in result.problems],
        "duplicate_groups": len(duplicates), "conflicting_groups": len(conflicts), "scale": scale,
    })


@data_app.command("split", epilog=examples(
    "wbcedge data split runs/pbc/manifest.csv --test-per-class 100 --seed 0   # writes runs/pbc/manifest.split.csv",
    "wbcedge data split runs/mine/manifest.csv --test-fraction 0.2 --out runs/mine/split.csv"))
def split_cmd(
    manifest: Path = typer.Argument(..., help="Manifest written by `wbcedge data index`."),
    seed: int = typer.Option(0, "--seed", min=0, help="Same seed, same split."),
    test_per_class: int = typer.Option(None, "--test-per-class", min=0,
                                       help="Paper protocol: this many random test images per class "
                                            "(default: 100 unless --test-fraction is given)."),
    test_fraction: float = typer.Option(None, "--test-fraction", min=0.0, max=0.99,
                                        help="Fractional protocol: this share of each class goes to test "
                                             "(default: none: the paper protocol)."),
    val_fraction: float = typer.Option(0.2, "--val-fraction", min=0.0, max=0.99,
                                       help="Share of the non-test images that goes to val (paper: 80:20)."),
    out: Path = typer.Option(None, "--out", "-o", help="Split manifest to write; never the input "
                             "(default: MANIFEST's name with .split.csv, e.g. manifest.split.csv).", show_default=False),
    json_path: Path = JSON_OPTION,
) -> None:
    """Split a manifest into train/val/test; identical files always share a split.

    The input manifest is never overwritten: the split goes to --out, by default NAME.split.csv.
    """
    out_console = _console_for(json_path)
    if test_per_class is not None and test_fraction is not None:
        fail("give --test-per-class (paper protocol) or --test-fraction, not both")
    if test_per_class is None and test_fraction is None:
        test_per_class = 100
    out = out or split_path_for(manifest)
    if out.resolve() == manifest.resolve():
        fail(f"--out {out} is the input manifest: give another path, e.g. --out {split_path_for(manifest)}")
    records = data.read_manifest(manifest)
    excluded = data.split_records(records, seed=seed, test_per_class=test_per_class,
                                  test_fraction=test_fraction, val_fraction=val_fraction)
    data.write_manifest(records, out)
    copy_scale(manifest, out)
    _print_problems(out_console, excluded)
    counts = data.counts_by_split(records)
    protocol = (f"{test_per_class} test image(s) per class" if test_per_class is not None
                else f"{test_fraction:.0%} of each class to test")
    out_console.print(_counts_table(f"Split (seed {seed}; {protocol}; val {val_fraction:.0%} of the rest)", counts))
    out_console.print(f"Wrote {out}. Next: wbcedge data check {out}", highlight=False)
    write_json(json_path, {
        "command": "split", "manifest": str(out), "seed": seed, "test_per_class": test_per_class,
        "test_fraction": test_fraction, "val_fraction": val_fraction, "counts": counts,
        "excluded": [asdict(p) for p in excluded],
    })


@data_app.command("check", epilog=examples(
    "wbcedge data check runs/pbc/manifest.split.csv"))
def check_cmd(
    manifest: Path = typer.Argument(..., help="Manifest to check (after index, split or augment)."),
    json_path: Path = JSON_OPTION,
) -> None:
    """Re-read every file of a manifest and report counts, duplicates, conflicts, odd files and leaks.

    Exit codes: 0 all good; 1 the check ran and failed: a group of identical files (or
    an augmented copy and its source) straddles splits, or a listed file is missing,
    unreadable, changed or refused (e.g. a header claiming an absurd size); 2 the check
    could not run (no manifest, or not a readable manifest).
    """
    out_console = _console_for(json_path)
    records = data.read_manifest(manifest)
    with _progress(out_console, "reading", len(records)) as advance:
        result = data.check_records(records, progress=advance)

    out_console.print(_counts_table(f"{manifest}: {len(records)} rows", result.counts, result.augmented))
    if result.unsplit:
        out_console.print(f"{result.unsplit} row(s) have no split yet: run `wbcedge data split {manifest}`.",
                          highlight=False)

    out_console.print(f"\n[bold]Duplicate groups[/] (identical bytes): {len(result.duplicates)}, "
                      f"{len(result.conflicts)} with conflicting labels")
    conflicts_first = sorted(result.duplicates.items(), key=lambda kv: (kv[0] not in result.conflicts, kv[0]))
    for n, (digest, group) in enumerate(conflicts_first):
        if n >= MAX_LISTED and digest not in result.conflicts:
            out_console.print(f"  ... and {len(result.duplicates) - n} more (all in --json)", highlight=False)
            break
        note = "CONFLICTING LABELS" if digest in result.conflicts else "same label"
        members = " = ".join(f"{_show(r.path)} ({r.label}, {r.split or 'unsplit'})" for r in group)
        out_console.print(f"  {digest[:12]} {note}: {members}", markup=False, highlight=False, soft_wrap=True)

    out_console.print(f"\n[bold]Unusable files[/]: {len(result.broken)}")
    _print_problems(out_console, result.broken, indent="  ")
    out_console.print(f"\n[bold]Odd files[/] (non-RGB, 16-bit, tiny or huge; still used): {len(result.odd)}")
    _print_problems(out_console, result.odd, indent="  ")

    out_console.print(f"\n[bold]Groups in more than one split[/]: {len(result.straddling)}")
    for key, group in sorted(result.straddling.items()):
        members = ", ".join(f"{_show(r.path)} ({r.split})" for r in group if r.split in data.SPLITS)
        out_console.print(f"  {key[:12]}: {members}", markup=False, highlight=False, soft_wrap=True)

    if result.ok:
        out_console.print(f"\n[bold green]OK[/]: no group straddles splits; all {len(records)} files read "
                          f"as indexed.", highlight=False)
    else:
        reasons = []
        if result.straddling:
            reasons.append(f"{len(result.straddling)} group(s) straddle splits: re-run `wbcedge data split`, "
                           f"then `augment` again")
        if result.broken:
            reasons.append(f"{len(result.broken)} file(s) missing, unreadable or changed: fix them, or re-index")
        out_console.print("\n[bold red]FAILED[/]: " + "; ".join(reasons), highlight=False)
    write_json(json_path, {
        "command": "check", "manifest": str(manifest), "rows": len(records), "ok": result.ok,
        "counts": result.counts, "augmented": result.augmented, "unsplit": result.unsplit,
        "duplicate_groups": [_group_json(d, g) for d, g in sorted(result.duplicates.items())],
        "conflicting_groups": [_group_json(d, g) for d, g in sorted(result.conflicts.items())],
        "straddling_groups": [_group_json(k, g) for k, g in sorted(result.straddling.items())],
        "unusable": [asdict(p) for p in result.broken], "odd": [asdict(p) for p in result.odd],
    })
    if not result.ok:
        raise typer.Exit(1)


@data_app.command("augment", epilog=examples(
    "wbcedge data augment runs/pbc/manifest.split.csv --out runs/pbc/aug --per-class 4000 --seed 0"))
def augment_cmd(
    manifest: Path = typer.Argument(..., help="Split manifest (from `wbcedge data split`)."),
    out: Path = typer.Option(..., "--out", "-o", help="New folder for the augmented class folders and "
                                                     "their manifest.csv."),
    per_class: int = typer.Option(4000, "--per-class", min=1,
                                  help="Train images per class after augmentation, originals included (paper: 4000)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Same seed, byte-identical files."),
    json_path: Path = JSON_OPTION,
) -> None:
    """Balance every class of the train split to K images with augmented copies; val and test stay as they are.

    Each copy is rotated by +-5/10/15/90 degrees and cropped to leave no blank border,
    zoomed in by 5-20 % (aspect kept) and flipped at random, and records its source.
    """
    out_console = _console_for(json_path)
    records = data.read_manifest(manifest)
    train = [r for r in records if r.split == "train"]
    planned = sum(max(0, per_class - sum(1 for r in train if r.label == c)) for c in CLASSES
                  if any(r.label == c for r in train))
    with _progress(out_console, "augmenting", planned) as advance:
        result = data.augment_records(records, out, per_class=per_class, seed=seed, progress=advance)
    new_manifest = out / "manifest.csv"
    data.write_manifest(result.records, new_manifest)
    copy_scale(manifest, new_manifest)  # augmented copies are zoomed 5-20%: the originals' scale still holds
    _print_problems(out_console, result.problems)
    counts = data.counts_by_split(result.records)
    table = Table(title=f"Augmented train split (seed {seed}, {per_class} per class)")
    for col in ("class", "originals", "augmented", "train", "val", "test"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for c in CLASSES:
        s = result.per_class.get(c, {"originals": 0, "augmented": 0})
        table.add_row(c, str(s["originals"]), str(s["augmented"]), str(counts[c]["train"]),
                      str(counts[c]["val"]), str(counts[c]["test"]))
    out_console.print(table)
    made = sum(s["augmented"] for s in result.per_class.values())
    out_console.print(f"Wrote {made} augmented JPEGs under {out}/<class>/ and {new_manifest} "
                      f"(val/test rows unchanged). Next: wbcedge data check {new_manifest}", highlight=False)
    write_json(json_path, {
        "command": "augment", "manifest": str(new_manifest), "seed": seed, "per_class": per_class,
        "classes": result.per_class, "augmented": made, "problems": [asdict(p) for p in result.problems],
    })


# ---------------------------------------------------------------- helpers

def _measure_scale(out_console: Console, records: list[data.Record], manifest: Path, um_per_px: float | None,
                   sample: int) -> dict | None:
    """Measure the cell scale of the indexed crops into MANIFEST.scale.json and say what it means for the device."""
    from wbcedge.data.scale import write_scale
    from wbcedge.device.cell_scale import measure_cell_scale

    if sample == 0:
        if um_per_px:
            fail("--um-per-px needs the cell scale measured: drop --scale-sample 0")
        return None
    with _progress(out_console, "measuring cell size", min(sample, len(records))) as advance:
        try:
            scale = measure_cell_scale([r.path for r in records], um_per_px=um_per_px, max_images=sample,
                                       progress=advance)
        except ValueError as e:
            fail(str(e))
    path = write_scale(manifest, scale)
    if scale["cell_fraction"] is None:
        out_console.print(f"Cell size: no white cell found in {scale['images_measured']} crops; wrote {path}.",
                          highlight=False)
    elif scale["crop_um"]:
        out_console.print(f"Cell size: the white cell fills {100 * scale['cell_fraction']:.0f}% of the crop side "
                          f"(median of {scale['cells_found']}); crops are {scale['crop_um']:g} um wide at "
                          f"{um_per_px:g} um/px (cells {scale['cell_diameter_um']:g} um). The device will crop "
                          f"{scale['crop_um']:g} um around each cell when its profile gives um_per_px. Wrote {path}.",
                          highlight=False)
    else:
        out_console.print(f"Cell size: the white cell fills {100 * scale['cell_fraction']:.0f}% of the crop side "
                          f"(median of {scale['cells_found']}). No --um-per-px: the device will size each crop by "
                          f"its cell, which loses cell size as a clue (docs/model-card.md); give the crops' scale "
                          f"with --um-per-px for physical crops. Wrote {path}.", highlight=False)
    return scale


def split_path_for(manifest: Path) -> Path:
    """Where `data split MANIFEST` writes by default: manifest.csv -> manifest.split.csv, next to it."""
    return manifest.with_name(manifest.name.removesuffix(".csv") + ".split.csv")


def _console_for(json_path: Path | None) -> Console:
    """Human output goes to stdout, or to stderr when `--json -` claims stdout."""
    return err_console if json_path is not None and str(json_path) == "-" else console


def _parse_map(items: list[str] | None) -> dict[str, str]:
    mapping = {}
    for item in items or []:
        name, sep, target = item.partition("=")
        if not sep or not name.strip() or not target.strip():
            fail(f"--map '{item}' is not NAME=CLASS: write e.g. --map 'Segmented=neutrophil' or --map 'Junk=skip'")
        if target.strip().lower() != SKIP:
            try:
                normalize_class(target)
            except UnknownClassError:
                fail(f"--map '{item}': '{target}' is not a class. Known classes: {', '.join(CLASSES)} (or skip)")
        mapping[name.strip()] = target.strip()
    return mapping


@contextmanager
def _progress(out: Console, description: str, total: int | None) -> Iterator[Callable[..., None]]:
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    if total:
        columns.append(TimeRemainingColumn())
    with Progress(*columns, console=out, transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)


def _print_problems(out: Console, problems: list[data.Problem], indent: str = "") -> None:
    """One line per file: what is wrong with it and what was done."""
    for p in problems:
        paths = ", ".join(_show(display_name(path)) for path in p.path.split(", "))  # a group names several
        out.print(f"{indent}{paths}: {p.what} -> {p.action}", style="yellow",
                  markup=False, highlight=False, soft_wrap=True)


def _counts_table(title: str, counts: dict[str, dict[str, int]], augmented: dict[str, int] | None = None) -> Table:
    table = Table(title=title)
    columns = ["train", *(["of which augmented"] if augmented else []), "val", "test", "excluded"]
    table.add_column("class")
    for col in columns:
        table.add_column(col, justify="right")
    totals = {col: 0 for col in columns}
    for c, row in counts.items():
        cells = {**row, "of which augmented": (augmented or {}).get(c, 0)}
        for col in columns:
            totals[col] += cells[col]
        table.add_row(c, *(str(cells[col]) for col in columns))
    table.add_row("[bold]all", *(f"[bold]{totals[col]}" for col in columns))
    return table


def _group_json(key: str, group: list[data.Record]) -> dict:
    return {"key": key, "files": [{"path": r.path, "label": r.label, "split": r.split, "source": r.source}
                                  for r in group]}


def _show(path: str) -> str:
    """A path as short as it can be said: relative to the working folder when inside it."""
    rel = os.path.relpath(path) if os.path.isabs(path) else path
    return path if rel.startswith("..") else rel
