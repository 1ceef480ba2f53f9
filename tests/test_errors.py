"""Every expected failure ends as one `error:` line and its documented exit code, never a traceback.

The exit codes are the table in `wbcedge.errors` (and the README). Most cases run the CLI in
this process with typer's CliRunner (the root command catches `WbcedgeError`, so the output is
what a user sees); one runs `python -m wbcedge` to check the console entry point and `--debug`.
No TensorFlow is needed: these run in the device-only install too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from wbcedge.bundle import DEFAULT_BUNDLE, MANIFEST, write_manifest
from wbcedge.errors import EXIT_CODES

SAMPLE_CSV = Path(__file__).resolve().parent.parent / "wbcedge" / "samples" / "frames" / "wbc_types.csv"


def invoke(*args: str):
    from wbcedge.cli import app, bare_camera_means_auto
    return CliRunner().invoke(app, bare_camera_means_auto(list(args)))


def assert_one_error(res, code: int, *words: str) -> str:
    """Exit `code`, exactly one line starting 'error:', holding every word; no traceback."""
    out = res.output
    assert res.exit_code == code, out
    assert code in EXIT_CODES
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out
    for w in words:
        assert w in out.replace("\n", " "), (w, out)
    return errors[0]


def bundle_copy(tmp_path: Path, edit=None) -> Path:
    """A copy of the built-in bundle, edited by `edit(folder, manifest)` and re-hashed so it still verifies."""
    folder = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, folder)
    if edit is not None:
        manifest = json.loads((folder / MANIFEST).read_text())
        edit(folder, manifest)
        meta = {k: v for k, v in manifest.items() if k not in ("format", "format_version", "created", "files")}
        (folder / MANIFEST).unlink()
        write_manifest(folder, meta)
    return folder


# ---------------------------------------------------------------- 5: a runtime that is not installed

def test_missing_tflite_runtime_names_the_pip_command(tmp_path, monkeypatch):
    for name in ("ai_edge_litert", "ai_edge_litert.interpreter", "tflite_runtime", "tflite_runtime.interpreter"):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    res = invoke("run", "--backend", "tflite", "--out", str(tmp_path / "s"))
    assert_one_error(res, 5, "pip install ai-edge-litert", "--backend onnx")
    assert not (tmp_path / "s").exists()


def test_missing_onnxruntime_names_the_pip_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    res = invoke("run", "--backend", "onnx", "--out", str(tmp_path / "s"))
    assert_one_error(res, 5, "pip install onnxruntime")


# ---------------------------------------------------------------- 4: bundles

def test_model_file_the_runtime_cannot_load(tmp_path):
    def damage(folder, manifest):
        model = folder / manifest["default_model"]
        model.write_bytes(model.read_bytes()[:4096])  # truncated, then re-hashed: verifies, cannot load
    folder = bundle_copy(tmp_path, damage)
    res = invoke("run", "--bundle", str(folder), "--out", str(tmp_path / "s"))
    assert_one_error(res, 4, "cannot load this model file", "model_int8.tflite")
    res = invoke("run", "--bundle", str(folder), "--backend", "onnx", "--out", str(tmp_path / "s2"))
    assert res.exit_code == 0, res.output  # the other files of the bundle are fine


@pytest.mark.parametrize("text, words", [
    ("{not json", ["is not valid JSON"]),
    ("[1, 2]", ["holds a list"]),
    ('{"format": "wbcedge-bundle", "format_version": 1}', ["'classes' (list)", "'models' (list)"]),
])
def test_malformed_bundle_manifest(tmp_path, text, words):
    folder = bundle_copy(tmp_path)
    (folder / MANIFEST).write_text(text)
    for args in (["bundle", "inspect", str(folder)], ["bundle", "verify", str(folder)],
                 ["run", "--bundle", str(folder), "--out", str(tmp_path / "s")],
                 ["bench", str(folder), "--no-pipeline", "--no-baseline"]):
        assert_one_error(invoke(*args), 4, "manifest.json", *words)


def test_unknown_preprocess_key_in_a_bundle(tmp_path):
    folder = bundle_copy(tmp_path, lambda f, m: m["preprocess"].update(gamma=2.2))
    res = invoke("run", "--bundle", str(folder), "--out", str(tmp_path / "s"))
    assert_one_error(res, 4, "unknown keys ['gamma']", "re-export")


def test_missing_bundle_and_bad_archive(tmp_path):
    assert_one_error(invoke("bundle", "inspect", str(tmp_path / "nope")), 4, "no such bundle")
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not an archive")
    assert_one_error(invoke("bundle", "unpack", str(junk), str(tmp_path / "dest")), 4, "not a bundle archive")


# ---------------------------------------------------------------- 3: cameras

def test_absent_camera(tmp_path):
    res = invoke("run", "--camera", "57", "--out", str(tmp_path / "s"))
    assert_one_error(res, 3, "could not be opened")
    assert not (tmp_path / "s").exists()


def test_absent_camera_prints_no_opencv_warnings_before_the_error(tmp_path):
    """OpenCV writes its own "[ WARN:0@0.2] ... can't open camera by index" lines straight to stderr
    (CliRunner cannot see them): in a real process only the error line may remain."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "wbcedge", "run", "--camera", "57", "--out", str(tmp_path / "s")],
                         capture_output=True, text=True)
    assert res.returncode == 3 and "could not be opened" in res.stderr
    assert "WARN" not in res.stderr, res.stderr


# ---------------------------------------------------------------- 2: input data and options

def test_bad_data_manifest_csv(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    assert_one_error(invoke("data", "check", str(bad)), 2, "not a wbcedge manifest")
    assert_one_error(invoke("data", "split", str(tmp_path / "missing.csv")), 2, "no such manifest")
    assert_one_error(invoke("evaluate", str(DEFAULT_BUNDLE), "--data", str(bad)), 2, "not a wbcedge manifest")


def test_bad_reference_ranges_and_options(tmp_path):
    ref = tmp_path / "ref.json"
    ref.write_text('{"neutrophil": [70, 40]}')
    assert_one_error(invoke("run", "--reference", str(ref), "--out", str(tmp_path / "s")), 2, "0 <= low <= high")
    assert_one_error(invoke("run", "--threads", "0"), 2, "--threads 0")
    assert_one_error(invoke("bench", "--threads", "two"), 2, "--threads two")
    assert_one_error(invoke("bench", "--floor", "fps>>3"), 2, "not understood")
    assert_one_error(invoke("run", "--source", str(SAMPLE_CSV), "--out", str(tmp_path / "s")), 2, "unknown file type")


def test_evaluate_needs_a_run_folder_or_bundle(tmp_path):
    crops = DEFAULT_BUNDLE.parent / "samples" / "pbc"
    assert_one_error(invoke("evaluate", str(tmp_path / "no-run"), "--data", str(crops)), 4, "no-run", "no such bundle")


# ---------------------------------------------------------------- 6: output folders

def test_output_folder_that_cannot_be_made(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert_one_error(invoke("run", "--out", str(blocker / "s")), 6, str(blocker))
    assert_one_error(invoke("bundle", "inspect", "--json", str(blocker / "x.json")), 6, "cannot write --json")


# ---------------------------------------------------------------- the console entry point

def test_entry_point_prints_one_line_and_debug_shows_the_traceback(tmp_path):
    cmd = [sys.executable, "-m", "wbcedge"]
    res = subprocess.run([*cmd, "bundle", "inspect", str(tmp_path / "nope")], capture_output=True, text=True)
    assert res.returncode == 4 and "Traceback" not in res.stderr
    assert [line for line in res.stderr.splitlines() if line.startswith("error:")] == [
        f"error: {tmp_path / 'nope'}: no such bundle; give a folder made by `wbcedge export`, or omit it for the "
        "built-in one"]
    res = subprocess.run([*cmd, "--debug", "bundle", "inspect", str(tmp_path / "nope")], capture_output=True, text=True)
    assert res.returncode != 0 and "Traceback" in res.stderr and "BundleError" in res.stderr


def test_a_training_box_verb_on_a_device_names_the_extra_to_install(tmp_path):
    """TensorFlow (and the report extra) absent, as on a Pi: one line with the pip command, exit 5."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('tensorflow', 'keras', 'tf2onnx', 'sklearn', 'scipy', 'matplotlib'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Block())\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    crops = DEFAULT_BUNDLE.parent / "samples" / "pbc"
    for args, extra in ((["train", str(tmp_path / "m.csv"), "--out", str(tmp_path / "r")], "train"),
                        (["evaluate", str(DEFAULT_BUNDLE), "--data", str(crops)], "report")):
        res = subprocess.run([sys.executable, "-m", "wbcedge", *args], capture_output=True, text=True, env=env,
                             cwd=tmp_path)
        assert res.returncode == 5, res.stderr
        assert "Traceback" not in res.stderr and f"pip install 'wbcedge[{extra}]'" in res.stderr
        assert len([line for line in res.stderr.splitlines() if line.startswith("error:")]) == 1
