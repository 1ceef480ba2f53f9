"""`wbcedge adapt`: a trained model plus a few labelled cells of a lab's microscope -> its own gated bundle."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import typer
from rich.table import Table

from wbcedge.cli import app
from wbcedge.cli.common import JSON_OPTION, console, err_console, examples, write_json


@app.command("adapt", rich_help_panel="On the training box", epilog=examples(
    "wbcedge adapt --data site-cells --out site-bundle",
    "wbcedge adapt training/runs/robust-edge-step1-wise --data site-cells --unlabelled runs/session-20261201-101500 "
    "--out site-bundle --curve"))
def adapt_cmd(
    run: Path = typer.Argument(None, help="Run folder (or a bundle naming its source run) to start from; "
                                          "default: the built-in model's run, training/runs/robust-edge-step1-wise."),
    data: Path = typer.Option(..., "--data", help="The site's labelled cells: DIR/<class>/*.jpg or a data manifest; "
                                                   "any subset of the five classes."),
    out: Path = typer.Option(..., "--out", "-o", help="Bundle folder to write (the adapted run goes to OUT-run/)."),
    unlabelled: Path = typer.Option(None, "--unlabelled", help="Unlabelled site cells or frames (frames are cut by "
                                                               "the locator) for the normalisation statistics (default: none, the labelled cells only)."),
    test: Path = typer.Option(None, "--test", help="Held-out labelled cells given separately (then --holdout is "
                                                   "not used): the gate's test set (default: split off --data)."),
    holdout: float = typer.Option(None, "--holdout", help="Share of each class's labelled cells kept for the check "
                                                          "(default 0.3)."),
    config: Path = typer.Option(None, "--config", "-c", help="Adapt settings (.toml or .json): epochs, "
                                                             "learning_rate, augment, ... (default: wbcedge.train.adapt.AdaptConfig)."),
    seed: int = typer.Option(None, "--seed", help="Seed for the split, augmentation and training (default 0)."),
    epochs: int = typer.Option(None, "--epochs", help="Most fine-tuning epochs (default 40; early stopping)."),
    curve: bool = typer.Option(False, "--curve", help="Also a learning curve (5, 10, 20, all cells per class, two "
                                                      "seeds), each point the bundle's own recipe: costs one soup "
                                                      "of fine-tunes per point (about 11 min on 2 cores)."),
    json_path: Path = JSON_OPTION,
) -> None:
    """Adapt a model to your microscope: BatchNorm statistics, fine-tuning, gated int8 export, a new bundle."""
    from wbcedge.train.adapt import AdaptConfig, adapt

    cfg = AdaptConfig.load(config) if config else AdaptConfig()
    cfg = replace(cfg, **{k: v for k, v in {"holdout": holdout, "seed": seed, "epochs": epochs}.items() if v is not None})
    if curve:
        cfg = replace(cfg, curve=True)
    # A spinner on a terminal; piped or logged output gets each line as it happens (rich holds
    # printed lines back while a status is live on a non-terminal).
    status = console.status("adapting", spinner="dots") if console.is_terminal else nullcontext()
    with status:
        def progress(message: str) -> None:
            console.print(message, highlight=False)
            if console.is_terminal:
                status.update(message.strip()[:100])
        report = adapt(run, data, out, cfg, unlabelled=unlabelled, test=test, progress=progress)
    console.print(_table(report))
    for step in report["next_steps"]:
        console.print(f"- {step}", highlight=False)
    console.print(f"bundle: {out}" + ("" if report["deployable"] else " (NOT deployable)")
                  + f"; report: {out / 'adapt-report.md'}")
    write_json(json_path, report)
    if not report["deployable"]:
        err_console.print(f"[bold red]error:[/] {report['refusal']}", highlight=False)
        raise typer.Exit(1)
    console.print(f"next: wbcedge run --bundle {out}")


def _table(report: dict) -> Table:
    held = report["held_out"]
    table = Table(title=f"Held-out site cells ({held['parent']['n']})")
    table.add_column("step")
    table.add_column("accuracy [95% CI]", justify="right")
    from wbcedge.train.adapt_report import STAGE_NAMES
    for key, label in STAGE_NAMES.items():
        lo, hi = held[key]["accuracy_ci95"]
        table.add_row(label, f"{100 * held[key]['accuracy']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]")
    m = held["mcnemar_parent_vs_adapted"]
    table.caption = f"McNemar parent vs adapted: p = {m['p_value']:.3g} ({m['better']})"
    d = held.get("differential")
    if d:
        table.caption += (f"\ndifferential count of these cells, largest error: parent {d['parent_max_error_pp']:.1f} "
                          f"points, adapted {d['adapted_int8_max_error_pp']:.1f}"
                          + (f", adapted for these cells' mix {d['adapted_int8_mix_max_error_pp']:.1f}"
                             if "adapted_int8_mix_max_error_pp" in d else "") + " (adapt-report.md)")
    return table
