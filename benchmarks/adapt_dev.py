"""Choose the adapt recipe on the site's LABELLED cells only (never on the held-out check).

    PYTHONPATH=$PWD nice -n 10 python benchmarks/adapt_dev.py build/adapt-bccd/labelled \
        --unlabelled build/adapt-bccd/unlabelled --configs '[{}, {"learning_rate": 5e-4}]'

For each candidate setting and each split seed, the labelled cells are split as `wbcedge adapt
--holdout 0.3` splits them; the model adapts on the rest and is scored (float) on that part.
This is what a lab can do with its own labels; the BCCD held-out cells are not read.
The figures in docs/adapt.md were made before training moved to `wbcedge.train.augment`
(then: hue/saturation/brightness/contrast/blur plus adapt's own resolution and zoom); today
`augment` overrides take `AugmentConfig` options (preset "none") plus `resolution`.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from wbcedge.labels import class_indices
from wbcedge.train.adapt import (AdaptConfig, DEFAULT_RUN, _bn_cells, fine_tune_soup, reestimate_batchnorm,
                                 replay_records)
from wbcedge.train.adapt_site import plan_site, site_cut, unlabelled_inputs
from wbcedge.train.bn_adapt import has_batchnorm
from wbcedge.train.run_folder import load_run


def dihedral_views(x: np.ndarray) -> list[np.ndarray]:
    """The 8 quarter turns and mirror images of a batch of NHWC images."""
    return [np.rot90(m, k, axes=(1, 2)) for m in (x, x[:, :, ::-1]) for k in range(4)]


def freeze_below(prefix: str) -> None:
    """Make adapt's fine-tuning also freeze every layer before the first one named `prefix...` (an
    experiment on the labelled cells, not an adapt option: docs/adapt.md, fifth session)."""
    import keras

    from wbcedge.train import adapt
    from wbcedge.train.models.registry import all_layers

    freeze_batchnorm = adapt.freeze_batchnorm

    def freeze(model) -> None:
        freeze_batchnorm(model)
        layers = [layer for layer in all_layers(model) if not isinstance(layer, keras.Model)]
        first = next((i for i, layer in enumerate(layers) if layer.name.startswith(prefix)), None)
        if first is None:
            raise SystemExit(f"--train-from {prefix}: no layer of the parent is named so (e.g. block_13, dense64)")
        for layer in layers[:first]:
            layer.trainable = False

    adapt.freeze_batchnorm = freeze


def at_input_size(predictor, size: int):
    """The parent rebuilt at `size` px with its own weights (a convolutional backbone and global pooling take any
    size) and a spec that cuts its inputs at that size: the same cell, more of its pixels."""
    from wbcedge.train.models.registry import ModelOptions, create_model
    from wbcedge.train.run_folder import Predictor, _KerasEngine

    spec = replace(predictor.spec, input_size=size)
    opts = json.loads((predictor.path / "config.json").read_text())["model_options"]   # ModelOptions.to_dict()
    model = create_model(options=ModelOptions(**{**opts, "weights": "none", "preprocess": spec}))
    model.set_weights(predictor.keras_model.get_weights())
    return Predictor(predictor.path, spec, predictor.classes, _KerasEngine(model), name=f"keras at {size} px")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("--unlabelled", type=Path)
    ap.add_argument("--configs", default="[{}]", help="JSON list of AdaptConfig overrides")
    ap.add_argument("--splits", type=int, default=2)
    ap.add_argument("--holdout", type=float, default=0.3)
    ap.add_argument("--run", type=Path, default=DEFAULT_RUN, help="the parent run folder (default: the built-in model's)")
    ap.add_argument("--views", action="store_true",
                    help="also score each model on the mean of its probabilities over the 8 turned/mirrored views")
    ap.add_argument("--train-from", metavar="LAYER",
                    help="fine-tune only from the first layer whose name starts with LAYER on (e.g. block_13): the "
                         "layers before it keep the parent's weights (BatchNorm statistics are re-estimated as usual)")
    ap.add_argument("--input-size", type=int, metavar="PX",
                    help="rebuild the parent at this input size (its weights kept) and cut the site's cells at it")
    args = ap.parse_args()
    if args.train_from:
        freeze_below(args.train_from)
    predictor = load_run(args.run)
    if args.input_size:
        predictor = at_input_size(predictor, args.input_size)
    model, spec = predictor.keras_model, predictor.spec
    initial = model.get_weights()
    for overrides in json.loads(args.configs):
        if "augment" in overrides:
            overrides["augment"] = {**AdaptConfig().augment, **overrides["augment"]}
        cfg = replace(AdaptConfig(), **overrides)
        replay = replay_records(args.run, cfg.replay_per_class, cfg.seed)
        accs, bn_accs, epochs, factors, view_accs, t0 = [], [], [], [], [], time.time()
        for split in range(args.splits):
            plan = plan_site(args.data, args.holdout, split, None, cfg.val_share)
            cut = site_cut(cfg.crop, spec, plan.fit + plan.val, cfg.cell_fraction)   # as adapt cuts this split's crops
            factors.append(cut.recut)
            x_unl = unlabelled_inputs(args.unlabelled, cut.spec, recut=cut.recut)
            x_rep, y_rep = cut.parent_cell_inputs(replay), class_indices(r.label for r in replay)
            x_fit, y_fit = cut.inputs(plan.fit), class_indices(r.label for r in plan.fit)
            x_val, y_val = cut.inputs(plan.val), class_indices(r.label for r in plan.val)
            x_test, y_test = cut.inputs(plan.test), class_indices(r.label for r in plan.test)
            model.set_weights(initial)
            if has_batchnorm(model):
                reestimate_batchnorm(model, _bn_cells(x_fit, x_val, x_unl, cfg), cfg.bn_chunk)
            bn_accs.append(float((predictor.predict_many(x_test).argmax(1) == y_test).mean()))
            history = fine_tune_soup(model, model.get_weights(), (x_fit, y_fit, x_val, y_val), (x_rep, y_rep), cfg,
                                     lambda m: None, cut.spec.cell_fraction)
            last = history if cfg.soup <= 1 else history[0]
            epochs.append((len(last), round(last[-1].get("accuracy", float("nan")), 3)))
            accs.append(float((predictor.predict_many(x_test).argmax(1) == y_test).mean()))
            if args.views:   # the same model, its probabilities averaged over the cell's turned and mirrored views
                probs = np.mean([predictor.predict_many(np.ascontiguousarray(v)) for v in dihedral_views(x_test)], axis=0)
                view_accs.append(float((probs.argmax(1) == y_test).mean()))
        print(json.dumps({"run": str(args.run), "config": overrides, "input_size": spec.input_size, "dev_accuracy": accs, "mean": float(np.mean(accs)),
                          "batchnorm_only": bn_accs, "epochs_and_last_train_accuracy": epochs,
                          "recut": factors, **({"eight_views": view_accs} if args.views else {}), "seconds": round(time.time() - t0)}),
              flush=True)


if __name__ == "__main__":
    main()
