"""The domain-shift alarm and calibrated confidence: BCCD frames raise it, PBC crops do not, old bundles still run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from wbcedge.bundle import DEFAULT_BUNDLE, load_bundle, write_manifest
from wbcedge.device.confidence import apply_temperature, fit_temperature
from wbcedge.device.pipeline import UNIDENTIFIED, CellPipeline
from wbcedge.device.runtime import Classifier
from wbcedge.device.session import CountOptions, count_cells
from wbcedge.device.shift import (SHIFT_OFF, ShiftMonitor, ShiftReference, calibrate, colour_statistics,
                                  fit_reference, save_reference)
from wbcedge.evaluation.metrics import expected_calibration_error, plot_reliability
from wbcedge.preprocess import read_image, to_model_input

SAMPLES = Path(__file__).resolve().parent.parent / "wbcedge" / "samples"


@pytest.fixture(scope="module")
def bccd_session(tmp_path_factory):
    """`wbcedge run` on the six built-in BCCD frames with the built-in bundle."""
    out = tmp_path_factory.mktemp("shift") / "bccd"
    warnings = []
    return count_cells(CountOptions(out=out), on_warning=warnings.append), warnings


def test_builtin_bundle_has_a_feature_output_and_reference():
    bundle = load_bundle()
    assert bundle.shift_reference_path is not None and bundle.temperature > 0
    for m in bundle.models:
        clf = Classifier(bundle.path / m["file"])
        assert clf.has_features, m["file"]
        probs, feats = clf.predict_with_features(np.zeros((2, clf.input_size, clf.input_size, 3), np.uint8))
        assert probs.shape == (2, len(bundle.classes)) and feats.shape[0] == 2 and feats.shape[1] > len(bundle.classes)


def test_bccd_frames_raise_the_alarm_everywhere(bccd_session):
    result, warnings = bccd_session
    shift = result.domain_shift
    assert not any("shift check is off" in w for w in warnings)
    assert shift["alarm"] is True and shift["cells"] >= shift["min_cells"] and shift["score"] > shift["threshold"]
    doc = json.loads((result.session_dir / "differential.json").read_text())
    assert {"score", "threshold", "alarm", "cells"} <= set(doc["domain_shift"]) and doc["domain_shift"]["alarm"]
    assert "not valid for this microscope" in doc["domain_shift"]["message"]
    assert "wbcedge adapt" in doc["domain_shift"]["message"]
    html = (result.session_dir / "report.html").read_text()
    assert 'class="banner"' in html and "cells look unlike the model&#x27;s training data" in html
    assert "not valid for this microscope" in html
    from wbcedge.device.records import read_cells
    cells = read_cells(result.session_dir)
    assert cells and all(c.ood_score is not None for c in cells)
    # the cells beyond the per-cell limit are unidentified whatever their confidence
    limit = ShiftReference.load(load_bundle().shift_reference_path, result.meta["model_file"]).cell_threshold
    assert all(c.label == UNIDENTIFIED for c in cells if c.ood_score > limit)


def test_an_alarmed_session_withholds_the_high_and_low_flags(bccd_session):
    from wbcedge.device.differential import differential, withhold_flags
    from wbcedge.device.report import rebuild_outputs

    result, _ = bccd_session
    assert result.shift_alarm
    for doc in (result.differential, json.loads((result.session_dir / "differential.json").read_text())["differential"]):
        assert doc["flag_basis"].startswith("withheld") and all(t["flag"] == "" for t in doc["types"].values())
    rebuild_outputs(result.session_dir)  # rebuilt from the database: still withheld
    rebuilt = json.loads((result.session_dir / "differential.json").read_text())["differential"]
    assert all(t["flag"] == "" for t in rebuilt["types"].values()) and rebuilt["flag_basis"].startswith("withheld")
    # without an alarm the same counts are flagged as usual
    plain = differential(["eosinophil"] * 3 + ["unidentified"])
    assert plain["types"]["eosinophil"]["flag"] == "high" and plain["types"]["neutrophil"]["flag"] == "low"
    held = withhold_flags(plain)
    assert held["types"]["eosinophil"]["percent"] == plain["types"]["eosinophil"]["percent"]
    assert plain["types"]["eosinophil"]["flag"] == "high"  # the original is not changed


def test_pbc_sample_crops_raise_no_alarm():
    bundle = load_bundle()
    pipeline = CellPipeline(bundle)
    crops = sorted((SAMPLES / "pbc").glob("*/*.jpg"))
    x = np.stack([to_model_input(read_image(p), bundle.spec) for p in crops])
    probs, scores = pipeline.classify(x)
    monitor = pipeline.new_monitor()
    monitor.add(scores)
    state = monitor.state()
    assert state["cells"] == len(crops) >= state["min_cells"] and state["judged"]
    assert state["alarm"] is False, state
    assert np.allclose(probs.sum(1), 1, atol=1e-4)
    truth = [p.parent.name for p in crops]
    assert np.mean([bundle.classes[k] == t for k, t in zip(probs.argmax(1), truth)]) >= 0.9


def test_strict_run_exits_with_the_documented_code(tmp_path):
    from wbcedge.cli import app
    from wbcedge.errors import DOMAIN_SHIFT_EXIT, EXIT_CODES

    result = CliRunner().invoke(app, ["run", "--out", str(tmp_path / "s"), "--strict"])
    assert result.exit_code == DOMAIN_SHIFT_EXIT == 7 and "domain-shift" in EXIT_CODES[7]
    assert "DOMAIN SHIFT" in result.output
    assert CliRunner().invoke(app, ["run", "--out", str(tmp_path / "t")]).exit_code == 0


def one_output_bundle(folder: Path) -> Path:
    """The built-in bundle as it was before the shift check: one fp32 ONNX file with the probabilities only."""
    onnx = pytest.importorskip("onnx")
    folder.mkdir()
    for name in ("labels.json", "preprocess.json", "report.json", "report.md"):
        shutil.copy(DEFAULT_BUNDLE / name, folder / name)
    proto = onnx.load(str(DEFAULT_BUNDLE / "model_fp32.onnx"))
    keep = [o for o in proto.graph.output if o.type.tensor_type.shape.dim[-1].dim_value == 5]
    del proto.graph.output[:]
    proto.graph.output.extend(keep)
    onnx.save(proto, str(folder / "model_fp32.onnx"))
    manifest = json.loads((DEFAULT_BUNDLE / "manifest.json").read_text())
    for key in ("domain_shift", "calibration", "files", "format", "format_version", "created"):
        manifest.pop(key, None)
    manifest["models"] = [m for m in manifest["models"] if m["file"] == "model_fp32.onnx"]
    manifest["default_model"] = "model_fp32.onnx"
    write_manifest(folder, manifest)
    return folder


def test_old_one_output_bundle_runs_with_the_shift_check_off(tmp_path):
    bundle = one_output_bundle(tmp_path / "old")
    assert not Classifier(bundle / "model_fp32.onnx").has_features
    warnings = []
    result = count_cells(CountOptions(bundle=bundle, out=tmp_path / "s"), on_warning=warnings.append)
    assert warnings.count(SHIFT_OFF) == 1
    assert result.differential["classified"] + result.differential["unidentified"] > 0
    assert result.domain_shift["alarm"] is None and not result.shift_alarm
    assert "shift check is off" in (result.session_dir / "report.html").read_text()


# ---------------------------------------------------------------- the maths, on generated data

def generated_reference(rng, dim=16, n=3000):
    """A reference fitted on three Gaussian classes, colour statistics of random grey-ish images."""
    cov = np.diag(np.linspace(0.2, 3.0, dim))
    labels = rng.integers(0, 3, n)
    centres = rng.normal(0, 4, (3, dim))
    feats = centres[labels] + rng.multivariate_normal(np.zeros(dim), cov, n)
    images = np.clip(rng.normal(180, 20, (n, 8, 8, 3)), 0, 255).astype(np.uint8)
    means, whiten = fit_reference(feats[:2000], labels[:2000], 3)
    cmeans, cwhiten = fit_reference(colour_statistics(images[:2000]), labels[:2000], 3, 0.01)
    unscaled = ShiftReference(means, whiten, cmeans, cwhiten, np.ones(2), 0.0, np.ones(1))
    base = ShiftReference(means, whiten, cmeans, cwhiten, np.median(unscaled.parts(feats[2000:], images[2000:]), 0),
                          0.0, np.ones(1))
    return base, feats[2000:], images[2000:]


def test_mahalanobis_scores_separate_a_shifted_cloud_and_sessions_calibrate():
    rng = np.random.default_rng(0)
    base, feats, images = generated_reference(rng)
    ref = calibrate(base, base.cell_scores(feats, images), seed=1)
    inlier = ref.cell_scores(feats, images)
    assert 0.9 < np.median(inlier) < 1.3
    assert np.all(np.diff(ref.session_thresholds) <= 1e-12) and ref.session_threshold(10_000) == ref.session_thresholds[-1]
    shifted = ref.cell_scores(feats + 3.0, images)
    assert (shifted > ref.cell_threshold).mean() > 0.9
    tinted = ref.cell_scores(feats, np.clip(images.astype(int) + (0, 0, 60), 0, 255).astype(np.uint8))
    assert (tinted > ref.cell_threshold).mean() > 0.9   # the colour part sees a stain the features do not
    quiet, loud = ShiftMonitor(ref), ShiftMonitor(ref)
    quiet.add(inlier[:50])
    loud.add(shifted[:50])
    assert not quiet.alarm and loud.alarm
    few = ShiftMonitor(ref)
    few.add(shifted[:ref.min_cells - 1])
    assert not few.alarm and not few.state()["judged"]


def test_reference_round_trips_through_npz_with_thresholds_per_file(tmp_path):
    rng = np.random.default_rng(1)
    base, feats, images = generated_reference(rng, dim=8, n=2400)
    a = calibrate(base, base.cell_scores(feats, images))
    b = calibrate(base, 1.5 * base.cell_scores(feats, images))
    path = save_reference(tmp_path / "reference.npz", {"a.tflite": a, "b.onnx": b})
    back = ShiftReference.load(path, "b.onnx")
    np.testing.assert_allclose(back.cell_scores(feats, images), a.cell_scores(feats, images), rtol=1e-5)
    assert back.cell_threshold == b.cell_threshold and ShiftReference.load(path, "a.tflite").cell_threshold == a.cell_threshold
    with pytest.raises(ValueError, match="no thresholds for c.onnx"):
        ShiftReference.load(path, "c.onnx")
    with pytest.raises(ValueError, match="another model"):
        a.cell_scores(np.zeros((1, 9)), images[:1])


def test_temperature_fit_recovers_overconfidence_and_lowers_ece(tmp_path):
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 2, (4000, 5))
    true_p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(5, p=p) for p in true_p])
    over = np.exp(3 * logits) / np.exp(3 * logits).sum(1, keepdims=True)   # 3x too sharp
    t = fit_temperature(over, y)
    assert 2.5 < t < 3.5
    fixed = apply_temperature(over, t)
    assert (fixed.argmax(1) == over.argmax(1)).all()
    assert expected_calibration_error(y, fixed) < 0.5 * expected_calibration_error(y, over)
    assert expected_calibration_error(y, true_p) < 0.03
    pytest.importorskip("matplotlib", reason="the reliability diagram needs the report extra")
    path = plot_reliability(tmp_path / "reliability.png", y, {"raw": over, "scaled": fixed}, "generated")
    assert path.stat().st_size > 1000


def test_live_window_line_shows_the_alarm_state():
    from wbcedge.device.display import shift_banner

    rng = np.random.default_rng(3)
    base, feats, images = generated_reference(rng, dim=8, n=2400)
    ref = calibrate(base, base.cell_scores(feats, images))
    assert shift_banner(None)[0] == "shift check off"
    monitor = ShiftMonitor(ref)
    monitor.add(ref.cell_scores(feats[:2], images[:2]))
    assert shift_banner(monitor)[0].startswith("shift check: 2/5 cells")
    monitor.add(ref.cell_scores(feats[2:40], images[2:40]))
    assert shift_banner(monitor)[0].startswith("shift ok")
    monitor.add(ref.cell_scores(feats[:200] + 5.0, images[:200]))
    text, colour = shift_banner(monitor)
    assert text.startswith("DOMAIN SHIFT") and colour == (0, 0, 255)
