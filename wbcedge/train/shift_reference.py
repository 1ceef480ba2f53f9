"""At export: the reference statistics of the domain-shift check, the temperature, and their gate.

- Reference: class means and shared covariance of the float model's penultimate features on
  training crops (`wbcedge.device.shift.fit_reference`).
- Thresholds and temperature: from the validation crops only (held out from the weights and
  from the reference statistics; the test split stays for the gate and for docs/shift.md).
- Gate: every exported file's features must point the way the float model's do (cosine) and its
  OOD scores must agree with the float scores (correlation), like accuracy is gated for the
  probabilities.
"""

from __future__ import annotations

import numpy as np

from wbcedge.device.confidence import apply_temperature, fit_temperature, negative_log_likelihood
from wbcedge.device.shift import METHOD, REFERENCE_FILE, ShiftReference, calibrate, colour_statistics, fit_reference
from wbcedge.labels import class_indices

MIN_VAL_IMAGES = 20
CELL_QUANTILE = 0.99      # 1% of in-distribution cells are set unidentified by the shift check
SESSION_QUANTILE = 0.998  # of simulated sessions of held-out crops ...
SESSION_MARGIN = 1.25     # ... times this margin for the variation between real sessions (docs/shift.md)


def predict_two(model, x: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray | None]:
    """Probabilities and features (None for a one-output model) of a Keras model, in float32."""
    out = model.predict(x.astype(np.float32), verbose=0, batch_size=batch_size)
    if isinstance(out, (list, tuple)):
        return np.asarray(out[0], np.float32), np.asarray(out[1], np.float32)
    return np.asarray(out, np.float32), None


def sample_per_class(records: list, n: int, seed: int) -> list:
    """At most n records, the classes in their own proportions (a random subset per class)."""
    if len(records) <= n:
        return list(records)
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.permutation(len(records))[:n])
    return [records[i] for i in idx]


def decoded_for_augmenting(paths: list, spec, stain_after_augment: bool):
    """(crops, finish): the crops decoded as the run's augmentation met them in training, and what makes
    model inputs of them, augmented or not: the spec's stain normalisation when the run normalised after
    augmenting (`TrainConfig.stain_after_augment`), as the device normalises another microscope's
    cell; nothing otherwise (then `crops` are already model inputs)."""
    from dataclasses import replace

    from wbcedge.preprocess import load_inputs, stain_normalise_inputs

    if stain_after_augment and spec.stain_reference is not None:
        return load_inputs(paths, replace(spec, stain_reference=None)), lambda x: stain_normalise_inputs(x, spec)
    return load_inputs(paths, spec), lambda x: x


def augmented(inputs: np.ndarray, augment: dict | None, seed: int, cell_fraction: float | None = None,
              batch: int = 256) -> np.ndarray:
    """Each crop once under the run's augmentation (`augment`: a full `AugmentConfig` dict,
    `run_augmentation`), as training did: with its geometry (zoom, flips) when `cell_fraction` (the
    spec's) is given, colour only otherwise. Empty when the run trained without augmentation."""
    from dataclasses import replace

    from wbcedge.train.augment import AugmentConfig, make_augment

    cfg = AugmentConfig.from_dict(augment, "none")
    if cell_fraction is None:
        cfg = replace(cfg, flips=False, rot90=False, scale=False)
    if cfg == AugmentConfig.none() or not len(inputs):
        return inputs[:0]
    import tensorflow as tf

    fn = make_augment(cfg, cell_fraction)
    out = [fn(tf.constant(inputs[i:i + batch].astype(np.float32)), tf.constant([seed, i])).numpy()
           for i in range(0, len(inputs), batch)]
    return np.clip(np.round(np.concatenate(out)), 0, 255).astype(np.uint8)


def run_augmentation(config: dict) -> dict:
    """The augmentation a run trained with, every option spelled out, from its config.json (old layouts too)."""
    from wbcedge.train.augment import AugmentConfig
    from wbcedge.train.training import TrainConfig

    if "augment" not in config and "augment_preset" not in config:
        return AugmentConfig.none().to_dict()  # the config does not say: assume none rather than guess
    cfg = TrainConfig.from_dict(config, run_folder_config=True)
    return AugmentConfig.from_dict(cfg.augment, cfg.augment_preset).to_dict()


def build_reference(model, records: list, spec, classes: list[str], max_train: int, seed: int,
                    augment: dict | None = None, progress=print, unlabelled: np.ndarray | None = None,
                    stain_after_augment: bool = False):
    """(base reference or None, threshold inputs, the manifest's "calibration", the manifest's "domain_shift").

    The base holds the statistics; `calibrate_file` adds each model file's thresholds, from the
    validation crops plus `unlabelled` (model inputs of never-trained cells of the same microscope).
    The temperature needs labels: it is fitted on the validation crops alone, and only when there
    are at least MIN_VAL_IMAGES of them. `stain_after_augment`: the run shifted its crops first and
    normalised them after (`TrainConfig.stain_after_augment`), so the colour-augmented crops are made so too.
    """
    from wbcedge.preprocess import load_inputs

    train = sample_per_class([r for r in records if r.split == "train"], max_train, seed)
    val = [r for r in records if r.split == "val"]
    extra = np.zeros((0, spec.input_size, spec.input_size, 3), np.uint8) if unlabelled is None else unlabelled
    if len(val) + len(extra) < MIN_VAL_IMAGES or len(train) < len(classes):
        why = (f"{len(val)} validation images and {len(extra)} unlabelled ones (need {MIN_VAL_IMAGES} together) "
               f"and {len(train)} training images; the shift check is off and confidences are not calibrated in this bundle")
        progress(f"warning: {why}")
        return None, None, {"temperature": 1.0, "fitted_on": None, "note": why}, {"reference": None, "note": why}
    progress(f"reference statistics: {len(train)} training crops (colour also under the run's colour "
             f"augmentation); scales and thresholds from {len(val)} validation crops"
             + (f" and {len(extra)} unlabelled cells" if len(extra) else "")
             + ("; temperature from the validation crops" if len(val) >= MIN_VAL_IMAGES else
                f"; no temperature ({len(val)} labelled validation crops, need {MIN_VAL_IMAGES})"))
    crops, finish = decoded_for_augmenting([r.path for r in train], spec, stain_after_augment)
    x_train, x_aug = finish(crops), finish(augmented(crops, augment, seed))
    y_train = class_indices(r.label for r in train)
    _, train_feats = predict_two(model, x_train)
    means, whiten = fit_reference(train_feats, y_train, len(classes))
    colour_means, colour_whiten = fit_reference(colour_statistics(np.concatenate([x_train, x_aug])),
                                                np.concatenate([y_train, y_train[:len(x_aug)]]), len(classes), 0.01)
    x_val = load_inputs([r.path for r in val], spec) if val else extra[:0]
    x_thresholds = np.concatenate([x_val, extra.astype(x_val.dtype)]) if len(extra) else x_val
    probs, feats = predict_two(model, x_thresholds)
    unscaled = ShiftReference(means, whiten, colour_means, colour_whiten, np.ones(2), 0.0, np.ones(1))
    scales = np.median(unscaled.parts(feats, x_thresholds), axis=0)
    base = ShiftReference(means, whiten, colour_means, colour_whiten, scales, 0.0, np.ones(1))
    calibration = _temperature(probs[:len(val)], class_indices(r.label for r in val))
    shift = {"reference": REFERENCE_FILE, "method": METHOD, "feature_dim": base.feature_dim,
             "train_images": len(train), "colour_augmented_images": len(x_aug), "val_images": len(val),
             "unlabelled_images": len(extra),
             "cell_quantile": CELL_QUANTILE, "session_quantile": SESSION_QUANTILE, "session_margin": SESSION_MARGIN,
             "min_cells": base.min_cells, "thresholds": {}}
    return base, x_thresholds, calibration, shift


def _temperature(val_probs: np.ndarray, y_val: np.ndarray) -> dict:
    """The manifest's "calibration": a temperature fitted on labelled validation crops, or none when too few."""
    from wbcedge.evaluation.metrics import expected_calibration_error as ece

    if len(y_val) < MIN_VAL_IMAGES:
        return {"temperature": 1.0, "fitted_on": None,
                "note": f"{len(y_val)} labelled validation images (need {MIN_VAL_IMAGES}): confidences not calibrated"}
    temperature = fit_temperature(val_probs, y_val)
    calibrated = apply_temperature(val_probs, temperature)
    return {"temperature": round(temperature, 4), "fitted_on": "val", "images": len(y_val),
            "nll_before": negative_log_likelihood(val_probs, y_val),
            "nll_after": negative_log_likelihood(calibrated, y_val),
            "ece_before": ece(y_val, val_probs), "ece_after": ece(y_val, calibrated)}


def calibrate_file(base: ShiftReference, classifier, x_val: np.ndarray, seed: int) -> ShiftReference:
    """The thresholds of one model file, from its own features of the validation crops (int8 adds noise)."""
    _, feats = classifier.predict_many_with_features(x_val)
    return calibrate(base, base.cell_scores(feats, x_val), CELL_QUANTILE, SESSION_QUANTILE, SESSION_MARGIN, seed=seed)


def threshold_summary(ref: ShiftReference) -> dict:
    return {"cell": round(ref.cell_threshold, 4), "session_at_min_cells": round(ref.session_threshold(ref.min_cells), 4),
            "session_at_100_cells": round(ref.session_threshold(100), 4)}


def feature_check(file_feats: np.ndarray | None, float_feats: np.ndarray | None, reference: ShiftReference | None,
                  inputs: np.ndarray | None, min_cosine: float, min_correlation: float) -> tuple[dict | None, list[str]]:
    """The gate's feature entry for one file (its reference holds that file's thresholds), and what broke."""
    if float_feats is None:
        return None, []
    if file_feats is None:
        return {"present": False}, ["the file has no feature output (the shift check needs it)"]
    a, b = file_feats.astype(np.float64), float_feats.astype(np.float64)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    entry = {"present": True, "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min())}
    broken = []
    if entry["cosine_mean"] < min_cosine:
        broken.append(f"features: mean cosine to float {entry['cosine_mean']:.3f} (budget {min_cosine})")
    if reference is not None and inputs is not None and len(a) > 2:
        p_file, p_float = reference.parts(a, inputs), reference.parts(b, inputs)
        f_file, f_float = p_file[:, 0], p_float[:, 0]  # the colour part is the same input for both
        corr = float(np.corrcoef(f_file, f_float)[0, 1]) if f_file.std() > 0 and f_float.std() > 0 else 0.0
        over_file, over_float = p_file.max(1) > reference.cell_threshold, p_float.max(1) > reference.cell_threshold
        entry.update(ood_score_correlation=corr, ood_over_cell_threshold=float(over_file.mean()),
                     ood_over_cell_threshold_float=float(over_float.mean()),
                     ood_decision_agreement=float((over_file == over_float).mean()))
        if corr < min_correlation:
            broken.append(f"OOD scores: feature-distance correlation with float {corr:.3f} (budget {min_correlation})")
    return entry, broken
