"""`wbcedge export` refuses an incomplete run folder and an --out it would destroy, before any model loads.

No TensorFlow is needed: every refusal comes before the run's Keras model is opened.
"""

from __future__ import annotations

import shutil

import pytest
from test_errors import assert_one_error, invoke

from wbcedge.bundle import DEFAULT_BUNDLE
from wbcedge.errors import OutputFolderError
from wbcedge.train.export import check_bundle_output


def test_a_folder_with_only_model_keras_is_not_a_run_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.keras").write_bytes(b"not read")
    out = tmp_path / "x"
    assert_one_error(invoke("export", str(run), "--format", "tflite", "--out", str(out)), 2, str(run),
                     "not a complete training run folder", "labels.json, preprocess.json, config.json", "wbcedge train")
    assert not out.exists()
    assert_one_error(invoke("export", str(tmp_path / "nope"), "--out", str(out)), 2, "no such run folder")


@pytest.fixture
def run_folder(tmp_path):
    """A run folder with every file export reads (never opened: the --out refusals come first)."""
    run = tmp_path / "run"
    run.mkdir()
    for name in ("model.keras", "labels.json", "preprocess.json", "config.json"):
        (run / name).write_text("{}")
    return run


def test_an_out_that_is_a_file_or_a_folder_of_other_files_is_kept(run_folder, tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "results.txt").write_text("a week of work")
    assert_one_error(invoke("export", str(run_folder), "--out", str(notes)), 6, str(notes), "not a wbcedge bundle",
                     "new or empty folder")
    assert (notes / "results.txt").read_text() == "a week of work"
    assert_one_error(invoke("export", str(run_folder), "--out", str(notes / "results.txt")), 6, "is a file")
    assert (notes / "results.txt").read_text() == "a week of work"


def test_an_earlier_bundle_or_an_empty_folder_may_be_written(tmp_path):
    earlier = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, earlier)
    (tmp_path / "empty").mkdir()
    for out in (earlier, tmp_path / "empty", tmp_path / "new"):
        check_bundle_output(out)
    (earlier / "manifest.json").unlink()
    with pytest.raises(OutputFolderError):
        check_bundle_output(earlier)
