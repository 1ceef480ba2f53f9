"""`wbcedge run` end to end with the built-in bundle, and its faults: lost camera, SIGTERM, unwritable output."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from wbcedge.bundle import load_bundle
from wbcedge.device.capture import CameraLostError, Frame
from wbcedge.device.pipeline import CellPipeline, run_session
from wbcedge.preprocess import read_image
from wbcedge.device.records import Recorder, read_cells
from wbcedge.device.track import CellTracker

REPO = Path(__file__).resolve().parent.parent
FRAMES = REPO / "wbcedge" / "samples" / "frames"
BCCD = REPO.parent / "shared" / "data" / "bccd"


def wbcedge(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wbcedge", *args], capture_output=True, text=True, **kw)


def test_default_run_counts_the_builtin_frames(tmp_path):
    res = wbcedge("run", "--out", str(tmp_path / "run"), "--json", str(tmp_path / "out.json"))
    assert res.returncode == 0, res.stderr
    out = json.loads((tmp_path / "out.json").read_text())
    cells = read_cells(tmp_path / "run")
    diff = out["differential"]
    assert diff["total_cells"] == len(cells) >= len(list(FRAMES.glob("*.jpg")))  # every sample frame has a white cell
    classified = [c for c in cells if c.label != "unidentified"]
    assert diff["classified"] == len(classified)
    if classified:
        assert abs(sum(t["percent"] or 0 for t in diff["types"].values()) - 100) < 1e-6
    for name in ("differential.json", "differential.csv", "report.html"):
        assert (tmp_path / "run" / name).is_file()
    assert all((tmp_path / "run" / c.crop_path).is_file() for c in cells)
    assert "neutrophil" in res.stdout.lower()


class FailingCamera:
    """A live source that delivers some frames, then loses the camera (as LiveSource does after its retries)."""
    is_stream = True
    label = "test camera"

    def __init__(self, images, fail_after):
        self.images, self.fail_after = images, fail_after

    def __iter__(self):
        for i in range(self.fail_after):
            yield Frame(i, self.images[i % len(self.images)], time.time(), f"frame{i}")
        raise CameraLostError("camera stopped answering after 5 tries; check the cable")

    def close(self):
        pass


def test_lost_camera_keeps_every_recorded_cell(tmp_path):
    bundle = load_bundle()
    images = [read_image(p) for p in sorted(FRAMES.glob("*.jpg"))]
    recorder = Recorder(tmp_path / "run")
    pipeline = CellPipeline(bundle)
    result = run_session(FailingCamera(images, fail_after=len(images)), pipeline, recorder,
                         CellTracker(tracking=False))
    recorder.close(finished=False)
    assert result.stop_reason == "camera lost" and "cable" in result.error
    cells = read_cells(tmp_path / "run")
    assert len(cells) == len(result.labels) > 0
    db = sqlite3.connect(tmp_path / "run" / "cells.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT COUNT(*) FROM frames").fetchone()[0] == len(images)


def test_sigterm_mid_run_finishes_the_frame_and_writes_the_report(tmp_path):
    many = tmp_path / "frames"
    many.mkdir()
    frames = sorted(FRAMES.glob("*.jpg"))
    for i in range(600):  # long enough to still be running when the signal comes; copies, not links:
        # a source reads each file (inode) once, so 3000 links to 6 frames would be only 6 frames
        shutil.copyfile(frames[i % len(frames)], many / f"f{i:04d}.jpg")
    proc = subprocess.Popen([sys.executable, "-m", "wbcedge", "run", "--source", str(many), "--out", str(tmp_path / "run")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    db = tmp_path / "run" / "cells.db"
    deadline = time.time() + 120
    while time.time() < deadline:
        time.sleep(0.05)
        try:
            if db.exists() and sqlite3.connect(db).execute("SELECT COUNT(*) FROM cells").fetchone()[0] >= 3:
                break
        except sqlite3.Error:
            pass
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "SIGTERM" in stdout
    cells = read_cells(tmp_path / "run")
    report = json.loads((tmp_path / "run" / "differential.json").read_text())
    assert report["differential"]["total_cells"] == len(cells) >= 3
    assert report["meta"]["frames"] < 3000
    assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_unwritable_output_is_refused_before_capture(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    res = wbcedge("run", "--out", str(blocker / "run"))
    assert res.returncode != 0
    assert str(blocker) in res.stderr.replace("\n", "")


def test_missing_bundle_and_source_are_clear_errors(tmp_path):
    res = wbcedge("run", "--bundle", str(tmp_path / "nope"), "--out", str(tmp_path / "r1"))
    assert res.returncode != 0 and "no such bundle" in res.stderr
    res = wbcedge("run", "--source", str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "r2"))
    assert res.returncode != 0 and "missing.mp4" in res.stderr.replace("\n", "")


@pytest.mark.skipif(not BCCD.is_dir(), reason="../shared/data/bccd is not present")
def test_bccd_count_100_yields_a_differential_and_report(tmp_path):
    res = wbcedge("run", "--source", str(BCCD / "JPEGImages"), "--count", "100", "--out", str(tmp_path / "run"),
                  "--json", str(tmp_path / "out.json"))
    assert res.returncode == 0, res.stderr
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["differential"]["classified"] >= 100 or "source ended" in out["meta"]["stop_reason"]
    assert (tmp_path / "run" / "report.html").is_file()


def test_bare_camera_flag_means_auto():
    from wbcedge.cli import bare_camera_means_auto
    assert bare_camera_means_auto(["run", "--camera"]) == ["run", "--camera", "auto"]
    assert bare_camera_means_auto(["run", "--camera", "--count", "5"]) == ["run", "--camera", "auto", "--count", "5"]
    assert bare_camera_means_auto(["run", "--camera", "0"]) == ["run", "--camera", "0"]


def test_no_camera_is_a_clear_error_and_leaves_no_run_folder(tmp_path):
    res = wbcedge("run", "--camera", "7", "--out", str(tmp_path / "run"))
    assert res.returncode != 0 and "could not be opened" in res.stderr
    assert not (tmp_path / "run").exists()


class StillImages:
    """Still images as a source (not a stream)."""
    is_stream = False
    label = "test images"

    def __init__(self, images):
        self.images = images

    def __iter__(self):
        for i, im in enumerate(self.images):
            yield Frame(i, im, time.time(), f"image{i}")

    def close(self):
        pass


def test_an_image_without_a_white_cell_is_reported_per_image(tmp_path):
    from wbcedge.device.records import read_frames

    blank = np.full((300, 320, 3), (225, 215, 210), np.uint8)
    images = [read_image(sorted(FRAMES.glob("*.jpg"))[0]), blank]
    recorder = Recorder(tmp_path / "run")
    pipeline = CellPipeline(load_bundle())
    run_session(StillImages(images), pipeline, recorder, CellTracker(tracking=False))
    recorder.close(finished=True)
    notes = {f.frame_name: f.note for f in read_frames(tmp_path / "run")}
    assert notes == {"image0": "", "image1": "no white cell found"}
    assert pipeline.scale_source == "red cells"     # measured on the BCCD frame, kept for the session


def test_single_cell_images_are_recut_to_the_trained_scale_or_classified_as_given(tmp_path):
    from wbcedge.device.records import read_frames
    from wbcedge.evaluation.shifts import tighter_crop

    crops = sorted((REPO / "wbcedge" / "samples" / "pbc").glob("*/*.jpg"))
    tight = tighter_crop(read_image(crops[0]), 1.8)                 # the cell fills ~80 % of it
    blank = np.full((200, 210, 3), (225, 215, 210), np.uint8)
    recorder = Recorder(tmp_path / "run", max_crop_side=10_000)  # keep the crop as the model saw it (unbounded)
    pipeline = CellPipeline(load_bundle(), single_cell=True)
    result = run_session(StillImages([tight, blank]), pipeline, recorder, CellTracker(tracking=False))
    recorder.close(finished=True)
    assert len(result.labels) == 2                                   # one cell per image, even the blank one
    notes = {f.frame_name: f.note for f in read_frames(tmp_path / "run")}
    assert notes == {"image0": "", "image1": "no white cell found: classified as given"}
    cells = read_cells(tmp_path / "run")
    saved = read_image(tmp_path / "run" / cells[0].crop_path)
    assert saved.shape[0] > 1.4 * tight.shape[0]                     # widened so the cell has the trained scale
