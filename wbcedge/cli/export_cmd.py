"""`wbcedge export`: run folder -> accuracy-gated bundle."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from wbcedge.cli import app
from wbcedge.cli.common import JSON_OPTION, console, examples, fail, print_error, write_json
from wbcedge.errors import InputFileMissingError


@app.command("export", rich_help_panel="On the training box", epilog=examples(
        "wbcedge export training/runs/default-edge --int8 --out runs/default-edge-bundle",
        "wbcedge export runs/my-run --config export/strict-clinical.toml"))
def export_cmd(
    run: Path = typer.Argument(..., help="A run folder from `wbcedge train`."),
    int8: bool = typer.Option(None, "--int8/--no-int8", help="Also full-integer int8 files, checked against the float model "
                              "(default: no, or the config's).", show_default=False),
    config: Path = typer.Option(None, "--config", "-c", help="Export settings (.toml), e.g. export/default.toml; flags override it "
                                "(default: none: the settings of export/default.toml)."),
    formats: str = typer.Option(None, "--format", help="Comma-separated: tflite, onnx (default tflite,onnx)."),
    float16: bool = typer.Option(None, "--float16", help="Also a float16-weights TFLite file (default: no).", show_default=False),
    calib: int = typer.Option(None, "--calib", help="Calibration images, class-stratified from the train split (default 300)."),
    calib_augmented: float = typer.Option(None, "--calib-augmented", help="Share of the calibration images shown under the "
                                          "run's training augmentation, 0-1 (default 0)."),
    max_drop: float = typer.Option(None, "--max-drop", help="Accuracy points a file may lose against float (default 1.0)."),
    max_class_drop: float = typer.Option(None, "--max-class-drop", help="Recall points any class may lose (default 3.0)."),
    activation_type: str = typer.Option(None, "--activation-type", help="ONNX int8 activations: uint8 or int8 (default uint8)."),
    threshold: float = typer.Option(None, "--threshold", help="Below this confidence a cell is 'unidentified' (default 0.6)."),
    data: Path = typer.Option(None, "--data", help="Split manifest (default: the one the run trained on)."),
    out: Path = typer.Option(None, "--out", "-o", help="Bundle folder (default: RUN-bundle)."),
    archive: bool = typer.Option(None, "--archive", help="Also write BUNDLE.tar.gz (default: no).", show_default=False),
    force: bool = typer.Option(False, "--force", help="Mark the bundle deployable even over budget (the report keeps the failure)."),
    json_path: Path = JSON_OPTION,
) -> None:
    """Export float and (with --int8) int8 TFLite/ONNX files into one verified bundle."""
    from dataclasses import replace

    from wbcedge.train.export import ExportOptions, GateFailed, check_bundle_output, export

    opts = ExportOptions(int8=False)
    if config is not None:
        try:
            opts = ExportOptions.load(config)
        except (OSError, ValueError) as e:
            fail(f"cannot read export config {config}: {e}")
    given = dict(int8=int8, float16=float16, calib=calib, calib_augmented=calib_augmented, max_drop=max_drop, max_class_drop=max_class_drop,
                 activation_type=activation_type, threshold=threshold, archive=archive,
                 formats=tuple(f.strip() for f in formats.split(",") if f.strip()) if formats is not None else None,
                 data=str(data) if data else None)
    opts = replace(opts, force=force, **{k: v for k, v in given.items() if v is not None})
    bad = set(opts.formats) - {"tflite", "onnx"}
    if bad or not opts.formats:
        fail(f"--format {','.join(opts.formats)!r}: choose from tflite, onnx (comma-separated)")
    if not 0.0 <= opts.calib_augmented <= 1.0:
        fail(f"--calib-augmented {opts.calib_augmented}: a share of the calibration images, from 0 to 1")
    if opts.activation_type not in ("uint8", "int8"):
        fail(f"--activation-type {opts.activation_type!r}: choose uint8 or int8")
    out = out or run.with_name(run.name + "-bundle")
    _check_run_folder(run)
    check_bundle_output(out)
    failed = None
    try:
        report = export(run, out, opts, progress=lambda m: console.print(m, highlight=False))
    except GateFailed as e:
        failed, report = e, e.report
    console.print(_table(report))
    console.print(f"bundle: {out}" + (" (NOT deployable)" if failed else "") + f"; report: {out / 'report.md'}")
    write_json(json_path, report)
    if failed:
        print_error(str(failed))
        raise typer.Exit(1)


RUN_FILES = ("model.keras", "labels.json", "preprocess.json", "config.json")
"""What export reads from a training run folder (manifest.sha256 and the histories are optional)."""


def _check_run_folder(run: Path) -> None:
    """Refuse, before TensorFlow loads, a RUN that is not a whole training run folder."""
    if not run.is_dir():
        raise InputFileMissingError(f"{run}: no such run folder; give the folder `wbcedge train --out` wrote")
    missing = [name for name in RUN_FILES if not (run / name).is_file()]
    if missing:
        raise InputFileMissingError(f"{run} is not a complete training run folder (made by `wbcedge train`): "
                                    f"missing {', '.join(missing)}; give the whole folder `wbcedge train --out` wrote")


def _table(report: dict) -> Table:
    table = Table(title=f"Export check on {report['test_images']} held-out images "
                        f"(float {100 * report['float']['accuracy']:.2f}%)")
    for col in ("file", "size", "accuracy [95% CI]", "drop", "worst class drop", "agree", "verdict"):
        table.add_column(col, justify="left" if col in ("file", "verdict") else "right")
    for e in report["files"]:
        worst = max(e["recall_drop_pp"].items(), key=lambda kv: kv[1])
        lo, hi = e["accuracy_ci95"]
        table.add_row(e["file"], f"{e['size_bytes'] / 1e6:.2f} MB",
                      f"{100 * e['accuracy']:.2f}% [{100 * lo:.1f}, {100 * hi:.1f}]", f"{e['accuracy_drop_pp']:+.2f}",
                      f"{worst[0][:4]} {worst[1]:+.2f}", f"{100 * e['agreement_with_float']:.1f}%",
                      "[green]ok[/]" if e["within_budget"] else
                      "[red]BELOW FLOOR[/]" if any("floor" in f for f in e["budget_failures"]) else "[red]OVER BUDGET[/]")
    return table
