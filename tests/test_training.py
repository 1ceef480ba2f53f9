"""The training path on the committed sample crops: loss falls; a saved run reloads and predicts the same."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytestmark = pytest.mark.train

from wbcedge.data import read_manifest  # noqa: E402
from wbcedge.evaluation.evaluate import predict_records  # noqa: E402
from wbcedge.train.run_folder import load_run  # noqa: E402
from wbcedge.preprocess import PreprocessSpec  # noqa: E402
from wbcedge.train.training import TrainConfig, train  # noqa: E402


@pytest.fixture(scope="module")
def tiny_run(sample_manifest, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(manifest=str(sample_manifest), model="residual_cnn", preprocess={"input_size": 32}, epochs=8,
                      batch_size=8, learning_rate=3e-3, augment_preset="none", seed=1, patience=20)
    summary = train(cfg, run_dir, progress=lambda m: None)
    return run_dir, summary


def test_training_loss_falls_and_run_folder_is_complete(tiny_run):
    run_dir, summary = tiny_run
    for name in ("model.keras", "preprocess.json", "labels.json", "config.json", "history.csv",
                 "manifest.sha256", "versions.json", "summary.json"):
        assert (run_dir / name).is_file(), name
    rows = list(csv.DictReader((run_dir / "history.csv").open()))
    assert len(rows) == 8
    losses = [float(r["loss"]) for r in rows]
    assert losses[-1] < losses[0]
    assert PreprocessSpec.load(run_dir).input_size == 32
    assert json.loads((run_dir / "config.json").read_text())["model"] == "residual_cnn"


def test_reloaded_run_reproduces_its_recorded_validation_accuracy(tiny_run, sample_manifest):
    """The saved model, its preprocessing spec and labels, read back by the evaluation path, give the
    validation accuracy that training recorded for its best epoch (a broken save, spec or label order would not)."""
    run_dir, summary = tiny_run
    val = [r for r in read_manifest(sample_manifest) if r.split == "val"]
    y, probs = predict_records(load_run(run_dir), val)
    assert probs.shape == (len(val), 5) and np.allclose(probs.sum(axis=1), 1, atol=1e-4)
    accuracy = float((probs.argmax(axis=1) == y).mean())
    assert accuracy == pytest.approx(summary["best_val_accuracy"], abs=1e-9)
    best_logged = max(float(r["val_accuracy"]) for r in csv.DictReader((run_dir / "history.csv").open()))
    assert accuracy == pytest.approx(best_logged, abs=1e-6)


def test_rerun_resumes_instead_of_starting_over(tiny_run, sample_manifest):
    run_dir, _ = tiny_run
    cfg = TrainConfig(manifest=str(sample_manifest), model="residual_cnn", preprocess={"input_size": 32}, epochs=8,
                      batch_size=8, augment_preset="none", seed=1)
    train(cfg, run_dir, progress=lambda m: None)
    rows = list(csv.DictReader((run_dir / "history.csv").open()))
    assert len(rows) == 8  # a finished run has nothing left to do: no epochs appended


def test_manifest_without_val_split_is_refused(tmp_path, sample_manifest):
    from wbcedge.data import write_manifest
    records = read_manifest(sample_manifest)
    for r in records:
        r.split = "train"
    path = tmp_path / "m.csv"
    write_manifest(records, path)
    with pytest.raises(ValueError, match="val"):
        train(TrainConfig(manifest=str(path), model="residual_cnn", preprocess={"input_size": 32}, epochs=1), tmp_path / "r",
              progress=lambda m: None)
    assert not (tmp_path / "r").exists()  # a failed start leaves no empty run folder


def test_more_epochs_on_a_finished_run_says_how_to_train_further(tiny_run, sample_manifest):
    run_dir, _ = tiny_run
    before = (run_dir / "history.csv").read_text()
    cfg = TrainConfig(manifest=str(sample_manifest), model="residual_cnn", preprocess={"input_size": 32}, epochs=12,
                      batch_size=8, augment_preset="none", seed=1)
    with pytest.raises(ValueError) as exc:
        train(cfg, run_dir, progress=lambda m: None)
    message = str(exc.value)
    assert "finished after 8 epochs" in message
    assert f"--weights {run_dir / 'model.keras'} --epochs 4 --out {run_dir}-more" in message
    assert (run_dir / "history.csv").read_text() == before


def test_training_normalises_stain_after_the_augmentation_as_the_device_does(sample_manifest, tmp_path):
    """A colour shift made by the augmentation reaches the model normalised away, as a shifted
    crop from another microscope reaches it on the device; and such a run trains end to end."""
    import tensorflow as tf

    from wbcedge.preprocess import read_image, stain_normalise_inputs, stain_reference_of, to_model_input
    from wbcedge.train.augment import AugmentConfig, make_augment
    from wbcedge.train.training import _stain_normalised

    paths = [r.path for r in read_manifest(sample_manifest)][:6]
    reference = stain_reference_of([read_image(p) for p in paths])
    spec = PreprocessSpec(input_size=32, stain_reference=reference)
    raw = np.stack([to_model_input(read_image(p), PreprocessSpec(input_size=32)) for p in paths])
    tint = make_augment(AugmentConfig.from_dict({"white_balance": 0.3}, "none"))
    shifted = tint(tf.constant(raw, tf.float32), tf.constant([1, 2], tf.int64))
    out = _stain_normalised(tf, shifted, spec).numpy()
    assert out.shape == raw.shape
    np.testing.assert_allclose(out, stain_normalise_inputs(np.clip(np.rint(shifted.numpy()), 0, 255).astype(np.uint8), spec))
    device = np.stack([to_model_input(read_image(p), spec) for p in paths]).astype(float)
    # the tint is gone after normalisation (up to rounding and clipping), as on the device
    assert np.abs(out - device).mean() < np.abs(shifted.numpy() - device).mean() / 3

    cfg = TrainConfig(manifest=str(sample_manifest), model="residual_cnn", epochs=1, batch_size=8,
                      preprocess={"input_size": 32, "stain_reference": list(reference)}, augment={"white_balance": 0.3},
                      augment_preset="none", seed=1)
    assert cfg.stain_after_augment
    summary = train(cfg, tmp_path / "run", progress=lambda m: None)
    assert np.isfinite(summary["best_val_accuracy"])
    assert PreprocessSpec.load(tmp_path / "run").stain_reference == tuple(reference)
