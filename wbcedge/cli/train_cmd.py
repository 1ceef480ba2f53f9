"""`wbcedge train`: a zoo model from a split manifest into a run folder."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer
from rich.table import Table

from wbcedge.cli import app
from wbcedge.cli.common import JSON_OPTION, console, examples, fail, write_json


@app.command("train", rich_help_panel="On the training box", epilog=examples(
        "wbcedge train --config training/default-edge.toml --out runs/default-edge",
        "wbcedge train runs/pbc/aug/manifest.csv --model mobilenet_v2 --alpha 0.35 --epochs 20 --out runs/my-run",
        "wbcedge train --config training/paper-resnet50.toml --out runs/paper-resnet50 --weights imagenet"))
def train_cmd(
    manifest: Path = typer.Argument(None, help="Split manifest (from `wbcedge data split`); or give --config."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder to write (rerun the same command to resume an interrupted run)."),
    config: Path = typer.Option(None, "--config", "-c", help="A training config (.toml), e.g. training/default-edge.toml or "
                                "training/paper-resnet50.toml; flags override it (default: none: the built-in defaults)."),
    model: str = typer.Option(None, "--model", help="residual_cnn, mobilenet_v2, inception_v3, xception, resnet50 "
                             "(default: mobilenet_v2, or the config's)."),
    input_size: int = typer.Option(None, "--input-size", help="Input side in pixels (paper: 224) (default: 128, or the config's)."),
    alpha: float = typer.Option(None, "--alpha", help="Width multiplier (mobilenet_v2) (default: 1.0, or the config's)."),
    weights: str = typer.Option(None, "--weights", help="imagenet, none, or a weights file (default: none, or the config's)."),
    weights_fallback: bool = typer.Option(False, "--weights-fallback",
                                          help="If ImageNet weights cannot be loaded, train from scratch instead of failing."),
    epochs: int = typer.Option(None, "--epochs", help="Epochs to train, in all (default: 20, or the config's)."),
    frozen_epochs: int = typer.Option(None, "--frozen-epochs", help="Transfer learning: epochs with the backbone frozen "
                                       "(default: 0, or the config's)."),
    batch_size: int = typer.Option(None, "--batch-size", help="Images per step (default: 64, or the config's)."),
    learning_rate: float = typer.Option(None, "--lr", help="Peak learning rate (cosine decay) "
                                        "(default: 0.002, or the config's)."),
    seed: int = typer.Option(None, "--seed", help="Random seed (default: 0, or the config's)."),
    max_train_images: int = typer.Option(None, "--max-train-images", help="Use a subset of the train split (quick checks) "
                                          "(default: all)."),
    json_path: Path = JSON_OPTION,
) -> None:
    """Train a model; writes model.keras, preprocess.json, history.csv and the run's provenance."""
    from wbcedge.train.training import TrainConfig, train

    try:
        cfg = TrainConfig.load(config) if config else TrainConfig()
    except (OSError, ValueError) as e:
        fail(f"cannot read config {config}: {e}")
    overrides = {k: v for k, v in dict(
        manifest=str(manifest) if manifest else None, model=model, alpha=alpha,
        weights=weights, epochs=epochs, frozen_epochs=frozen_epochs, batch_size=batch_size,
        learning_rate=learning_rate, seed=seed, max_train_images=max_train_images).items() if v is not None}
    if weights_fallback:
        overrides["weights_fallback"] = True
    cfg = replace(cfg, **overrides)
    if input_size is not None:
        cfg = cfg.with_input_size(input_size)
    if not cfg.manifest:
        fail("no manifest: give MANIFEST (from `wbcedge data split`) or a --config that names one")
    summary = train(cfg, out, progress=lambda m: console.print(m, highlight=False))
    table = Table(title=f"Trained {cfg.model}")
    table.add_column("run folder")
    table.add_column("parameters", justify="right")
    table.add_column("train / val images", justify="right")
    table.add_column("best val accuracy", justify="right")
    table.add_row(str(out), f"{summary['params']:,}", f"{summary['train_images']} / {summary['val_images']}",
                  f"{100 * summary['best_val_accuracy']:.2f}%")
    console.print(table)
    console.print(f"next: wbcedge evaluate {out} --data {cfg.manifest}   then   wbcedge export {out} --int8")
    write_json(json_path, summary)
