"""BatchNorm statistics re-estimated on a target microscope's unlabelled cells (AdaBN).

A BatchNorm layer stores the mean and variance of its inputs over the training images;
on another microscope those are wrong and the network's features drift. Recomputing them
on that microscope's own cells (no labels) is the cheapest adaptation there is: weights
stay as trained, only the stored statistics change. The result exports like any model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from wbcedge.errors import InputDataError


def has_batchnorm(model) -> bool:
    """Whether `model` stores BatchNorm statistics (a GroupNorm model normalises each cell by itself)."""
    import keras

    from wbcedge.train.models.registry import all_layers

    return any(isinstance(layer, keras.layers.BatchNormalization) for layer in all_layers(model))


def reestimate_batchnorm(model, inputs: np.ndarray, batch_size: int = 64):
    """Set every BatchNormalization's moving mean and variance to the average over `inputs`
    (uint8 or float model inputs, N x S x S x 3) of its per-batch statistics; returns `model`."""
    import keras

    from wbcedge.train.models.registry import all_layers

    if len(inputs) < 2:
        raise InputDataError("re-estimating BatchNorm needs at least 2 target cells (use tens to hundreds)")
    bns = [layer for layer in all_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]
    if not bns:
        raise InputDataError(f"{model.name} has no BatchNormalization layer to re-estimate")
    dropouts = [layer for layer in all_layers(model) if isinstance(layer, keras.layers.Dropout)]
    saved = [(layer.momentum, layer.trainable) for layer in bns], [layer.rate for layer in dropouts]
    for layer in dropouts:
        layer.rate = 0.0  # training mode for BatchNorm only: no dropout noise in the statistics
    x = np.asarray(inputs, np.float32)
    starts = list(range(0, len(x) - 1, batch_size))
    try:
        for k, start in enumerate(starts):
            for layer in bns:  # a running average over batches: batch k weighs 1/(k+1)
                layer.trainable = True
                layer.momentum = k / (k + 1)
            model(x[start:start + batch_size], training=True)
    finally:
        for layer, (momentum, trainable) in zip(bns, saved[0]):
            layer.momentum, layer.trainable = momentum, trainable
        for layer, rate in zip(dropouts, saved[1]):
            layer.rate = rate
    return model


def adapt_run(run_dir: Path, inputs: np.ndarray, out: Path, note: str) -> Path:
    """A copy of a run folder whose model has its BatchNorm statistics re-estimated on `inputs`
    (saved without optimiser state); `note` says on what, in `adapted.json`."""
    from wbcedge.train.run_folder import load_run

    run_dir = Path(run_dir)
    model = reestimate_batchnorm(load_run(run_dir).keras_model, inputs)
    return write_derived_run(run_dir, out, model, "adapted.json",
                             {"from": str(run_dir), "batchnorm_reestimated_on": note, "cells": int(len(inputs))})


def write_derived_run(source: Path, out: Path, model, note_file: str, note: dict) -> Path:
    """`out` as a run folder: `source`'s files (config, spec, labels, provenance) with `model` in place of
    its model (saved without optimiser state) and `note_file` saying how it was derived."""
    import shutil

    source, out = Path(source), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for f in source.iterdir():
        if f.is_file() and f.name != "model.keras":
            shutil.copy(f, out / f.name)
    save_without_optimizer(model, out / "model.keras")
    (out / note_file).write_text(json.dumps(note, indent=2) + "\n")
    return out


def save_without_optimizer(model, path: Path) -> None:
    """Save a model for inference and export only (a third of the file size of a checkpoint)."""

    clean = model.__class__.from_config(model.get_config())  # uncompiled: no optimiser (clone_model keeps it)
    clean.set_weights(model.get_weights())
    clean.save(path)


def main(argv: list[str] | None = None) -> int:
    """python -m wbcedge.train.bn_adapt RUN --out DIR [--manifest M --split train] : re-estimate on a split."""
    import argparse

    from wbcedge.data import read_manifest
    from wbcedge.preprocess import PreprocessSpec, load_inputs

    ap = argparse.ArgumentParser(description="BatchNorm statistics of a run re-estimated on a manifest split")
    ap.add_argument("run", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--manifest", type=Path, required=True)
    ap.add_argument("--split", default="train")
    ap.add_argument("--max-images", type=int, default=2000)
    args = ap.parse_args(argv)
    records = [r for r in read_manifest(args.manifest) if r.split == args.split]
    rng = np.random.default_rng(0)
    records = [records[i] for i in sorted(rng.permutation(len(records))[:args.max_images])]
    inputs = load_inputs([r.path for r in records], PreprocessSpec.load(args.run))
    adapt_run(args.run, inputs, args.out, f"{args.manifest} split {args.split} ({len(records)} crops, no augmentation)")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
