"""Session records: one session per folder, bounded crops, lossless names, overlap warnings, rebuilt reports."""

from __future__ import annotations

import csv
import fcntl
import io
import json
import multiprocessing
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from adv_helpers import REPO, cli, sample_frames

from wbcedge.device.capture import FrameSource
from wbcedge.device.differential import differential
from wbcedge.device.pipeline import NO_OVERLAP, CellPipeline, run_session
from wbcedge.device.records import LOCK_FILE, MAX_CROP_SIDE, OutputError, Recorder, read_cells, read_warnings
from wbcedge.device.report import csv_safe, differential_csv
from wbcedge.device.track import CellTracker
from wbcedge.preprocess import read_image


def test_a_session_holds_its_folder_lock_until_it_closes(tmp_path):
    rec = Recorder(tmp_path / "s")
    fd = os.open(tmp_path / "s" / LOCK_FILE, os.O_WRONLY)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(OutputError, match="in use by another counting session"):
            Recorder(tmp_path / "s")
        rec.close()
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released by close()
    finally:
        os.close(fd)


def _open_and_hold(args):
    folder, barrier = args
    barrier.wait()
    try:
        rec = Recorder(folder)
    except OutputError:
        return "refused"
    time.sleep(2.0)  # hold the folder while the others try
    rec.close()
    return "recorded"


def test_sessions_started_at_the_same_moment_on_one_folder_let_exactly_one_record(tmp_path):
    ctx = multiprocessing.get_context("fork")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(4, timeout=30)
        with ctx.Pool(4) as pool:
            outcome = pool.map(_open_and_hold, [(tmp_path / "s", barrier)] * 4)
    assert sorted(outcome) == ["recorded", "refused", "refused", "refused"]


def test_the_python_api_refuses_a_second_session_on_the_same_folder(tmp_path):
    from wbcedge.device.session import CountOptions, count_cells

    out = tmp_path / "s"
    holder = Recorder(out)  # another session that is still running
    try:
        with pytest.raises(OutputError, match="in use"):
            count_cells(CountOptions(out=out))
    finally:
        holder.close()


def test_crops_are_stored_at_a_bounded_size(tmp_path):
    import cv2

    frame = read_image(sample_frames(1)[0])
    big = cv2.resize(frame, (572, 572))  # the size a 33.6 um crop has at 0.06 um/px
    with Recorder(tmp_path / "s") as rec:
        rec.add_cell(0, "f.png", (0, 0, 10, 10), "neutrophil", 0.9, big)
        rec.commit_frame(0, "f.png")
    crop = tmp_path / "s" / read_cells(tmp_path / "s")[0].crop_path
    stored = cv2.imread(str(crop))
    assert max(stored.shape[:2]) == MAX_CROP_SIDE
    assert crop.stat().st_size < 20_000


def test_names_that_are_not_utf8_are_stored_losslessly(tmp_path):
    raw = b"smear-\xff\xfe.png"
    name = os.fsdecode(raw)
    with Recorder(tmp_path / "s") as rec:
        rec.add_cell(0, name, (0, 0, 10, 10), "neutrophil", 0.9)
        rec.commit_frame(0, name)
    from wbcedge.device.records import read_raw_names

    stored = read_cells(tmp_path / "s")[0].frame_name
    assert stored == "smear-\\xff\\xfe.png"
    assert read_raw_names(tmp_path / "s")[stored] == raw


class _Stream(FrameSource):
    """Real sample frames delivered as a stream (as a camera would) that jumps to a new field each frame."""
    is_stream = True

    def __init__(self, paths):
        super().__init__("stream")
        self.images = [read_image(p) for p in paths]

    def __next__(self):
        if not self.images:
            raise StopIteration
        return self._frame(self.images.pop(0), 0.0, f"stream-{self._next_index:06d}")


def test_a_stream_whose_frames_share_no_overlap_is_warned_and_recorded(tmp_path):
    from wbcedge.bundle import load_bundle

    warnings = []
    rec = Recorder(tmp_path / "s")
    result = run_session(_Stream(sample_frames(4)), CellPipeline(load_bundle()), rec, CellTracker(tracking=True),
                         on_warning=warnings.append)
    rec.close()
    assert result.no_overlap_frames == 3
    assert [w.kind for w in read_warnings(tmp_path / "s")] == [NO_OVERLAP] * 3
    assert len(warnings) == 1 and "no overlap" in warnings[0]


def test_a_stream_that_moves_smoothly_gives_no_warning(tmp_path):
    from wbcedge.bundle import load_bundle

    frame = read_image(sample_frames(1)[0])
    stream = _Stream([])
    stream.images = [np.roll(frame, 12 * k, axis=1) for k in range(3)]
    rec = Recorder(tmp_path / "s")
    result = run_session(stream, CellPipeline(load_bundle()), rec, CellTracker(tracking=True))
    rec.close()
    assert result.no_overlap_frames == 0 and read_warnings(tmp_path / "s") == []


@pytest.mark.parametrize("text", ["=HYPERLINK(\"http://x\")", "+1+2", "-2+3", "@SUM(A1)", "\tcmd", "\rcmd"])
def test_csv_cells_that_would_be_formulas_are_neutralised(text):
    assert csv_safe(text) == "'" + text
    diff = differential([text] * 3 + ["b"], [text, "b"])
    rows = list(csv.reader(io.StringIO(differential_csv(diff), newline="")))
    assert rows[1][0] == "'" + text.replace("\r", " ")
    assert len(rows) == 5  # header, two types, unidentified, total: no row split by a CR
    assert all(not cell.startswith(("=", "+", "-", "@", "\t", "\r")) for row in rows for cell in row)


def test_numbers_in_the_csv_stay_numbers():
    diff = differential(["a", "b", "b"], ["a", "b"])
    rows = list(csv.reader(io.StringIO(differential_csv(diff))))
    assert rows[1][1] == "1" and float(rows[1][2]) == pytest.approx(33.33, abs=0.01)


_KILLED_SESSION = """
import os, sys
import numpy as np
from wbcedge.device.records import Recorder
rec = Recorder(sys.argv[1])
rec.set_meta("classes", ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"])
crop = np.full((40, 40, 3), 128, np.uint8)
for i, label in enumerate(["neutrophil", "neutrophil", "lymphocyte", "unidentified"]):
    rec.add_cell(i, f"f{i}.png", (0, 0, 10, 10), label, 0.9, crop)
    rec.commit_frame(i, f"f{i}.png")
rec.add_cell(4, "f4.png", (0, 0, 10, 10), "monocyte", 0.9, crop)  # never committed
os.kill(os.getpid(), 9)
"""


def test_report_rebuilds_every_output_of_a_killed_session_from_its_database(tmp_path, capsys):
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", _KILLED_SESSION, str(out)], env=env, timeout=120, check=False)
    assert proc.returncode == -9
    assert not (out / "report.html").exists()
    code, stdout, err = cli(["report", str(out)], capsys)
    assert code == 0, err
    data = json.loads((out / "differential.json").read_text())
    types = data["differential"]["types"]
    assert types["neutrophil"]["count"] == 2 and types["lymphocyte"]["count"] == 1
    assert types["monocyte"]["count"] == 0 and data["differential"]["unidentified"] == 1
    assert "interrupted" in stdout and (out / "differential.csv").is_file()
    assert "neutrophil" in (out / "report.html").read_text(encoding="utf-8")


def test_report_on_a_folder_without_a_session_is_one_error_line(tmp_path, capsys):
    code, _, err = cli(["report", str(tmp_path)], capsys)
    assert code == 2 and "cells.db is missing" in err and "Traceback" not in err


def test_class_names_that_look_like_console_markup_print_literally():
    from rich.console import Console

    from wbcedge.device.report import format_differential

    console = Console(file=io.StringIO(), width=200)
    console.print(format_differential(differential(["[/]", "[bold]x"], ["[/]", "[bold]x"])))
    text = console.file.getvalue()
    assert "[/]" in text and "[bold]x" in text
