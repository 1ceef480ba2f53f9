"""`wbcedge adapt`: make a trained model a lab's own from a few labelled cells of its microscope.

    1. re-estimate the BatchNorm statistics on the site's cells (labelled and unlabelled):
       the normalisation a model learnt on another microscope is the main cause of its collapse
    2. fine-tune the whole network (BatchNorm frozen at the site's statistics) on the labelled
       cells, with the training augmentation plus resolution and scale jitter, class weighting,
       a few of the parent's own training cells replayed against forgetting, and early stopping
       on a validation part of the labelled cells
    3. export int8 TFLite + ONNX through the export accuracy gate (`wbcedge.train.export`), whose
       test set is the site's held-out labelled cells (never trained or selected on); the
       parent's own test set is scored too, to report forgetting
    4. a bundle whose manifest records the parent bundle's hash, the site data's hash and the
       per-class counts, marked not deployable unless it beats the parent on the held-out cells

The adapted run folder (`OUT-run/`) keeps the Keras model, the site manifest and the history.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from wbcedge.bundle import DEFAULT_BUNDLE, MANIFEST, load_bundle, write_manifest
from wbcedge.data.manifest import Record, read_manifest
from wbcedge.data.manifest import write_manifest as write_data_manifest
from wbcedge.errors import InputDataError, OutputFolderError
from wbcedge.labels import CLASSES, class_indices
from wbcedge.provenance import file_sha256 as sha256_of
from wbcedge.train.adapt_site import (
    CROP_POLICIES,
    SiteCut,
    SitePlan,
    plan_site,
    site_cut,
    site_inputs,
    unlabelled_inputs,
)
from wbcedge.train.bn_adapt import has_batchnorm, reestimate_batchnorm
from wbcedge.train.interpolate import average_weights

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

DEFAULT_RUN = Path(__file__).resolve().parents[2] / "training" / "runs" / "robust-edge-step1-wise"  # the built-in bundle's


@dataclass
class AdaptConfig:
    holdout: float = 0.3              # share of each class's labelled cells kept for the check
    val_share: float = 0.2            # of the rest: the part that stops fine-tuning early
    epochs: int = 40
    batch_size: int = 8
    learning_rate: float = 1e-4       # Adam; Chossegros et al. used 7e-5 with batch 5 (1e-3 forgot, see docs/adapt.md)
    patience: int = 10                # epochs without a lower validation loss before stopping
    min_epochs: int = 15              # early stopping watches only from this epoch on (a few validation cells are noisy)
    # Quarter turns and mirror images only: with colour, blur, resolution and scale jitter the
    # model could not fit 50 cells in 40 epochs (train accuracy 65-68%) and did no better on
    # the labelled dev splits (benchmarks/adapt_dev.py, docs/adapt.md). Any option of
    # wbcedge.train.augment.AugmentConfig (over its "none" preset) can be switched on in
    # --config, plus resolution (down to this share of the side and back).
    augment: dict = field(default_factory=lambda: dict(flips=True, rot90=True))
    # Fine-tunes averaged into one model (a model soup, Wortsman et al., ICML 2022): the same fit and
    # validation cells, each member with its own seed (its shuffles, augmentation and dropout), so no
    # single run's early stop decides the result; costs one fine-tune per member. The validation cells
    # stay unseen by every member, as the export's temperature and shift thresholds need (until
    # 2026-12-02 members k > 0 drew theirs anew and trained on the others': docs/adapt.md).
    # Chosen on the BCCD labelled cells only (benchmarks/adapt_dev.py, 4 splits of 20 dev cells):
    # 67.5% with 3 members against 63.8% with one, at three times the fine-tuning time.
    soup: int = 3
    replay_per_class: int = 10        # the parent's own training cells mixed in, per class (0 = none)
    replay_weight: float = 0.3        # their loss weight against the site's cells
    bn_max_cells: int = 512           # site cells used for the BatchNorm statistics
    bn_chunk: int = 64
    calib: int = 300                  # int8 calibration: site cells first, then replayed cells
    threshold: float | None = None    # unidentified below this confidence (default: the parent bundle's)
    max_drop: float = 1.0             # export gate budget (widened to one held-out cell when that is more)
    max_class_drop: float = 3.0
    # The export's absolute floors (None: export/default.toml's, 80% accuracy and 50% recall per
    # class). Lowering them is how a lab accepts a weaker model knowingly; the report keeps the values.
    min_accuracy: float | None = None
    min_class_recall: float | None = None
    formats: tuple[str, ...] = ("tflite", "onnx")
    # "cell": every crop is sized to its own located cell (the bundle's spec loses crop_um, so the
    # runner sizes each crop to the located cell's box) and the site's crops are re-cut that way
    # first (`recrop.cell_sized_crops`). "site": one re-cut factor for all the site's crops, measured
    # on its fit and validation cells (the bundle's crop_um x that factor; `adapt_site.site_cut`).
    # "parent": the parent's crop policy, the site's crops as given.
    # Chosen on BCCD's labelled cells only (benchmarks/adapt_dev.py, 6 splits of 20 dev cells, crops
    # as a session records them): 78.3% against 66.7%, never worse on a split. It gives up the size
    # cue between cell types, which the fine-tuning on the site's cells has to learn back.
    crop: str = "cell"
    # crop = "cell" only: the share of the crop side each located cell is made to fill (None: the
    # parent's spec.cell_fraction, 0.44 for the built-in model); the adapted bundle's spec keeps it.
    cell_fraction: float | None = None
    forgetting: bool = True           # score the parent's own test set (when its images are here)
    curve: bool = False               # learning curve (costs one fine-tuning per point)
    curve_sizes: tuple[int, ...] = (5, 10, 20, 0)   # labelled cells per class; 0 = all
    curve_seeds: int = 2
    seed: int = 0

    @classmethod
    def load(cls, path: Path) -> AdaptConfig:
        import tomllib

        path = Path(path)
        try:
            data = tomllib.loads(path.read_text()) if path.suffix == ".toml" else json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise InputDataError(f"cannot read adapt config {path}: {e}") from None
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise InputDataError(f"{path}: unknown adapt options {sorted(unknown)}; known: "
                                 f"{sorted(cls.__dataclass_fields__)}")
        for key in ("curve_sizes", "formats"):
            if key in data:
                data[key] = tuple(data[key])
        try:
            return cls(**data)
        except InputDataError as e:
            raise InputDataError(f"{path}: {e}") from None

    def __post_init__(self) -> None:
        """The crop settings checked wherever a config is made (a file, the CLI, a benchmark's overrides)."""
        if self.crop not in CROP_POLICIES:
            raise InputDataError(f"crop = {self.crop!r}; choose one of {', '.join(CROP_POLICIES)}")
        fraction = self.cell_fraction
        number = isinstance(fraction, (int, float)) and not isinstance(fraction, bool)
        if fraction is not None and (self.crop != "cell" or not number or not 0.2 <= fraction <= 0.9):
            raise InputDataError(f"cell_fraction = {fraction!r}; it sizes cell-sized crops (crop = \"cell\", the "
                                 "default) and must be a share of the crop side from 0.2 to 0.9")


@dataclass
class Parent:
    run_dir: Path
    bundle: Path | None               # the bundle exported from this run, if known
    bundle_sha256: str | None         # sha256 of that bundle's manifest.json
    threshold: float


def resolve_parent(source: Path | None) -> Parent:
    """The run folder to start from: a run folder, or a bundle whose manifest names its source run."""
    from wbcedge.train.run_folder import is_run_folder

    source = Path(source) if source is not None else DEFAULT_RUN
    if is_run_folder(source):
        bundle = _bundle_of_run(source)
        return Parent(source, bundle, sha256_of(bundle / MANIFEST) if bundle else None,
                      load_bundle(bundle).threshold if bundle else 0.6)
    if (source / MANIFEST).is_file() or source.is_file():
        b = load_bundle(source)
        name = b.manifest.get("source_run")
        if name:
            for candidate in (Path(name), b.path.parent / name, DEFAULT_RUN.parent / Path(name).name):
                if is_run_folder(candidate):
                    return Parent(candidate, b.path, sha256_of(b.path / MANIFEST), b.threshold)
        raise InputDataError(f"{source} is a bundle, but its source run {name!r} is not here; adapt needs the "
                             "float model: give the run folder it was exported from")
    raise InputDataError(f"{source}: neither a run folder (model.keras) nor a bundle; give the run folder of the "
                         f"model to adapt (default {DEFAULT_RUN})")


def _bundle_of_run(run_dir: Path) -> Path | None:
    for candidate in (DEFAULT_BUNDLE, run_dir.with_name(run_dir.name + "-bundle")):
        try:
            m = json.loads((candidate / MANIFEST).read_text())
        except (OSError, ValueError):
            continue
        if m.get("source_run") == run_dir.name:
            return candidate
    return None


# ---------------------------------------------------------------- the steps

def freeze_batchnorm(model) -> None:
    """BatchNorm layers keep the site's statistics while the rest fine-tunes (batches of a few cells)."""
    import keras

    from wbcedge.train.models.registry import all_layers

    for layer in all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def _augment(tf, cfg: dict, cell_fraction: float | None):
    """`augment(x, y, w, seed)`: the training augmentation (`wbcedge.train.augment`, preset "none"
    with `cfg`'s options switched on), plus `resolution`: down to that share of the side and back."""
    from wbcedge.train.augment import AugmentConfig, make_augment

    options = {k: v for k, v in cfg.items() if k != "resolution"}
    base = make_augment(AugmentConfig.from_dict(options, "none"), cell_fraction)
    resolution = float(cfg.get("resolution", 0.0))

    def augment(x, y, w, seed):
        x = base(x, seed)
        if resolution:
            size = tf.shape(x)[1]
            share = tf.random.stateless_uniform([], tf.cast(seed, tf.int64) + 7, resolution, 1.0)
            side = tf.cast(tf.round(tf.cast(size, tf.float32) * share), tf.int32)
            x = tf.image.resize(tf.image.resize(x, [side, side], antialias=True), [size, size])
        return x, y, w
    return augment


def fine_tune(model, x_fit, y_fit, w_fit, x_val, y_val, cfg: AdaptConfig, seed: int, progress=print,
              cell_fraction: float | None = None) -> list[dict]:
    """Fine-tune in place with early stopping on the validation cells; returns the per-epoch history."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()   # the same seed gives the same model (on one machine)
    reseed_layers(model, seed)
    freeze_batchnorm(model)
    step_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    ds = (tf.data.Dataset.from_tensor_slices((x_fit, y_fit, w_fit.astype(np.float32)))
          .shuffle(len(x_fit), seed=seed, reshuffle_each_iteration=True)
          .batch(cfg.batch_size))
    ds = (tf.data.Dataset.zip((ds, step_seeds))
          .map(lambda xyw, s: (tf.cast(xyw[0], tf.float32), xyw[1], xyw[2], s))
          .map(_augment(tf, cfg.augment, cell_fraction)))
    model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(), weighted_metrics=["accuracy"])
    history: list[dict] = []

    class _Log(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            row = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}}
            history.append(row)
            progress(f"  epoch {epoch + 1}/{cfg.epochs}: loss {row.get('loss', float('nan')):.3f}"
                     + (f", val loss {row['val_loss']:.3f}, val acc {row.get('val_accuracy', float('nan')):.3f}"
                        if "val_loss" in row else ""))

    callbacks = [_Log()]
    val = None
    if len(x_val):
        val = (x_val.astype(np.float32), y_val)
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.patience,
                                                       restore_best_weights=True,
                                                       start_from_epoch=min(cfg.min_epochs, cfg.epochs - 1)))
    model.fit(ds, validation_data=val, epochs=cfg.epochs, callbacks=callbacks, verbose=0,
              shuffle=False)  # the dataset shuffles itself; Keras would warn that shuffle=True is ignored
    return history


def reseed_layers(model, seed: int) -> None:
    """Restart every layer's own random stream (Keras draws a dropout layer's seed when the model is
    loaded and runs it on with each use), so a fine-tune depends on its seed, not on what ran before."""
    from wbcedge.train.models.registry import all_layers

    for layer in all_layers(model):
        generator = getattr(layer, "seed_generator", None)
        if generator is not None:
            generator.state.assign(np.array([seed, 0], dtype=generator.state.dtype))


def sample_weights(y_site: np.ndarray, n_replay: int, replay_weight: float) -> np.ndarray:
    """Inverse-frequency weights over the site's classes (mean 1), then the replayed cells' weight."""
    counts = np.bincount(y_site, minlength=len(CLASSES)).astype(float)
    present = counts > 0
    w = np.zeros(len(y_site), np.float32)
    if len(y_site):
        w = (len(y_site) / (present.sum() * counts[y_site])).astype(np.float32)
    return np.concatenate([w, np.full(n_replay, replay_weight, np.float32)])


def replay_records(run_dir: Path, per_class: int, seed: int) -> list[Record]:
    """A few of the parent's own training cells per class (or the shipped samples when its data is absent)."""
    if per_class <= 0:
        return []
    from wbcedge.data.manifest import SAMPLES_DIR
    from wbcedge.train.export import _resolve_manifest

    rows: list[Record] = []
    try:
        rows = [r for r in read_manifest(_resolve_manifest(run_dir, None)) if r.split == "train"]
        rows = [r for r in rows if Path(r.path).is_file()]
    except (FileNotFoundError, ValueError, KeyError):
        rows = []
    if not rows:
        from wbcedge.data.index import index_folder
        rows = index_folder(SAMPLES_DIR).records
    rng = np.random.default_rng(seed)
    chosen = []
    for c in CLASSES:
        of_class = [r for r in rows if r.label == c]
        chosen += [of_class[i] for i in sorted(rng.permutation(len(of_class))[:per_class])]
    return chosen


# ---------------------------------------------------------------- the whole command

def adapt(run: Path | None, data: Path, out: Path, cfg: AdaptConfig, unlabelled: Path | None = None,
          test: Path | None = None, progress=print) -> dict:
    """Adapt, export through the gate and bundle; returns the report (also written into the bundle).

    Refusals (bad site data) come before any model is loaded. A result that does not beat
    the parent on the held-out cells still writes the bundle and report, marked not deployable.
    """
    from wbcedge.train.adapt_report import held_out_results, next_steps, write_adapt_report

    plan = plan_site(data, cfg.holdout, cfg.seed, test, cfg.val_share)
    parent = resolve_parent(run)
    out = Path(out)
    run_out = out.with_name(out.name + "-run")
    check_outputs(out, run_out)
    progress(f"site cells: {len(plan.fit)} to fit, {len(plan.val)} to stop early, {len(plan.test)} held out; "
             f"adapting {', '.join(plan.adapted)}"
             + (f"; not adapted (no site cells): {', '.join(plan.not_adapted)}" if plan.not_adapted else ""))

    import keras

    from wbcedge.train.run_folder import load_run

    keras.utils.set_random_seed(cfg.seed)   # before loading: the dropout layers' seeds are drawn then
    predictor = load_run(parent.run_dir)
    model = predictor.keras_model
    cut = site_cut(cfg.crop, predictor.spec, plan.fit + plan.val, cfg.cell_fraction)
    spec = cut.spec   # the adapted bundle's
    crop_words = cut.describe(cfg.crop, predictor.spec)
    if cfg.crop == "site":
        progress(crop_words)
    x_fit, y_fit = cut.inputs(plan.fit), class_indices(r.label for r in plan.fit)
    x_val, y_val = cut.inputs(plan.val), class_indices(r.label for r in plan.val)
    x_test, y_test = cut.inputs(plan.test), class_indices(r.label for r in plan.test)
    x_unl = unlabelled_inputs(unlabelled, spec, limit=cfg.bn_max_cells, seed=cfg.seed, recut=cut.recut)
    replay = replay_records(parent.run_dir, cfg.replay_per_class, cfg.seed)
    x_rep, y_rep = cut.parent_cell_inputs(replay), class_indices(r.label for r in replay)

    # the parent as a lab has it: its own crops of the held-out cells
    x_parent = site_inputs(plan.test, predictor.spec) if cut.recut else x_test
    stages = {"parent": predictor.predict_many(x_parent)}
    if has_batchnorm(model):
        bn_cells = _bn_cells(x_fit, x_val, x_unl, cfg)
        progress(f"step 1/4: BatchNorm statistics from {len(bn_cells)} site cells "
                 f"({len(x_unl)} unlabelled, the rest labelled; held-out cells not used)")
        reestimate_batchnorm(model, bn_cells, cfg.bn_chunk)
        stages["batchnorm"] = predictor.predict_many(x_test)
    else:
        progress("step 1/4: skipped: the model has no BatchNorm statistics (GroupNorm normalises each cell by itself)")
    state = model.get_weights()

    progress(f"step 2/4: fine-tuning on {len(x_fit)} site cells + {len(x_rep)} replayed parent cells, "
             f"early stopping on {len(x_val)}" + (f"; {cfg.soup} fine-tunes averaged" if cfg.soup > 1 else ""))
    history = fine_tune_soup(model, state, (x_fit, y_fit, x_val, y_val), (x_rep, y_rep), cfg, progress,
                             cut.spec.cell_fraction)
    stages["adapted_float"] = predictor.predict_many(x_test)

    curve = None
    if cfg.curve:
        curve = learning_curve(predictor, state, plan, cut, (x_test, y_test), (x_rep, y_rep), cfg, progress)

    formats = " + ".join({"tflite": "TFLite", "onnx": "ONNX"}.get(f, f) for f in cfg.formats)
    progress(f"step 3/4: export int8 {formats} through the accuracy gate on the held-out site cells")
    _write_run(run_out, parent, model, spec, plan, cfg, history)
    export_report, gate_error = _export(run_out, out, plan, parent, cfg, x_fit, x_val, x_unl, x_rep, progress,
                                        (x_test, y_test))
    bundle = load_bundle(out, verify=False)
    from wbcedge.device.runtime import Classifier
    stages["adapted_int8"] = Classifier(out / bundle.manifest["default_model"]).predict_many(x_test)

    progress("step 4/4: " + ("forgetting on the parent's own test set, " if cfg.forgetting else "")
             + "report and bundle manifest")
    forgetting = (_forgetting(parent.run_dir, predictor, out / bundle.manifest["default_model"], progress, cut)
                  if cfg.forgetting else None)
    results = held_out_results(y_test, stages, list(bundle.classes), bundle.temperature)
    better = results["adapted_int8"]["accuracy"] > results["parent"]["accuracy"]
    report = {
        "parent": {"run": str(parent.run_dir), "bundle": str(parent.bundle) if parent.bundle else None,
                   "bundle_manifest_sha256": parent.bundle_sha256},
        "site": {"data": str(data), "test": str(test) if test else None, "unlabelled": str(unlabelled) if unlabelled else None,
                 "data_sha256": plan.data_sha256(), "counts": plan.counts(), "adapted": plan.adapted,
                 "not_adapted": plan.not_adapted, "unlabelled_cells": len(x_unl),
                 "replayed_parent_cells": len(x_rep), "held_out_given_separately": plan.test_given,
                 "crop": {"policy": cfg.crop, "recut": cut.recut, "median_fraction": cut.median_fraction,
                          "crop_um": spec.crop_um, "how": crop_words}},
        "config": {k: v for k, v in asdict(cfg).items()},
        "held_out": results, "better_than_parent": bool(better),
        "export_gate": {"failures": export_report["failures"], "budget": export_report["budget"]},
        "forgetting": forgetting, "learning_curve": curve,
        "epochs_run": [len(h) for h in history] if cfg.soup > 1 else len(history),
        "bundle": str(out), "run": str(run_out),
    }
    deployable = bool(better and gate_error is None)
    report["deployable"] = deployable
    if not better:
        report["refusal"] = (f"the adapted model ({100 * results['adapted_int8']['accuracy']:.1f}%) is not better than "
                             f"the parent ({100 * results['parent']['accuracy']:.1f}%) on the {len(y_test)} held-out "
                             "site cells: the bundle is marked NOT deployable. Label more cells (see the learning "
                             "curve, --curve) or check that the labels and crops are right")
    elif gate_error is not None:
        report["refusal"] = gate_refusal(export_report["failures"], len(y_test))
    report["next_steps"] = next_steps(report)
    write_adapt_report(out, report)
    _finish_manifest(out, report, deployable)
    return report


def fine_tune_soup(model, state, site, replay, cfg: AdaptConfig, progress, cell_fraction: float | None) -> list:
    """Fine-tune `model` from `state` (`cfg.soup` times, weights averaged); returns the history
    (one run's, or a list of each member's)."""
    members = list(soup_members(model, state, site, replay, cfg, progress, cell_fraction))
    if len(members) == 1:
        return members[0][1]
    model.set_weights(average_weights([w for w, _ in members]))
    return [h for _, h in members]


def soup_members(model, state, site, replay, cfg: AdaptConfig, progress, cell_fraction: float | None):
    """Yield (weights, history) of each fine-tune from `state`: the same fit and validation cells,
    member k with seed + k, so the validation cells stay unseen by every member."""
    (x_fit, y_fit, x_val, y_val), (x_rep, y_rep) = site, replay
    for k in range(max(1, cfg.soup)):
        if k:
            progress(f"  member {k + 1}/{cfg.soup}: seed {cfg.seed + k}")
        model.set_weights(state)
        history = fine_tune(model, np.concatenate([x_fit, x_rep]), np.concatenate([y_fit, y_rep]),
                            sample_weights(y_fit, len(x_rep), cfg.replay_weight), x_val, y_val, cfg,
                            cfg.seed + k, progress, cell_fraction)
        yield model.get_weights(), history


def _bn_cells(x_fit, x_val, x_unl, cfg: AdaptConfig) -> np.ndarray:
    cells = np.concatenate([x_unl, x_fit, x_val])
    if len(cells) > cfg.bn_max_cells:
        cells = cells[np.sort(np.random.default_rng(cfg.seed).permutation(len(cells))[:cfg.bn_max_cells])]
    return cells


def learning_curve(predictor, state, plan: SitePlan, cut: SiteCut, test, replay, cfg: AdaptConfig, progress) -> dict:
    """Held-out accuracy after adapting on k labelled cells per class (several seeds), from the
    BatchNorm-re-estimated model; BatchNorm statistics are not re-estimated per point. Each point is
    the bundle's own recipe, a soup of `cfg.soup` fine-tunes, so the curve says what labelling more
    would give the bundle (single fine-tunes scored 6 points under the soup on BCCD, docs/adapt.md)."""
    x_test, y_test = test
    model = predictor.keras_model
    final = model.get_weights()
    pool = plan.fit + plan.val
    largest = max(sum(r.label == c for r in pool) for c in plan.adapted)
    points = []
    for k in cfg.curve_sizes:
        k_eff = largest if k == 0 else k
        if (k and k > largest) or (k == 0 and largest in cfg.curve_sizes):
            continue   # more than there are, or "all" when that is one of the sizes already
        for s in range(cfg.curve_seeds):
            rng = np.random.default_rng(1000 + s)
            chosen = []
            for c in plan.adapted:
                rows = [r for r in pool if r.label == c]
                chosen += [rows[i] for i in sorted(rng.permutation(len(rows))[:k_eff])]
            sub = plan_curve_split(chosen, cfg.val_share, 1000 + s)
            progress(f"learning curve: {k or 'all'} per class, seed {s}: {len(sub[0])} fit, {len(sub[1])} val"
                     + (f", {cfg.soup} fine-tunes averaged" if cfg.soup > 1 else ""))
            x_f, y_f = cut.inputs(sub[0]), class_indices(r.label for r in sub[0])
            x_v, y_v = cut.inputs(sub[1]), class_indices(r.label for r in sub[1])
            fine_tune_soup(model, state, (x_f, y_f, x_v, y_v), replay, replace(cfg, seed=cfg.seed + s),
                           lambda m: None, cut.spec.cell_fraction)
            acc = float((predictor.predict_many(x_test).argmax(1) == y_test).mean())
            points.append({"per_class": k or "all", "cells": len(chosen), "seed": s, "accuracy": acc})
    model.set_weights(final)
    return {"points": points, "held_out_cells": len(y_test)}


def plan_curve_split(rows: list[Record], val_share: float, seed: int) -> tuple[list[Record], list[Record]]:
    rng = np.random.default_rng(seed)
    fit, val = [], []
    for c in CLASSES:
        of = [rows[i] for i in rng.permutation(len(rows)) if rows[i].label == c]
        n_val = max(1, round(len(of) * val_share)) if len(of) > 3 else 0
        val += of[:n_val]
        fit += of[n_val:]
    return fit, val


def check_outputs(out: Path, run_out: Path) -> None:
    """Refuse, before any model loads, outputs whose writing would delete what is there: `out` as
    `wbcedge export` refuses it, and `OUT-run` unless it is absent, empty or an earlier adapted run."""
    from wbcedge.train.export import check_bundle_output

    check_bundle_output(out)
    if run_out.exists() and not run_out.is_dir():
        raise OutputFolderError(f"{run_out} (where the adapted run goes) is a file: give --out another name")
    if run_out.is_dir() and any(run_out.iterdir()) and not (run_out / "adapt.json").is_file():
        raise OutputFolderError(f"{run_out} (where the adapted run goes) holds files and is not an adapted run "
                                "(no adapt.json), so writing there would delete them: give --out another name")


def _write_run(run_out: Path, parent: Parent, model, spec, plan: SitePlan, cfg: AdaptConfig, history) -> None:
    from wbcedge.provenance import file_sha256, package_versions

    if run_out.exists():
        shutil.rmtree(run_out)
    run_out.mkdir(parents=True)
    model.save(run_out / "model.keras")
    spec.save(run_out)
    (run_out / "labels.json").write_text(json.dumps(list(CLASSES)) + "\n")
    records = ([replace(r, split="train") for r in plan.fit] + [replace(r, split="val") for r in plan.val]
               + [replace(r, split="test") for r in plan.test])
    write_data_manifest(records, run_out / "site.csv")
    parent_cfg = json.loads((parent.run_dir / "config.json").read_text())
    (run_out / "config.json").write_text(json.dumps(
        {**parent_cfg, "manifest": str((run_out / "site.csv").resolve()), "batch_size": cfg.batch_size},
        indent=2) + "\n")
    (run_out / "adapt.json").write_text(json.dumps({"adapted_from": str(parent.run_dir), **asdict(cfg)},
                                                   indent=2) + "\n")
    (run_out / "manifest.sha256").write_text(file_sha256(run_out / "site.csv") + "\n")
    (run_out / "versions.json").write_text(json.dumps(package_versions(), indent=2) + "\n")
    (run_out / "history.json").write_text(json.dumps(history, indent=2) + "\n")


def _export(run_out, out, plan, parent, cfg, x_fit, x_val, x_unl, x_rep, progress, test_inputs):
    """Export through the gate with the site's held-out cells as its test set.

    The gate scores `test_inputs`, the held-out cells exactly as adapt cut and scored them (the
    crops as given: a site's cells come cut by the model's own crop policy, e.g. from `review
    export`), not re-cut by the class-folder policy of `labelled_inputs`, so the gate's figures and
    the report's agree. Calibration: the site's cells (what the device will see) and their turned and mirrored
    views, topped up with replayed parent cells. The gate's budget is widened to one held-out cell where that is more than the
    default budget (one cell of six is 17 points, which no quantization can promise).
    """
    from wbcedge.train.export import GateFailed, export

    calibration = calibration_inputs(np.concatenate([x_unl, x_fit, x_val]), x_rep, cfg.calib)
    opts = gate_options(run_out, plan, parent, cfg, calibration, test_inputs, x_unl)
    try:
        return export(run_out, out, opts, progress=lambda m: progress("  " + m)), None
    except GateFailed as e:
        return e.report, e


def gate_options(run_out: Path, plan: SitePlan, parent: Parent, cfg: AdaptConfig, calibration: np.ndarray,
                 test_inputs: tuple[np.ndarray, np.ndarray], x_unl: np.ndarray):
    """The export gate's options for an adapted run: the site's cells as its test set and calibration,
    the budget widened to one held-out cell, the floors of `cfg` where it sets them (else the export's)."""
    from wbcedge.train.export import ExportOptions

    supports = [v["held_out"] for v in plan.counts().values() if v["held_out"]]
    floors = {k: getattr(cfg, k) for k in ("min_accuracy", "min_class_recall") if getattr(cfg, k) is not None}
    return ExportOptions(int8=True, formats=tuple(cfg.formats), data=str(run_out / "site.csv"), seed=cfg.seed,
                         calibration_override=calibration, test_inputs_override=test_inputs,
                         unlabelled_val_inputs=x_unl,
                         threshold=cfg.threshold if cfg.threshold is not None else parent.threshold,
                         max_drop=max(cfg.max_drop, 100.0 / len(plan.test) + 1e-6),
                         max_class_drop=max(cfg.max_class_drop, 100.0 / min(supports) + 1e-6), **floors)


def gate_refusal(failures: list[str], held_out: int) -> str:
    """Why the export gate refused an adapted model, and what a lab can do about it with `adapt`
    (the export's own advice names `wbcedge export` options that `adapt` does not have)."""
    return (f"the export gate refused the adapted model on the {held_out} held-out site cells, so the bundle is "
            "marked NOT deployable:\n  " + "\n  ".join(failures) + "\nLabel more cells of the classes that miss "
            "(see the next steps; --curve shows whether more labels still help). To accept a model under the "
            "floors knowingly, set lower min_accuracy / min_class_recall in an adapt config (--config) and run "
            "again: the bundle records them.")


def calibration_inputs(site: np.ndarray, replay: np.ndarray, n: int) -> np.ndarray:
    """`n` calibration inputs: the site's cells, then their quarter turns and mirror images
    (the same cells as the microscope may show them), then the replayed parent cells."""
    views = [site, np.rot90(site, 1, axes=(1, 2)), site[:, :, ::-1], np.rot90(site, 3, axes=(1, 2)),
             site[:, ::-1], np.rot90(site, 2, axes=(1, 2))]
    return np.ascontiguousarray(np.concatenate([*views, replay])[:max(n, 1)])


def _forgetting(run_dir: Path, predictor, int8_file: Path, progress, cut: SiteCut) -> dict | None:
    """Accuracy on the parent's own test split, parent vs adapted (None when its images are absent);
    the adapted model sees them cut as its bundle's runner would cut that microscope's cells."""
    from wbcedge.device.runtime import Classifier
    from wbcedge.evaluation.metrics import proportion_ci
    from wbcedge.train.export import _resolve_manifest
    from wbcedge.train.run_folder import load_run

    try:
        manifest = _resolve_manifest(run_dir, None)
        test = [r for r in read_manifest(manifest) if r.split == "test"]
    except (FileNotFoundError, ValueError, KeyError):
        return None
    if not test or not all(Path(r.path).is_file() for r in test):
        progress("  the parent's test images are not here: forgetting not measured")
        return None
    x, y = site_inputs(test, predictor.spec), class_indices(r.label for r in test)
    x_adapted = cut.inputs(test) if cut.recut else x
    out = {"manifest": str(manifest), "images": len(y)}
    for name, probs in (("parent", load_run(run_dir).predict_many(x)),
                        ("adapted_float", predictor.predict_many(x_adapted)),
                        ("adapted_int8", Classifier(int8_file).predict_many(x_adapted))):
        correct = int((probs.argmax(1) == y).sum())
        out[name] = {"accuracy": correct / len(y), "accuracy_ci95": list(proportion_ci(correct, len(y)))}
    return out


def _finish_manifest(out: Path, report: dict, deployable: bool) -> None:
    """Add the adaptation's provenance to the bundle manifest and re-hash the bundle's files."""
    manifest = json.loads((out / MANIFEST).read_text())
    meta = {k: v for k, v in manifest.items() if k not in ("format", "format_version", "created", "files")}
    meta["deployable"] = deployable
    meta["source_run"] = Path(report["run"]).name
    held = report["held_out"]
    meta["adaptation"] = {
        "parent_run": report["parent"]["run"],
        "parent_bundle_manifest_sha256": report["parent"]["bundle_manifest_sha256"],
        "site_data_sha256": report["site"]["data_sha256"],
        "site_counts": report["site"]["counts"],
        "adapted_classes": report["site"]["adapted"], "not_adapted_classes": report["site"]["not_adapted"],
        "unlabelled_cells": report["site"]["unlabelled_cells"],
        "held_out_accuracy": {k: held[k]["accuracy"] for k in ("parent", "adapted_int8")},
        "better_than_parent": report["better_than_parent"],
    }
    write_manifest(out, meta)
