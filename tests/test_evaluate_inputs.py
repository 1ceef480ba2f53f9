"""`wbcedge evaluate` on input a new user gets wrong: empty class folders, unreadable images,
a missing --compare model or --frames folder. Real sample crops and the built-in bundle; no TensorFlow."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_errors import assert_one_error, invoke

from wbcedge.bundle import DEFAULT_BUNDLE
from wbcedge.data import SAMPLES_DIR


def test_class_folders_without_images_are_refused_with_what_to_do(tmp_path):
    data = tmp_path / "site"
    for name in ("neutrophil", "eosinophil"):
        (data / name).mkdir(parents=True)
    line = assert_one_error(invoke("evaluate", str(DEFAULT_BUNDLE), "--data", str(data), "--out", str(tmp_path / "r")),
                            2, str(data), "holds no images", "eosinophil/, neutrophil/", f"{data}/<class>/")
    assert "y_true" not in line
    assert not (tmp_path / "r").exists()


def test_an_unreadable_image_is_named_once_and_counted_in_the_summary(tmp_path):
    pytest.importorskip("sklearn", reason="evaluation reports need the 'report' extra (scikit-learn)")
    data = tmp_path / "crops"
    shutil.copytree(SAMPLES_DIR, data)
    n_images = sum(1 for p in data.rglob("*.jpg"))
    (data / "monocyte" / "broken.jpg").write_text("not an image")
    res = invoke("evaluate", str(DEFAULT_BUNDLE), "--data", str(data), "--out", str(tmp_path / "r"),
                 "--json", str(tmp_path / "r.json"))
    assert res.exit_code == 0, res.output
    text = res.output.replace("\n", " ")
    assert res.output.count("broken.jpg") == 1 and "warning: 1 image file(s) could not be used" in text
    assert f"({n_images} images, 1 unreadable skipped)" in text
    skipped = json.loads((tmp_path / "r.json").read_text())["skipped_files"]
    assert [Path(s["path"]).relative_to(data) for s in skipped] == [Path("monocyte/broken.jpg")]


def test_a_tree_of_only_unreadable_images_is_refused_naming_one(tmp_path):
    data = tmp_path / "crops"
    (data / "monocyte").mkdir(parents=True)
    (data / "monocyte" / "broken.jpg").write_text("not an image")
    assert_one_error(invoke("evaluate", str(DEFAULT_BUNDLE), "--data", str(data)), 2,
                     "holds no readable images", "broken.jpg", "replace them")


def test_a_missing_compare_model_is_refused_before_any_crop_is_scored(tmp_path):
    res = invoke("evaluate", str(DEFAULT_BUNDLE), "--data", str(SAMPLES_DIR), "--compare", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "r"))
    assert_one_error(res, 4, str(tmp_path / "nope"), "no such bundle")
    assert "accuracy" not in res.output and "crops:" not in res.output
    assert not (tmp_path / "r").exists()


def test_a_frames_folder_that_does_not_exist_is_named_as_missing(tmp_path):
    line = assert_one_error(invoke("evaluate", "--frames", str(tmp_path / "nope")), 2, str(tmp_path / "nope"),
                            "no such folder")
    assert "no annotations found" not in line
    (tmp_path / "a-file").write_text("x")
    assert_one_error(invoke("evaluate", "--frames", str(tmp_path / "a-file")), 2, "not a folder")


def test_a_split_that_cannot_apply_is_refused_not_ignored(tmp_path):
    assert_one_error(invoke("evaluate", str(DEFAULT_BUNDLE), "--data", str(SAMPLES_DIR), "--split", "foo"), 2,
                     "--split 'foo'", "train, val and test")
    assert_one_error(invoke("evaluate", str(DEFAULT_BUNDLE), "--data", str(SAMPLES_DIR), "--split", "val"), 2,
                     "class-folder tree", "wbcedge data split")
