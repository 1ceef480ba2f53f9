"""The runner never loses a run to one bad frame, and reads each file once."""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from adv_helpers import cli, png_bytes, png_header_only, sample_frames

from wbcedge.device.capture import glob_files, open_path
from wbcedge.device.records import read_raw_names, read_skipped
from wbcedge.device.session import CountOptions, count_cells
from wbcedge.errors import InputDataError
from wbcedge.imagefile import MAX_PIXELS, ImageRejected, check_image_bytes, header_size
from wbcedge.preprocess import read_image

NON_UTF8 = b"caf\xe9-frame.png"  # Latin-1 bytes: not valid UTF-8


def _bad_frames_folder(root: Path) -> Path:
    folder = root / "frames"
    folder.mkdir()
    for p in sample_frames(2):
        shutil.copy(p, folder / p.name)
    (folder / "tiny.png").write_bytes(png_bytes(np.zeros((1, 1, 3), np.uint8)))
    (folder / "bomb.png").write_bytes(png_header_only(100_000, 100_000))
    (folder / "garbage.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    with open(os.path.join(os.fsencode(folder), NON_UTF8), "wb") as f:
        f.write(png_bytes(np.zeros((2, 2, 3), np.uint8)))
    return folder


def test_unusable_frames_are_skipped_recorded_and_reported_and_the_run_goes_on(tmp_path):
    folder = _bad_frames_folder(tmp_path)
    out = tmp_path / "session"
    result = count_cells(CountOptions(source=str(folder), out=out))
    assert result.frames_seen == 2 and result.frames_skipped == 4
    skipped = {s.frame_name: s.reason for s in read_skipped(out)}
    assert set(skipped) == {"tiny.png", "bomb.png", "garbage.jpg", "caf\\xe9-frame.png"}
    assert "pixel budget" in skipped["bomb.png"] and "smaller than a cell" in skipped["tiny.png"]
    assert read_raw_names(out) == {"caf\\xe9-frame.png": NON_UTF8}  # the exact bytes, losslessly
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "4 frames skipped: " in html and "caf\\xe9-frame.png" in html
    assert result.meta["skipped_summary"].startswith("4 frames skipped: ")
    # the good frames' cells were located and recorded (classified or, on this other microscope,
    # unidentified by the shift check): the bad frames did not stop the count
    assert result.differential["total_cells"] > 0
    assert result.differential["total_cells"] == result.differential["classified"] + result.differential["unidentified"]


def test_the_cli_run_finishes_with_bad_frames_and_prints_the_skipped_line(tmp_path, capsys):
    folder = _bad_frames_folder(tmp_path)
    code, _, err = cli(["run", "--source", str(folder), "--out", str(tmp_path / "s")], capsys)
    assert code == 0, err
    assert "Traceback" not in err and "4 frames skipped: " in err


def test_a_bomb_header_is_refused_before_any_decoding(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(100_000, 100_000))
    calls = []
    monkeypatch.setattr(cv2, "imdecode", lambda *a: calls.append(a))  # would allocate 30 GB if reached
    with pytest.raises(ImageRejected, match="pixel budget"):
        read_image(path)
    assert calls == []


@pytest.mark.parametrize("fmt", [".png", ".jpg", ".bmp", ".tiff", ".webp"])
def test_the_header_reader_agrees_with_opencv(fmt):
    image = np.random.default_rng(0).integers(0, 255, (37, 53, 3), np.uint8)
    ok, data = cv2.imencode(fmt, image)
    assert ok
    _, w, h = header_size(data.tobytes())
    assert (w, h) == (53, 37)
    assert check_image_bytes(data.tobytes()) == (53, 37)


def test_a_just_too_large_header_is_refused_and_a_fitting_one_passes():
    side = int(MAX_PIXELS ** 0.5)
    assert check_image_bytes(png_header_only(side, side)) == (side, side)
    with pytest.raises(ImageRejected):
        check_image_bytes(png_header_only(side + 1, side + 1))


def test_a_recursive_glob_follows_no_symlink_loop_and_reads_each_file_once(tmp_path):
    root = tmp_path / "smears"
    (root / "a" / "b").mkdir(parents=True)
    for i, p in enumerate(sample_frames(2)):
        shutil.copy(p, root / "a" / f"f{i}.jpg")
    os.symlink(root, root / "a" / "b" / "loop")           # a loop back to the top
    os.symlink(root / "a", root / "a" / "b" / "again")   # a second way to the same files
    os.symlink(root / "a" / "f0.jpg", root / "link.jpg")  # the same file through a link
    t0 = time.perf_counter()
    source = open_path(str(root / "**" / "*.jpg"))
    assert time.perf_counter() - t0 < 5
    assert len(source) == 2
    assert sorted(p.name for p in glob_files(str(root / "**" / "*.jpg"))) == ["f0.jpg", "f1.jpg", "link.jpg"]


def test_a_folder_source_reads_a_file_behind_two_names_once(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    shutil.copy(sample_frames(1)[0], folder / "one.jpg")
    os.symlink(folder / "one.jpg", folder / "two.jpg")
    assert len(open_path(str(folder))) == 1


@pytest.mark.parametrize("field, value", [
    ("threshold", float("nan")), ("threshold", -0.1), ("threshold", 1.5), ("threshold", float("inf")),
    ("count", 0), ("count", float("nan")), ("count", 2.5), ("count", "5"), ("count", True), ("count", 10**9),
    ("threads", 0), ("threads", 1000), ("threads", float("nan")), ("threads", "4"),
])
def test_numeric_options_out_of_range_are_refused_with_the_allowed_range(field, value):
    with pytest.raises(InputDataError, match=r"\[.*\]"):
        CountOptions(**{field: value})


def test_the_cli_refuses_a_nan_threshold_in_one_line(tmp_path, capsys):
    code, _, err = cli(["run", "--threshold", "nan", "--out", str(tmp_path / "s")], capsys)
    assert code == 2 and "Traceback" not in err and "[0, 1]" in err
    assert not (tmp_path / "s").exists()


def test_a_frame_the_pipeline_cannot_analyse_is_skipped_not_fatal(tmp_path, monkeypatch):
    from wbcedge.device import pipeline

    folder = tmp_path / "frames"
    folder.mkdir()
    for p in sample_frames(2):
        shutil.copy(p, folder / p.name)
    real = pipeline.CellPipeline.analyse
    calls = []

    def analyse(self, image):  # the first frame's pixels break the locator (an OpenCV error)
        calls.append(1)
        if len(calls) == 1:
            raise cv2.error("OpenCV(5.0) locate: bad pixels")
        return real(self, image)

    monkeypatch.setattr(pipeline.CellPipeline, "analyse", analyse)
    out = tmp_path / "s"
    result = count_cells(CountOptions(source=str(folder), out=out))
    assert result.frames_skipped == 1 and len(calls) == 2
    db = sqlite3.connect(out / "cells.db")
    assert db.execute("SELECT COUNT(*) FROM frames").fetchone()[0] == 1


def test_a_good_frame_with_a_name_that_is_not_utf8_is_counted_under_a_lossless_name(tmp_path):
    from wbcedge.device.records import read_cells

    folder = tmp_path / "frames"
    folder.mkdir()
    raw = b"field-\xe9\xff.jpg"
    shutil.copy(sample_frames(1)[0], os.path.join(os.fsencode(folder), raw))
    out = tmp_path / "s"
    result = count_cells(CountOptions(source=str(folder), out=out))
    assert result.frames_seen == 1 and result.frames_skipped == 0
    names = {c.frame_name for c in read_cells(out)}
    assert names == {"field-\\xe9\\xff.jpg"} and read_raw_names(out) == {"field-\\xe9\\xff.jpg": raw}
    assert "field-\\xe9\\xff.jpg" in (out / "report.html").read_text(encoding="utf-8")
