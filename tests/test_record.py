"""The run folder: rows and crops per frame, crash safety, unwritable folders, full disks."""

from __future__ import annotations

import errno
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

from wbcedge.device import records as record
from wbcedge.device.records import DB_FILE, OutputError, Recorder, read_cells, read_frames, read_meta


def _crop(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)


def _integrity(run_dir: Path) -> str:
    db = sqlite3.connect(str(run_dir / DB_FILE))
    try:
        return db.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        db.close()


def test_cells_and_crops_are_recorded_per_frame(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "r1"
    with Recorder(run) as rec:
        assert rec.db_path.is_file() and rec.crops_dir.is_dir()
        assert rec._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        rec.set_meta("source", "smear.avi")
        for f in range(3):
            for c in range(f):
                cid = rec.add_cell(f, f"smear#{f:06d}", (10 * c, 5, 10 * c + 40, 45), "neutrophil",
                                   0.9 - 0.1 * c, _crop(c), time_s=100.0 + f)
                assert cid > 0
            rec.commit_frame(f, f"smear#{f:06d}", time_s=100.0 + f, focus=120.0, blurred=False)
        rec.commit_frame(3, "smear#000003", focus=3.0, blurred=True, note="stage moving")
        cells = rec.cells()
    assert [(c.frame_index, c.x0) for c in cells] == [(1, 0), (2, 0), (2, 10)]
    assert cells[2].confidence == pytest.approx(0.8) and cells[2].time == 102.0
    for c in cells:
        assert c.crop_path.startswith("crops/") and (run / c.crop_path).stat().st_size > 0
    assert read_cells(run) == cells
    frames = read_frames(run)
    assert [f.cells for f in frames] == [0, 1, 2, 0]
    assert frames[3].blurred and frames[3].note == "stage moving"
    meta = read_meta(run)
    assert meta["source"] == "smear.avi" and "started_at" in meta and "finished_at" in meta
    assert _integrity(run) == "ok"


def test_a_frame_not_committed_is_dropped_on_close(tmp_path: Path) -> None:
    rec = Recorder(tmp_path / "run")
    rec.add_cell(0, "a", (0, 0, 10, 10), "monocyte", 0.7, _crop())
    rec.commit_frame(0, "a")
    rec.add_cell(1, "b", (0, 0, 10, 10), "lymphocyte", 0.7, _crop())
    rec.close(finished=False)
    assert [c.label for c in read_cells(tmp_path / "run")] == ["monocyte"]
    assert "finished_at" not in read_meta(tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run" / "crops").iterdir()) == ["000000_00_monocyte.jpg"]


def test_cells_of_two_frames_cannot_interleave(tmp_path: Path) -> None:
    with Recorder(tmp_path / "run") as rec:
        rec.add_cell(0, "a", (0, 0, 10, 10), "monocyte", 0.7)
        with pytest.raises(ValueError, match="commit_frame"):
            rec.add_cell(1, "b", (0, 0, 10, 10), "monocyte", 0.7)


_WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from wbcedge.device.records import Recorder
    rec = Recorder(sys.argv[1])
    crop = np.full((48, 48, 3), 128, np.uint8)
    for f in range(6):
        for c in range(3):
            rec.add_cell(f, f"frame{f}", (c, c, c + 30, c + 30), "eosinophil", 0.5, crop)
        rec.commit_frame(f, f"frame{f}")
    # frame 6 is in progress (cells and crops written, not committed) when the kill comes
    for c in range(2):
        rec.add_cell(6, "frame6", (c, c, c + 30, c + 30), "basophil", 0.5, crop)
    print("mid-frame", flush=True)
    time.sleep(60)
""")


def test_recorder_survives_sigkill_mid_frame(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "mid-frame", "the writer did not get to frame 6"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert (run / "cells.db-wal").exists()  # killed before any checkpoint: the WAL must be replayed
    assert _integrity(run) == "ok"
    assert [f.frame_index for f in read_frames(run)] == list(range(6))
    cells = read_cells(run)
    assert len(cells) == 18 and {c.label for c in cells} == {"eosinophil"}
    assert all((run / c.crop_path).is_file() for c in cells)
    assert "finished_at" not in read_meta(run)


def test_uncreatable_folder_fails_before_anything(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a regular file")  # even root cannot make a folder inside a file
    with pytest.raises(OutputError) as info:
        Recorder(blocker / "run")
    assert str(blocker / "run") in str(info.value) and "cannot create" in str(info.value)
    with pytest.raises(OutputError, match="is a file"):
        Recorder(blocker)


def test_a_folder_with_a_run_is_not_reused(tmp_path: Path) -> None:
    Recorder(tmp_path / "run").close()
    with pytest.raises(OutputError, match="already holds a recorded run"):
        Recorder(tmp_path / "run")


def test_too_little_free_space_fails_before_capture(tmp_path: Path, monkeypatch) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(record.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 20 * 10**6, 20 * 10**6))
    with pytest.raises(OutputError) as info:
        Recorder(tmp_path / "run")
    assert "20 MB free" in str(info.value) and str(tmp_path / "run") in str(info.value)
    assert not (tmp_path / "run" / DB_FILE).exists()


def test_disk_full_writing_a_crop_keeps_earlier_frames(tmp_path: Path, monkeypatch) -> None:
    rec = Recorder(tmp_path / "run")
    rec.add_cell(0, "a", (0, 0, 10, 10), "neutrophil", 0.9, _crop())
    rec.commit_frame(0, "a")

    def full(path, data):
        path.write_bytes(data[:10])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(record, "_write_file", full)
    rec.add_cell(1, "b", (0, 0, 10, 10), "neutrophil", 0.9)  # no crop: fine
    with pytest.raises(OutputError, match="is full"):
        rec.add_cell(1, "b", (0, 0, 10, 10), "lymphocyte", 0.9, _crop())
    rec.close(finished=False)
    assert [(c.frame_index, c.label) for c in read_cells(tmp_path / "run")] == [(0, "neutrophil")]
    assert [p.name for p in (tmp_path / "run" / "crops").iterdir()] == ["000000_00_neutrophil.jpg"]
    assert _integrity(tmp_path / "run") == "ok"


def test_database_full_keeps_earlier_frames(tmp_path: Path) -> None:
    rec = Recorder(tmp_path / "run")
    rec.add_cell(0, "a", (0, 0, 10, 10), "monocyte", 0.9)
    rec.commit_frame(0, "a")
    pages = rec._db.execute("PRAGMA page_count").fetchone()[0]
    rec._db.execute(f"PRAGMA max_page_count={pages}")  # SQLite now answers SQLITE_FULL, as on a full disk
    with pytest.raises(OutputError, match="is full"):
        for i in range(200):
            rec.add_cell(1, "b" * 4000, (0, 0, 10, 10), "monocyte", 0.9)
    rec.close(finished=False)
    assert [c.frame_index for c in read_cells(tmp_path / "run")] == [0]
    assert _integrity(tmp_path / "run") == "ok"


def test_running_low_on_space_stops_after_committing(tmp_path: Path, monkeypatch) -> None:
    rec = Recorder(tmp_path / "run")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(record.shutil, "disk_usage", lambda p: usage(10**9, 10**9, 5 * 10**6))
    rec.add_cell(0, "a", (0, 0, 10, 10), "basophil", 0.9, _crop())
    with pytest.raises(OutputError, match="only 5 MB left"):
        rec.commit_frame(0, "a")
    rec.close()
    assert [c.label for c in read_cells(tmp_path / "run")] == ["basophil"]
