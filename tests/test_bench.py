"""`wbcedge bench`: floors, compare, the Keras baseline, no TensorFlow on the device path, stage times that add up.

The bundle is made here: a tiny Keras model (32 px, one convolution) exported to
fp32 and int8 TFLite with wbcedge.train.convert and a manifest written by
wbcedge.bundle.write_manifest, plus its run folder for the Keras baseline. Without
TensorFlow the built-in default bundle is used when it exists; otherwise the
tests that need a bundle skip.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from wbcedge.bench import runner as bench
from wbcedge.bench import BenchError
from wbcedge.bench.floors import Floor, check_floors, parse_floor
from wbcedge.bench.runner import BenchOptions
from wbcedge.bench.tables import compare
from wbcedge.bundle import DEFAULT_BUNDLE, load_bundle, write_manifest
from wbcedge.cli import app

REPO = Path(__file__).resolve().parent.parent
FAST = ["--threads", "1", "--runs", "20", "--warmup", "3", "--repeats", "2"]
HAS_TF = importlib.util.find_spec("tensorflow") is not None


def _make_bundle(root: Path) -> tuple[Path, Path]:
    """A real bundle (fp32 + int8 TFLite) of a tiny model, and the run folder it came from."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    from wbcedge.train import convert
    from wbcedge.labels import CLASSES
    from wbcedge.preprocess import PreprocessSpec, read_image, to_model_input

    spec = PreprocessSpec(input_size=32)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(len(CLASSES), activation="softmax")(x))
    calibration = np.stack([to_model_input(read_image(p), spec) for p in bench.sample_crop_paths()])

    run = root / "runs" / "tiny-run"
    run.mkdir(parents=True)
    model.save(run / "model.keras")
    spec.save(run)
    (run / "labels.json").write_text(json.dumps(list(CLASSES)))

    folder = root / "bundle"
    folder.mkdir()
    models = []
    for precision in ("int8", "fp32"):
        name = f"model_{precision}.tflite"
        convert.to_tflite(model, folder / name, precision, calibration if precision == "int8" else None)
        models.append({"file": name, "backend": "tflite", "precision": precision, "within_budget": True,
                       "accuracy": 0.2, "size_bytes": (folder / name).stat().st_size})
    (folder / "labels.json").write_text(json.dumps(list(CLASSES)))
    spec.save(folder)
    write_manifest(folder, {"classes": list(CLASSES), "preprocess": spec.to_dict(), "confidence_threshold": 0.0,
                            "models": models, "default_model": "model_int8.tflite", "deployable": True})
    return folder, run


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict:
    if HAS_TF:
        folder, run = _make_bundle(tmp_path_factory.mktemp("bench"))
        return {"bundle": folder, "run": run}
    if (DEFAULT_BUNDLE / "manifest.json").is_file():
        return {"bundle": DEFAULT_BUNDLE, "run": None}
    pytest.skip("needs TensorFlow to build a test bundle (pip install 'wbcedge[export]'), "
                "or the built-in default bundle wbcedge/default_bundle, and this install has neither")


@pytest.fixture(scope="session")
def frames(tmp_path_factory) -> Path:
    """Frames the real locator finds cells in: 2x2 tiles of the PBC sample crops, shrunk like a camera field."""
    folder = tmp_path_factory.mktemp("frames")
    crops = [cv2.imread(str(p))[:360, :360] for p in bench.sample_crop_paths()]
    for k in range(3):
        tiles = crops[4 * k:4 * k + 4]
        frame = np.vstack([np.hstack(tiles[:2]), np.hstack(tiles[2:])])
        cv2.imwrite(str(folder / f"field{k}.jpg"), cv2.resize(frame, (480, 480), interpolation=cv2.INTER_AREA))
    return folder


@pytest.fixture(scope="session")
def first_result(tiny, tmp_path_factory) -> Path:
    """One real benchmark run (int8 TFLite, 1 thread) kept as the 'old' result for --compare."""
    out = tmp_path_factory.mktemp("first") / "old.json"
    res = CliRunner().invoke(app, ["bench", str(tiny["bundle"]), "--backends", "tflite", "--precision", "int8",
                                   *FAST, "--no-pipeline", "--no-baseline", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


# ------------------------------------------------------------------ floors: parsing

def test_floor_syntax_equals_means_the_good_direction_and_selectors_narrow_rows() -> None:
    assert parse_floor("fps=30") == Floor("fps=30", "fps", ">=", 30.0)
    assert parse_floor("speedup=10").op == ">="
    assert parse_floor("p50_ms=5").op == "<="
    f = parse_floor("tflite/int8/2: p99_ms <= 8")
    assert (f.metric, f.op, f.value, f.selector) == ("p99_ms", "<=", 8.0, ("tflite", "int8", "2"))
    assert f.matches({"backend": "tflite", "precision": "int8", "threads": 2})
    assert not f.matches({"backend": "tflite", "precision": "int8", "threads": 1})
    assert parse_floor("*/fp32:size_mb<=4").matches({"backend": "onnx", "precision": "fp32", "threads": 1})


@pytest.mark.parametrize("text, expected", [("fps>30", "not understood"), ("speed=10", "unknown metric 'speed'"),
                                            ("p50_ms<=fast", "not understood")])
def test_bad_floors_say_what_the_form_is(text: str, expected: str) -> None:
    with pytest.raises(BenchError, match=expected) as info:
        parse_floor(text)
    assert "METRIC" in str(info.value) or "known" in str(info.value)


def test_check_floors_names_each_broken_row_and_floors_that_cannot_be_checked() -> None:
    result = {"rows": [{"backend": "tflite", "precision": "int8", "threads": 1, "p50_ms": 2.0, "speedup": 12.0,
                        "accuracy": 0.95},
                       {"backend": "tflite", "precision": "fp32", "threads": 1, "p50_ms": 6.0, "speedup": 4.0,
                        "accuracy": 0.96}],
              "pipeline": None}
    broken = check_floors(result, [parse_floor(t) for t in
                                   ("p50_ms<=5", "speedup=10", "tflite/int8:speedup=10", "accuracy=95.5", "fps=30",
                                    "onnx:p50_ms<=5")])
    assert broken == [
        "tflite/fp32/1: p50_ms = 6, floor p50_ms <= 5 (from --floor p50_ms<=5)",
        "tflite/fp32/1: speedup = 4, floor speedup >= 10 (from --floor speedup=10)",
        "tflite/int8/1: accuracy = 95, floor accuracy >= 95.5 (from --floor accuracy=95.5)",
        "--floor fps=30 could not be checked: the pipeline was not run (--no-pipeline)",
        "--floor onnx:p50_ms<=5 could not be checked: nothing benchmarked matches onnx",
    ]
    assert check_floors(result, [parse_floor("tflite/int8:p50_ms<=5")]) == []


# ------------------------------------------------------------------ the real thing

def test_bench_compare_prints_new_over_old_and_a_broken_floor_exits_1(tiny, first_result, tmp_path) -> None:
    out = tmp_path / "new.json"
    res = CliRunner().invoke(app, ["bench", str(tiny["bundle"]), "--backends", "tflite", *FAST, "--no-pipeline",
                                   "--no-baseline", "--compare", str(first_result), "--out", str(out),
                                   "--floor", "p50_ms<=0.000001", "--floor", "throughput=0.001"])
    assert res.exit_code == 1, res.output
    assert "new / old" in res.output and "tflite int8" in res.output
    assert "tflite/fp32/1: only in the new result" in res.output
    assert "tflite/int8/1: p50_ms =" in res.output and "floor p50_ms <= 1e-06" in res.output
    assert "tflite/fp32/1: p50_ms =" in res.output
    new = json.loads(out.read_text())
    assert new["format"] == "wbcedge-bench"
    assert [(r["backend"], r["precision"], r["threads"]) for r in new["rows"]] == [("tflite", "int8", 1),
                                                                                  ("tflite", "fp32", 1)]
    row = new["rows"][0]
    for key in ("load_ms", "first_ms", "p50_ms", "p90_ms", "p99_ms", "throughput_per_s", "rss_peak_mb",
                "size_bytes", "spread_pct"):
        assert row[key] is not None and row[key] >= 0, key
    assert row["timed_calls"] == 40 and len(row["p50_blocks_ms"]) == 2 and len(row["load_ms_rounds"]) == 2
    assert row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
    assert row["xnnpack"]["on"] is True
    assert new["machine"]["cpu"] and new["machine"]["python"]
    (ratios,) = [r["ratios"] for r in new["compare"]["rows"]]
    assert ratios["size_bytes"] == 1.0 and ratios["p50_ms"] > 0
    assert len(new["floors"]["broken"]) == 2

    ok = CliRunner().invoke(app, ["bench", str(tiny["bundle"]), "--backends", "tflite", "--precision", "int8",
                                  *FAST, "--no-pipeline", "--no-baseline", "--out", str(tmp_path / "ok.json"),
                                  "--floor", "tflite/int8:p50_ms<=10000", "--floor", "size_mb<=5"])
    assert ok.exit_code == 0, ok.output
    assert "all 2 floors met" in ok.output


def test_accuracy_on_labelled_crops_comes_with_its_interval(tiny, tmp_path) -> None:
    out = tmp_path / "acc.json"
    res = CliRunner().invoke(app, ["bench", str(tiny["bundle"]), "--backends", "tflite", *FAST, "--no-pipeline",
                                   "--no-baseline", "--data", str(bench.SAMPLE_CROPS), "--out", str(out),
                                   "--floor", "accuracy>=101"])
    assert res.exit_code == 1, res.output
    assert "accuracy = " in res.output and "floor accuracy >= 101" in res.output
    for row in json.loads(out.read_text())["rows"]:
        assert row["accuracy_source"] == "--data" and row["accuracy_n"] == 20
        lo, hi = row["accuracy_ci95"]
        assert 0 <= lo <= row["accuracy"] <= hi <= 1


def test_compare_matches_rows_by_backend_precision_threads() -> None:
    def res(rows, cpu="A"):
        return {"rows": rows, "baseline": None, "pipeline": None, "machine": {"cpu": cpu}, "bundle": {"path": "b"},
                "created": "then"}
    row = {"backend": "tflite", "precision": "int8", "threads": 2, "p50_ms": 2.0, "p90_ms": 3.0, "p99_ms": 4.0,
           "throughput_per_s": 400.0, "load_ms": 10.0, "first_ms": 5.0, "rss_peak_mb": 50.0, "size_bytes": 100}
    faster = {**row, "p50_ms": 1.0, "throughput_per_s": 800.0}
    cmp = compare(res([faster, {**row, "threads": 1}]), res([row], cpu="B"))
    assert cmp["rows"][0]["ratios"]["p50_ms"] == 0.5 and cmp["rows"][0]["ratios"]["throughput_per_s"] == 2.0
    assert cmp["unmatched"] == ["tflite/int8/1: only in the new result"]
    assert "different machines" in cmp["notes"][0]


def test_bench_refuses_what_the_bundle_lacks_and_bad_options(tiny) -> None:
    b = load_bundle(tiny["bundle"])
    if any(m["backend"] == "onnx" for m in b.models):
        pytest.skip("the bundle in use has ONNX files")
    with pytest.raises(BenchError, match="has no backend 'onnx'.*it has: tflite/int8"):
        bench.select_models(b, ("onnx",), None)
    res = CliRunner().invoke(app, ["bench", str(tiny["bundle"]), "--threads", "two"])
    assert res.exit_code == 2 and "--threads two" in res.output
    res = CliRunner().invoke(app, ["bench", str(tiny["bundle"]), "--floor", "fps>>3"])
    assert res.exit_code == 2 and "not understood" in res.output


BLOCKER = '''
import sys
class _NoTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras", "tf_keras"):
            raise ImportError(f"test blocker: the device path imported {name}")
        return None
sys.meta_path.insert(0, _NoTensorFlow())
'''


def test_device_path_never_imports_tensorflow_and_stage_times_add_up(tiny, frames, tmp_path) -> None:
    """TensorFlow is blocked in the CLI and in every worker (sitecustomize on PYTHONPATH reaches them all)."""
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-c", "from wbcedge.cli import main; main()", "bench", str(tiny["bundle"]),
                           "--precision", "int8", *FAST, "--frames", str(frames), "--pipeline-frames", "40",
                           "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert result["baseline"] is None
    assert not result["tensorflow_imported_by_device_path"]
    assert all(r["tensorflow_imported"] is False for r in result["rows"])
    p = result["pipeline"]
    assert p["tensorflow_imported"] is False
    assert p["frames"] == 40 and p["cells_per_frame"] > 0
    assert set(p["stage_ms_per_frame"]) == {"decode", "focus", "locate", "preprocess", "infer", "bookkeeping"}
    assert p["stage_ms_per_frame"]["infer"] > 0
    # No --profile: like `wbcedge run` without one, frames are not focus-scored (the stage costs ~nothing).
    assert p["stage_ms_per_frame"]["focus"] < 0.05 * p["stage_ms_per_frame"]["decode"]
    # The stages account for the end-to-end time: what is left is the loop's own overhead.
    assert abs(p["stages_ms_per_frame"] - p["wall_ms_per_frame"]) <= 0.05 * p["wall_ms_per_frame"]
    assert abs(p["stage_gap_pct"]) <= 5
    assert p["fps"] == pytest.approx(1000 / p["wall_ms_per_frame"])
    assert "end to end" in proc.stdout and "stages miss the wall clock by" in proc.stdout


@pytest.mark.train
@pytest.mark.skipif(not HAS_TF, reason="the Keras baseline needs TensorFlow")
def test_keras_baseline_is_measured_and_speedup_floor_checked(tiny, tmp_path) -> None:
    if tiny["run"] is None:
        pytest.skip("no run folder for the bundle in use")
    out = tmp_path / "k.json"
    # Few runs: Keras model.predict costs tens of ms a call, and importing TensorFlow seconds.
    res = CliRunner().invoke(app, ["bench", str(tiny["bundle"]), "--precision", "int8", "--threads", "1",
                                   "--runs", "5", "--warmup", "1", "--repeats", "1", "--no-pipeline",
                                   "--keras-run", str(tiny["run"]), "--out", str(out), "--floor", "speedup=1"])
    assert res.exit_code == 0, res.output
    result = json.loads(out.read_text())
    base = result["baseline"]
    # The headline is the fair baseline, the compiled predict_on_batch; model.predict is the second figure.
    assert base["backend"] == "keras" and base["mode"] == "predict_on_batch" and base["p50_ms"] > 0
    assert base["model_predict"]["p50_ms"] > 0
    (row,) = result["rows"]
    assert row["speedup"] == pytest.approx(base["p50_ms"] / row["p50_ms"])
    assert row["speedup_vs_model_predict"] == pytest.approx(base["model_predict"]["p50_ms"] / row["p50_ms"])
    assert "keras predict_on_batch" in res.output and "vs Keras" in res.output


def test_keras_run_is_found_from_the_bundles_source_run(tmp_path) -> None:
    run = tmp_path / "training" / "runs" / "edge-1"
    run.mkdir(parents=True)
    (run / "model.keras").write_bytes(b"")
    b = bench.Bundle(tmp_path, {"source_run": "edge-1"})
    found, how = bench.find_keras_run(b, None, cwd=tmp_path)
    assert found == run and "edge-1" in how
    missing, how = bench.find_keras_run(bench.Bundle(tmp_path, {"source_run": "gone"}), None, cwd=tmp_path)
    assert missing is None and "--keras-run" in how
    with pytest.raises(BenchError, match="not a run folder"):
        bench.find_keras_run(b, tmp_path / "nowhere", cwd=tmp_path)


def test_latency_stats_and_spread() -> None:
    s = bench.latency_stats([[1.0] * 9 + [10.0], [2.0] * 10])
    assert s["p50_blocks_ms"] == [1.0, 2.0] and s["spread_pct"] == pytest.approx(100 * (2 - 1) / 1.5)
    assert s["timed_calls"] == 20 and s["p99_ms"] > s["p50_ms"]
    assert s["throughput_per_s"] == pytest.approx(1000 / np.mean([1.0] * 9 + [10.0] + [2.0] * 10))


def test_machine_info_notes_what_it_cannot_read(monkeypatch, tmp_path) -> None:
    from wbcedge.bench import machine

    monkeypatch.setattr(machine, "GOVERNOR_FILE", tmp_path / "missing")
    info = machine.machine_info()
    assert info["cpu"] and info["cores_usable"] >= 1 and info["python"] and info["arch"]
    assert info["cpu_governor"] is None and any("governor" in n for n in info["notes"])
    assert "Python" in machine.machine_line(info)
    t = machine.decode_throttled("throttled=0x50005")
    assert t["ok"] is False and "under-voltage now" in t["flags"] and "throttling has occurred" in t["flags"]
    assert machine.decode_throttled("throttled=0x0")["ok"] is True


def test_help_shows_the_floor_syntax() -> None:
    res = CliRunner().invoke(app, ["bench", "--help"])
    assert res.exit_code == 0, res.output
    assert "--floor" in res.output and "speedup" in res.output


def test_bench_options_defaults_are_sane() -> None:
    o = BenchOptions()
    assert o.runs >= 50 and o.repeats == 3 and o.pipeline_frames >= 200
    assert 1 in bench.default_threads()


def test_bench_results_gather_in_a_folder_and_a_profile_sets_the_focus_stage(tmp_path, repo_root) -> None:
    from wbcedge.bench.runner import _run_settings
    assert bench.default_result_path(0).parent == Path("runs") / "bench"
    assert _run_settings(None) == {"blur_threshold": None, "um_per_px": None}
    usb = _run_settings(repo_root / "device" / "profiles" / "usb-microscope.toml")
    assert usb["blur_threshold"] == 40 and usb["um_per_px"] is None
