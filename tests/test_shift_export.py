"""Export with the feature output: every file carries it, the gate checks it, the bundle holds the reference."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from wbcedge import data  # noqa: E402
from wbcedge.bundle import load_bundle, verify_bundle  # noqa: E402
from wbcedge.device.runtime import Classifier  # noqa: E402
from wbcedge.device.shift import REFERENCE_FILE, ShiftReference  # noqa: E402
from wbcedge.preprocess import PreprocessSpec  # noqa: E402
from wbcedge.train.export import ExportOptions, export  # noqa: E402
from wbcedge.train.shift_reference import feature_check  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, repo_root):
    """A tiny untrained CNN (32 px, 16 features) as a run folder, and a manifest with train, val and test rows."""
    import keras

    from wbcedge.labels import CLASSES

    folder = tmp_path_factory.mktemp("tiny-shift")
    records = data.index_folder(repo_root / "wbcedge" / "samples" / "pbc").records
    data.split_records(records, seed=0, test_per_class=1, val_fraction=0.0)
    aug = data.augment_records(records, folder / "aug", per_class=12, seed=0, workers=1).records
    for i, r in enumerate(r for r in aug if r.split == "train" and r.source):
        if i % 2 == 0:
            r.split = "val"
    manifest = folder / "manifest.csv"
    data.write_manifest(aug, manifest)

    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(16, activation="relu")(x)
    model = keras.Model(inputs, keras.layers.Dense(len(CLASSES), activation="softmax", name="probs")(x))
    run = folder / "run"
    run.mkdir()
    model.save(run / "model.keras")
    PreprocessSpec(input_size=32).save(run)
    (run / "labels.json").write_text(json.dumps(list(CLASSES)))
    (run / "config.json").write_text(json.dumps({"manifest": str(manifest), "batch_size": 8}))
    return run, manifest


def test_every_exported_file_has_the_feature_output_and_the_gate_checks_it(tiny_run, tmp_path):
    run, manifest = tiny_run
    report = export(run, tmp_path / "b", ExportOptions(data=str(manifest), calib=40, force=True),
                    progress=lambda m: None)
    assert verify_bundle(tmp_path / "b") == []
    bundle = load_bundle(tmp_path / "b")
    assert REFERENCE_FILE in bundle.manifest["files"] and bundle.shift_reference_path is not None
    assert bundle.manifest["domain_shift"]["feature_dim"] == 16
    assert bundle.manifest["calibration"]["fitted_on"] == "val" and bundle.temperature > 0
    for entry in report["files"]:
        ref = ShiftReference.load(bundle.shift_reference_path, entry["file"])
        assert ref.feature_dim == 16 and len(ref.session_thresholds) == 100 and ref.cell_threshold > 0
        assert entry["file"] in bundle.manifest["domain_shift"]["thresholds"]
        f = entry["features"]
        assert f["present"] and f["cosine_mean"] > 0.95, entry["file"]
        assert "ood_score_correlation" in f
        assert Classifier(tmp_path / "b" / entry["file"]).has_features
    assert "Feature output" in (tmp_path / "b" / "report.md").read_text()


def test_feature_gate_fails_features_that_do_not_match_the_float_model():
    rng = np.random.default_rng(0)
    floats = np.abs(rng.normal(size=(50, 16))).astype(np.float32)
    images = rng.integers(0, 255, (50, 8, 8, 3), dtype=np.uint8)
    ref = ShiftReference(floats.mean(0, keepdims=True), np.eye(16), np.full((1, 15), 100.0), np.eye(15),
                         np.ones(2), 1.5, np.full(100, 1.2))
    ok, broken = feature_check(floats + 0.01, floats, ref, images, 0.95, 0.9)
    assert not broken and ok["cosine_mean"] > 0.99 and ok["ood_score_correlation"] > 0.99
    _, broken = feature_check(rng.permutation(floats), floats, ref, images, 0.95, 0.9)  # another cell's features
    assert any("cosine" in b for b in broken) and any("correlation" in b for b in broken)
    _, broken = feature_check(None, floats, ref, images, 0.95, 0.9)
    assert broken == ["the file has no feature output (the shift check needs it)"]
