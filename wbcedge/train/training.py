"""Train a zoo model from a manifest into a self-describing run folder.

A run folder holds everything export and evaluation need:
    model.keras        the best checkpoint (by validation accuracy)
    preprocess.json    the preprocessing spec (wbcedge.preprocess), read by export and the device
    labels.json        class names in output order
    config.json        the training config; manifest.sha256 of the data it saw
    history.csv        per-epoch metrics (Keras CSVLogger); tensorboard/ logs
    versions.json      package versions
    backup/            Keras BackupAndRestore state: rerunning the same command resumes
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from wbcedge.data import read_manifest
from wbcedge.errors import InputDataError
from wbcedge.labels import CLASSES, class_indices
from wbcedge.preprocess import PreprocessSpec, load_inputs, stain_normalise_inputs
from wbcedge.provenance import file_sha256, package_versions
from wbcedge.tomlfile import read_toml
from wbcedge.train.augment import AugmentConfig, make_augment

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@dataclass
class TrainConfig:
    manifest: str = ""
    model: str = "mobilenet_v2"
    # The preprocessing spec (wbcedge.preprocess.PreprocessSpec fields) to change from the
    # resolved defaults: the model family's, then the run folder the `weights` come from.
    preprocess: dict = field(default_factory=dict)
    alpha: float = 1.0
    norm: str = "batch"             # "batch" or "group" normalisation in backbone and head
    weights: str = "none"
    weights_fallback: bool = False
    dropout: float = 0.3
    epochs: int = 20
    frozen_epochs: int = 0          # transfer learning: epochs with the backbone frozen first
    fine_tune_layers: int = 0       # then unfreeze this many top backbone layers (0 = all)
    batch_size: int = 64
    learning_rate: float = 2e-3
    fine_tune_learning_rate: float = 1e-4
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0
    class_weighting: bool = True    # inverse-frequency class weights
    augment_preset: str = "robust"  # wbcedge.train.augment: "robust" or "none"
    augment: dict = field(default_factory=dict)  # AugmentConfig options to change from the preset
    patience: int = 6
    seed: int = 0
    deterministic: bool = False     # tf op determinism (slower)
    mixed_precision: str = "auto"   # auto = on when a GPU is visible
    jit_compile: str = "auto"       # XLA; auto = on when a GPU is visible
    max_train_images: int = 0       # 0 = all (small values are for tests)
    # With a stain reference in the spec: augment the crops as they come, then normalise them,
    # as the device normalises a crop from another microscope (false: normalise when decoding,
    # then augment; how the runs trained before 2026-12-01 late were made).
    stain_after_augment: bool = True

    @classmethod
    def load(cls, path: Path) -> "TrainConfig":
        path = Path(path)
        toml = path.suffix == ".toml"
        data = read_toml(path) if toml else json.loads(path.read_text())
        try:
            return cls.from_dict(data, run_folder_config=not toml)
        except InputDataError as e:
            raise InputDataError(f"{path}: {e}") from None

    @classmethod
    def from_dict(cls, data: dict, run_folder_config: bool = False) -> "TrainConfig":
        """A config from a TOML table, or (`run_folder_config`) a run folder's config.json, old layouts included.

        In a TOML table, `[augment]` changes the preset (`augment_preset`, default "robust").
        Only a run folder's config.json from before the presets listed every augmentation it
        used under `augment` alone; that one means the "none" preset underneath. (Until
        2026-12-02 a TOML `[augment]` table without a preset was read that way too, so e.g.
        `[augment] clean = 0.15` silently trained with no augmentation at all.)"""
        data = dict(data)
        for derived in ("model_options", "augment_resolved"):  # written beside the config in config.json
            data.pop(derived, None)
        flat = {k: data.pop(k) for k in _FLAT_SPEC_KEYS if k in data}
        if flat:  # before the nested spec, these were top-level options
            data["preprocess"] = {**flat, **data.get("preprocess", {})}
        if run_folder_config and "augment" in data and "augment_preset" not in data:
            data["augment_preset"] = "none"  # an old run's config.json listed every augmentation it used
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise InputDataError(f"unknown training options {sorted(unknown)}; "
                                 f"known: {sorted(cls.__dataclass_fields__)}")
        AugmentConfig.from_dict(data.get("augment"), data.get("augment_preset", "robust"))  # fail early, not mid-run
        return cls(**data)

    def with_input_size(self, size: int) -> "TrainConfig":
        return replace(self, preprocess={**self.preprocess, "input_size": size})


_FLAT_SPEC_KEYS = ("input_size", "cell_fraction", "crop_um")


def resolve_spec(cfg: TrainConfig) -> PreprocessSpec:
    """The run's preprocessing spec: the model family's defaults, then the spec of the run folder
    the warm-start `weights` come from (so a fine-tune sees what its start saw), then `cfg.preprocess`."""
    from wbcedge.train.models import default_preprocess

    spec = default_preprocess(cfg.model)
    if cfg.weights not in ("none", "imagenet"):
        folder = Path(cfg.weights).parent
        if (folder / "preprocess.json").is_file():
            spec = PreprocessSpec.load(folder)
    return PreprocessSpec.from_dict({**spec.to_dict(), **cfg.preprocess})


def train(cfg: TrainConfig, run_dir: Path, progress=print) -> dict:
    """Train and write the run folder; returns a summary. Rerunning resumes an interrupted run."""
    run_dir = Path(run_dir)
    if (run_dir / "summary.json").is_file():
        return _finished_run(run_dir, cfg, progress)

    from wbcedge.train.tf_import import import_tensorflow

    tf = import_tensorflow()
    import keras

    from wbcedge.train.models import ModelOptions, create_model
    from wbcedge.train.models.applications import backbone_of

    keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    gpus = tf.config.list_physical_devices("GPU")
    if (cfg.mixed_precision == "auto" and gpus) or cfg.mixed_precision == "on":
        keras.mixed_precision.set_global_policy("mixed_float16")
    jit = (cfg.jit_compile == "auto" and bool(gpus)) or cfg.jit_compile == "on"

    spec = spec_with_data_scale(resolve_spec(cfg), cfg.manifest, progress)
    records = read_manifest(Path(cfg.manifest))
    train_recs = [r for r in records if r.split == "train"]
    val_recs = [r for r in records if r.split == "val"]
    if not train_recs or not val_recs:
        raise InputDataError(f"{cfg.manifest} needs rows in both 'train' and 'val' splits: run `wbcedge data split` first")
    if cfg.max_train_images:
        rng = np.random.default_rng(cfg.seed)
        train_recs = [train_recs[i] for i in sorted(rng.permutation(len(train_recs))[:cfg.max_train_images])]
    progress(f"decoding {len(train_recs)} train and {len(val_recs)} val images at {spec.input_size}px")
    normalise_late = spec.stain_reference is not None and cfg.stain_after_augment
    decode_spec = replace(spec, stain_reference=None) if normalise_late else spec
    x_train, y_train = load_inputs([r.path for r in train_recs], decode_spec), class_indices(r.label for r in train_recs)
    x_val, y_val = load_inputs([r.path for r in val_recs], spec), class_indices(r.label for r in val_recs)

    strategy = tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    batch = cfg.batch_size * strategy.num_replicas_in_sync
    augment = make_augment(AugmentConfig.from_dict(cfg.augment, cfg.augment_preset), spec.cell_fraction)
    step_seeds = tf.data.Dataset.random(seed=cfg.seed, rerandomize_each_iteration=True).batch(2)
    train_ds = (tf.data.Dataset.from_tensor_slices((x_train, y_train))
                .shuffle(len(x_train), seed=cfg.seed, reshuffle_each_iteration=True)
                .batch(batch))
    train_ds = (tf.data.Dataset.zip((train_ds, step_seeds))
                .map(lambda xy, s: (tf.cast(xy[0], tf.float32), xy[1], s), num_parallel_calls=tf.data.AUTOTUNE)
                .map(lambda x, y, s: (augment(x, s), y), num_parallel_calls=tf.data.AUTOTUNE))
    if normalise_late:
        train_ds = train_ds.map(lambda x, y: (_stain_normalised(tf, x, spec), y), num_parallel_calls=tf.data.AUTOTUNE)
    train_ds = train_ds.prefetch(tf.data.AUTOTUNE)
    val_ds = (tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(batch)
              .map(lambda x, y: (tf.cast(x, tf.float32), y)).prefetch(tf.data.AUTOTUNE))

    class_weight = None
    if cfg.class_weighting:
        counts = np.bincount(y_train, minlength=len(CLASSES)).astype(float)
        class_weight = {i: float(len(y_train) / (len(CLASSES) * c)) for i, c in enumerate(counts) if c > 0}

    options = ModelOptions(name=cfg.model, preprocess=spec, alpha=cfg.alpha, weights=cfg.weights,
                           weights_fallback=cfg.weights_fallback, dropout=cfg.dropout, norm=cfg.norm)
    with strategy.scope():
        model = create_model(options=options)
    backbone = backbone_of(model)

    # Save the description first, so an interrupted run folder still says what it is. The folder is made
    # only now: a start that fails (bad manifest, missing weights) leaves no empty run folder behind.
    run_dir.mkdir(parents=True, exist_ok=True)
    spec.save(run_dir)
    (run_dir / "labels.json").write_text(json.dumps(list(CLASSES)) + "\n")
    (run_dir / "config.json").write_text(json.dumps({**asdict(cfg), "model_options": options.to_dict(),
                                                     "augment_resolved": AugmentConfig.from_dict(
                                                         cfg.augment, cfg.augment_preset).to_dict()},
                                                    indent=2) + "\n")
    (run_dir / "manifest.sha256").write_text(file_sha256(Path(cfg.manifest)) + "\n")
    (run_dir / "versions.json").write_text(json.dumps(package_versions(), indent=2) + "\n")

    steps = int(np.ceil(len(x_train) / batch))
    phases = []
    if cfg.frozen_epochs and backbone is not None:
        phases.append(("frozen", cfg.frozen_epochs, cfg.learning_rate))
        phases.append(("fine-tune", cfg.epochs, cfg.fine_tune_learning_rate))
    else:
        phases.append(("train", cfg.epochs, cfg.learning_rate))

    history_csv = run_dir / "history.csv"
    epoch0 = 0
    for phase, end_epoch, lr in phases:
        if phase == "frozen":
            backbone.trainable = False
        elif phase == "fine-tune":
            backbone.trainable = True
            if cfg.fine_tune_layers:
                for layer in backbone.layers[:-cfg.fine_tune_layers]:
                    layer.trainable = False
            for layer in backbone.layers:  # keep BatchNorm statistics of a pretrained backbone
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.trainable = False
        with strategy.scope():
            schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(1, steps * (end_epoch - epoch0)))
            model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=cfg.weight_decay),
                          loss=keras.losses.SparseCategoricalCrossentropy(),
                          metrics=["accuracy"], jit_compile=jit)
        callbacks = [
            keras.callbacks.BackupAndRestore(str(run_dir / "backup" / phase)),
            keras.callbacks.ModelCheckpoint(str(run_dir / "model.keras"), monitor="val_accuracy",
                                            save_best_only=True),
            keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=cfg.patience,
                                          restore_best_weights=False),
            keras.callbacks.CSVLogger(str(history_csv), append=True),
            keras.callbacks.TensorBoard(str(run_dir / "tensorboard"), write_graph=False, profile_batch=0),
            _ProgressCallback(progress, end_epoch),
        ]
        progress(f"phase {phase}: epochs {epoch0 + 1}-{end_epoch}, learning rate {lr:g}")
        model.fit(train_ds, validation_data=val_ds, epochs=end_epoch, initial_epoch=epoch0,
                  class_weight=class_weight, callbacks=callbacks, verbose=0,
                  shuffle=False)  # the dataset shuffles itself; Keras would warn that shuffle=True is ignored
        epoch0 = end_epoch

    best = keras.saving.load_model(run_dir / "model.keras")
    val_probs = best.predict(val_ds, verbose=0)
    val_acc = float((val_probs.argmax(1) == y_val).mean())
    summary = {"run_dir": str(run_dir), "model": cfg.model, "params": int(model.count_params()),
               "train_images": len(x_train), "val_images": len(x_val), "best_val_accuracy": val_acc}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _stain_normalised(tf, images, spec: PreprocessSpec):
    """The device's stain normalisation (numpy, `stain_normalise_inputs`) on an augmented float batch."""
    def normalise(batch):
        return stain_normalise_inputs(np.clip(np.rint(batch), 0, 255).astype(np.uint8), spec).astype(np.float32)
    out = tf.numpy_function(normalise, [images], tf.float32)
    out.set_shape(images.shape)
    return out


def spec_with_data_scale(spec: PreprocessSpec, manifest: str, progress=print) -> PreprocessSpec:
    """Fill the crop geometry the config leaves open from the data's measured scale (MANIFEST.scale.json).

    A config's explicit `crop_um` or non-default `cell_fraction` wins; the measured values fill the rest.
    Prints which crop policy the model will use on the device, and why.
    """
    from wbcedge.data.scale import read_scale, scale_path
    from wbcedge.preprocess import crop_policy

    scale = read_scale(manifest) if manifest else None
    changes, why = {}, []
    if scale and scale.get("cell_fraction") and spec.cell_fraction == PreprocessSpec.cell_fraction:
        changes["cell_fraction"] = scale["cell_fraction"]
        why.append(f"cell fraction {scale['cell_fraction']:g} measured on {scale['cells_found']} crops")
    if spec.crop_um is None and scale and scale.get("crop_um"):
        changes["crop_um"] = scale["crop_um"]
        why.append(f"crop size {scale['crop_um']:g} um from the data's scale ({scale['um_per_px']:g} um/px)")
    elif spec.crop_um is not None:
        why.append(f"crop size {spec.crop_um:g} um from the training config")
        if scale and scale.get("crop_um") and abs(scale["crop_um"] - spec.crop_um) > 0.05 * spec.crop_um:
            progress(f"warning: the config says crop_um = {spec.crop_um:g} but {scale_path(manifest)} measured "
                     f"{scale['crop_um']:g} um for this data; the config wins: fix whichever is wrong")
        elif not (scale and scale.get("crop_um")):
            progress(f"warning: crop_um = {spec.crop_um:g} comes from the config, not from this data's scale: make "
                     f"sure it is this data's crop width (`wbcedge data index --um-per-px` measures it)")
    elif scale is None:
        why.append(f"no {scale_path(manifest).name} beside the manifest (run `wbcedge data index --um-per-px` "
                   "to measure the data's scale)")
    else:
        why.append("the data's scale was not given (`wbcedge data index --um-per-px`)")
    spec = replace(spec, **changes)
    progress(f"crop policy on the device: {crop_policy(spec)}; because: {'; '.join(why)}")
    return spec


def _finished_run(run_dir: Path, cfg: TrainConfig, progress) -> dict:
    """A run folder that already finished: nothing to redo, or say how to train it further."""
    summary = json.loads((run_dir / "summary.json").read_text())
    done = json.loads((run_dir / "config.json").read_text()).get("epochs") if (run_dir / "config.json").is_file() else None
    if done is not None and cfg.epochs > done:
        raise ValueError(
            f"{run_dir} holds a run that finished after {done} epochs, and a finished run is not extended in place "
            f"(its model.keras is the best checkpoint, not the last). To train {cfg.epochs - done} more epochs, start "
            f"a new run from its weights: `wbcedge train {cfg.manifest or 'MANIFEST'} --weights {run_dir / 'model.keras'} "
            f"--epochs {cfg.epochs - done} --out {run_dir}-more` with the same model options; or train afresh "
            f"with --epochs {cfg.epochs} and a new --out")
    progress(f"{run_dir} holds a finished run ({done if done is not None else '?'} epochs); nothing to do "
             "(use a new --out to train again)")
    return summary


class _ProgressCallback:
    """Keras callback printing one line per epoch (duck-typed to avoid importing keras at module import)."""

    def __new__(cls, progress, total_epochs):
        import keras

        class _CB(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                logs = logs or {}
                progress(f"epoch {epoch + 1}/{total_epochs}: loss {logs.get('loss', float('nan')):.4f} "
                         f"acc {logs.get('accuracy', float('nan')):.4f} val_loss {logs.get('val_loss', float('nan')):.4f} "
                         f"val_acc {logs.get('val_accuracy', float('nan')):.4f}")
        return _CB()
