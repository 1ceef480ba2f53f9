"""`wbcedge evaluate` on input a new user gets wrong: empty class folders, unreadable images,
a missing --compare model or --frames folder. Real sample crops and the built-in bundle; no TensorFlow."""

from __future__ import annotations

from test_errors import assert_one_error, invoke

from wbcedge.bundle import DEFAULT_BUNDLE


def test_class_folders_without_images_are_refused_with_what_to_do(tmp_path):
    data = tmp_path / "site"
    for name in ("neutrophil", "eosinophil"):
        (data / name).mkdir(parents=True)
    line = assert_one_error(invoke("evaluate", str(DEFAULT_BUNDLE), "--data", str(data), "--out", str(tmp_path / "r")),
                            2, str(data), "holds no images", "eosinophil/, neutrophil/", f"{data}/<class>/")
    assert "y_true" not in line
    assert not (tmp_path / "r").exists()
