"""Export of the committed default run: int8 files that check themselves, a gate that bites, bundles that verify."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from wbcedge import data  # noqa: E402
from wbcedge.bundle import load_bundle, verify_bundle  # noqa: E402
from wbcedge.train.export import ExportOptions, GateFailed, export  # noqa: E402
from wbcedge.preprocess import PreprocessSpec  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.train]


def blank_images(run_dir, n=64):
    size = PreprocessSpec.load(run_dir).input_size
    return np.zeros((n, size, size, 3), np.uint8)


@pytest.fixture(scope="module")
def export_manifest(tmp_path_factory, repo_root):
    """The committed sample crops: 2 test images per class; train augmented to 20 per class for calibration."""
    folder = tmp_path_factory.mktemp("export-data")
    records = data.index_folder(repo_root / "wbcedge" / "samples" / "pbc").records
    data.split_records(records, seed=0, test_per_class=2, val_fraction=0.0)
    result = data.augment_records(records, folder / "aug", per_class=20, seed=0, workers=1)
    path = folder / "manifest.csv"
    data.write_manifest(result.records, path)
    return path


@pytest.fixture(scope="module")
def good_bundle(default_run, export_manifest, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / "good"
    report = export(default_run, out, ExportOptions(data=str(export_manifest), calib=100), progress=lambda m: None)
    return out, report


def test_export_writes_a_verified_deployable_bundle(good_bundle):
    out, report = good_bundle
    assert verify_bundle(out) == []
    bundle = load_bundle(out)
    assert bundle.deployable and bundle.classes == json.loads((out / "labels.json").read_text())
    files = {e["file"]: e for e in report["files"]}
    assert set(files) == {"model_fp32.tflite", "model_int8.tflite", "model_fp32.onnx", "model_int8.onnx"}
    tfl = files["model_int8.tflite"]["quantization"]
    assert tfl["fully_integer"] and tfl["input_dtype"] == "uint8" and tfl["per_channel_tensors"] > 0
    onx = files["model_int8.onnx"]["quantization"]
    assert onx["quantize_nodes"] > 0 and onx["per_channel_weights"] > 0 and onx["float_weight_convs"] == 0
    assert json.loads(onx["metadata"]["wbcedge.labels"]) == bundle.classes
    for name, share in (("model_int8.tflite", 0.40), ("model_int8.onnx", 0.41)):
        # 37-40% for this 0.5 M-parameter model: per-channel scales and zero points are
        # ~24% of the int8 TFLite file (docs/export.md); the feature output (docs/shift.md)
        # adds 24 kB to the int8 ONNX file (40.1% of float).
        assert files[name]["size_bytes"] <= share * files[name.replace("int8", "fp32")]["size_bytes"]
        assert files[name]["within_budget"]
        assert files[name]["features"]["present"] and files[name]["features"]["cosine_mean"] > 0.95
    assert bundle.model_entry()["file"] == "model_int8.tflite"
    assert report["calibration"]["images"] == 100


def test_gate_refuses_a_model_calibrated_on_blank_images(default_run, export_manifest, tmp_path):
    blank = blank_images(default_run)
    opts = ExportOptions(data=str(export_manifest), formats=("tflite",), calibration_override=blank)
    with pytest.raises(GateFailed, match="model_int8.tflite") as info:
        export(default_run, tmp_path / "bad", opts, progress=lambda m: None)
    assert "calibration" in str(info.value)
    bundle = load_bundle(tmp_path / "bad")  # written and verifiable, but not deployable
    assert not bundle.deployable
    failed = [e for e in info.value.report["files"] if not e["within_budget"]]
    assert [e["file"] for e in failed] == ["model_int8.tflite"]
    # The runner refuses it before any frame is captured.
    res = subprocess.run([sys.executable, "-m", "wbcedge", "run", "--bundle", str(tmp_path / "bad"),
                          "--out", str(tmp_path / "run")], capture_output=True, text=True)
    assert res.returncode != 0 and "not deployable" in res.stderr
    assert not (tmp_path / "run").exists()


def test_force_marks_deployable_and_keeps_the_failure(default_run, export_manifest, tmp_path):
    opts = ExportOptions(data=str(export_manifest), formats=("tflite",), calibration_override=blank_images(default_run),
                         force=True)
    report = export(default_run, tmp_path / "forced", opts, progress=lambda m: None)
    assert report["forced"] and report["failures"]
    assert load_bundle(tmp_path / "forced").deployable
    assert "OVER BUDGET" in (tmp_path / "forced" / "report.md").read_text()


def test_too_few_calibration_images_is_an_error(default_run, sample_manifest, tmp_path):
    with pytest.raises(ValueError, match="calibration"):
        export(default_run, tmp_path / "b", ExportOptions(data=str(sample_manifest), calib=10), progress=lambda m: None)


# Tampering and unsafe archives: tests/test_bundle.py (device code, runs without TensorFlow).


def test_export_configs_load_and_default_toml_matches_the_defaults(repo_root, tmp_path):
    assert ExportOptions.load(repo_root / "export" / "default.toml") == ExportOptions()
    strict = ExportOptions.load(repo_root / "export" / "strict-clinical.toml")
    assert strict.max_drop < ExportOptions().max_drop and strict.formats == ("tflite",)
    bad = tmp_path / "bad.toml"
    bad.write_text("max_dorp = 1.0\n")
    with pytest.raises(ValueError, match="max_dorp"):
        ExportOptions.load(bad)


def one_class_run(folder, manifest, size=32, always="neutrophil"):
    """A run folder whose tiny Keras model calls every cell `always` (its last bias forces that class)."""
    import keras

    from wbcedge.labels import CLASSES

    folder.mkdir(parents=True)
    bias = np.zeros(len(CLASSES), np.float32)
    bias[CLASSES.index(always)] = 10.0
    model = keras.Sequential([keras.Input((size, size, 3)), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(len(CLASSES), activation="softmax", kernel_initializer="zeros",
                                                 bias_initializer=keras.initializers.Constant(bias))])
    model.save(folder / "model.keras")
    PreprocessSpec(input_size=size).save(folder)
    (folder / "labels.json").write_text(json.dumps(list(CLASSES)))
    (folder / "config.json").write_text(json.dumps({"manifest": str(manifest), "batch_size": 8}))
    return folder


def test_gate_floors_refuse_a_model_that_predicts_one_class(export_manifest, tmp_path):
    run = one_class_run(tmp_path / "one-class", export_manifest)
    out = tmp_path / "bundle"
    with pytest.raises(GateFailed) as exc:
        export(run, out, ExportOptions(int8=False, formats=("tflite",)), progress=lambda m: None)
    message = str(exc.value)
    # fp32 loses nothing against float, so only the absolute floors can catch it; each says by how much.
    assert "accuracy 20.00% is 60.00 points below the floor min_accuracy = 80%" in message
    assert "basophil recall 0.00% is 50.00 points below the floor min_class_recall = 50%" in message
    assert "predictions collapse onto neutrophil: 100.0% of the test predictions but 20.0% of the test images, " \
           "50.0 points over the floor max_share_excess = 30" in message
    assert "neutrophil recall" not in message
    report = exc.value.report
    assert report["files"][0]["accuracy_drop_pp"] == 0 and not report["files"][0]["within_budget"]
    assert not load_bundle(out).deployable
    # The strict settings' floors are higher still; lowered floors let the same model through.
    strict = ExportOptions.load(Path(__file__).resolve().parent.parent / "export" / "strict-clinical.toml")
    assert strict.min_accuracy > ExportOptions().min_accuracy and strict.max_share_excess < 30
    lax = ExportOptions(int8=False, formats=("tflite",), min_accuracy=0, min_class_recall=0, max_share_excess=100)
    assert export(run, tmp_path / "lax", lax, progress=lambda m: None)["failures"] == []


def test_half_the_calibration_crops_are_shown_as_the_run_trained_on_them(default_run, sample_manifest):
    """int8 ranges from clean crops alone clip what another microscope's cells drive the model to:
    every other calibration crop goes through the run's own augmentation, then the spec's stain
    normalisation (the built-in run normalises after augmenting, as the device sees such a cell)."""
    from wbcedge.preprocess import load_inputs
    from wbcedge.train.export import calibration_crops
    from wbcedge.train.shift_reference import run_augmentation

    spec = PreprocessSpec.load(default_run)
    config = json.loads((default_run / "config.json").read_text())
    records = [r for r in data.read_manifest(sample_manifest) if r.split == "train"]
    as_device = load_inputs([r.path for r in records], spec)
    augment = run_augmentation(config)
    assert config["stain_after_augment"] and spec.stain_reference is not None

    def changed(x):
        return [not np.array_equal(a, b) for a, b in zip(x, as_device)]

    assert changed(calibration_crops(records, spec, augment, 0.0, 0, True)) == [False] * len(records)
    half = calibration_crops(records, spec, augment, 0.5, 0, True)
    assert half.shape == as_device.shape and half.dtype == np.uint8
    # odd positions augmented; the run keeps 15% of crops clean, so one may come back as it was
    assert changed(half)[0::2] == [False] * len(records[0::2]) and sum(changed(half)[1::2]) >= len(records[1::2]) - 1
    none = run_augmentation({"augment_preset": "none"})
    assert changed(calibration_crops(records, spec, none, 0.5, 0, True)) == [False] * len(records)
    with pytest.raises(ValueError, match="calib_augmented = 1.5"):
        calibration_crops(records, spec, augment, 1.5, 0, True)


def test_a_calibration_share_outside_0_to_1_is_refused_before_any_model_loads(default_run, tmp_path):
    from typer.testing import CliRunner

    from wbcedge.cli import app

    res = CliRunner().invoke(app, ["export", str(default_run), "--int8", "--calib-augmented", "1.5",
                                   "--out", str(tmp_path / "b")])
    assert res.exit_code == 2 and "--calib-augmented 1.5" in res.output and "from 0 to 1" in res.output
    assert not (tmp_path / "b").exists()


def test_re_export_replaces_an_earlier_bundle(good_bundle, default_run, export_manifest, tmp_path):
    import shutil

    again = tmp_path / "again"
    shutil.copytree(good_bundle[0], again)
    (again / "stale.txt").write_text("from the earlier export")
    export(default_run, again, ExportOptions(data=str(export_manifest), int8=False, formats=("tflite",)),
           progress=lambda m: None)
    assert not (again / "stale.txt").exists() and not (again / "model_int8.tflite").exists()
    assert verify_bundle(again) == []
