"""The run folder: every counted cell as a database row and a crop, safe against crashes.

Layout of a run folder:
    cells.db        SQLite (WAL journal): tables meta, frames, cells, skipped_frames,
                    warnings, raw_names (schema version 4)
    crops/          one JPEG per counted cell, named <frame>_<n>_<label>.jpg, at most
                    MAX_CROP_SIDE pixels on a side (about 7 KB each; see docs/limits.md)
    .session.lock   held (flock) while a session writes the folder
    (report.py adds differential.json, differential.csv, report.html)

Each frame is one transaction: `add_cell` calls for a frame are committed together
by `commit_frame`. A crash, a kill or a pulled plug loses at most the frame in
progress (with synchronous=NORMAL a power cut may also roll back the last few
commits) and never corrupts the database. A crop is written before its row is
committed, so after a crash a crop file may exist without a row (harmless); crops
are not fsynced, so after a power cut a recent row may point at a missing or empty
crop (the report shows a placeholder).

A session holds an exclusive lock on `.session.lock` from the first check to `close()`,
so a second session on the same folder (another process, or a second `Recorder` in
this one) is refused with `OutputError` however the two are timed; the lock goes with
the process, so a killed session leaves no stale lock. File names that are not valid
UTF-8 are stored as text with \\xNN escapes, and their exact bytes in `raw_names`.

`Recorder(run_dir)` checks that the folder can be created and written (a probe file
is written and fsynced) and that the disk has room, before any frame is captured, and
raises `OutputError` with the folder's name if not. A full disk during the run also
raises `OutputError`; the rows committed before stay.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import cv2
import numpy as np

from wbcedge.errors import InputFileMissingError, OutputFolderError
from wbcedge.imagefile import display_name, is_utf8_name

try:
    import fcntl
except ImportError:  # Windows: an exclusive-create lock file instead
    fcntl = None

DB_FILE = "cells.db"
CROPS_DIR = "crops"
LOCK_FILE = ".session.lock"
SCHEMA_VERSION = 4  # 2: cells.ood_score (the domain-shift score); 3: skipped_frames, warnings, raw_names;
#                      4: cells.probs (the class mix estimate, class_mix.py); older still read
MAX_CROP_SIDE = 224   # px: above the model inputs (128-160 px), enough to review a cell by eye; ~7 KB as JPEG q90

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL                 -- JSON
);
CREATE TABLE IF NOT EXISTS frames (
    frame_index  INTEGER PRIMARY KEY,
    frame_name   TEXT NOT NULL,
    time         REAL NOT NULL,         -- seconds (Frame.timestamp)
    focus        REAL,                  -- capture.focus_score, NULL if not measured
    blurred      INTEGER NOT NULL DEFAULT 0,
    cells        INTEGER NOT NULL DEFAULT 0,   -- rows added to `cells` for this frame
    note         TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS cells (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    frame_index  INTEGER NOT NULL,
    frame_name   TEXT NOT NULL,
    x0 INTEGER NOT NULL, y0 INTEGER NOT NULL, x1 INTEGER NOT NULL, y1 INTEGER NOT NULL,
    label        TEXT NOT NULL,
    confidence   REAL NOT NULL,          -- temperature-calibrated top-1 probability
    crop_path    TEXT,                  -- relative to the run folder, e.g. crops/000012_00_neutrophil.jpg
    time         REAL NOT NULL,
    ood_score    REAL,                  -- domain-shift score (wbcedge.device.shift); NULL: check off
    probs        TEXT                   -- schema 4: JSON list of calibrated class probabilities, in meta `classes` order
);
CREATE INDEX IF NOT EXISTS cells_label ON cells(label);
CREATE TABLE IF NOT EXISTS skipped_frames (         -- schema 3: frames that could not be used
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    frame_name   TEXT NOT NULL,
    reason       TEXT NOT NULL,
    time         REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS warnings (               -- schema 3: e.g. stream frames that share no overlap
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    frame_index  INTEGER,
    kind         TEXT NOT NULL,
    message      TEXT NOT NULL,
    time         REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS raw_names (              -- schema 3: exact bytes of names that are not UTF-8
    display      TEXT PRIMARY KEY,                  -- the name as stored elsewhere, with \\xNN escapes
    raw          BLOB NOT NULL
);
"""


class OutputError(OutputFolderError):
    """The run folder cannot be created, written, or has run out of space."""


@dataclass(frozen=True)
class CellRow:
    id: int
    frame_index: int
    frame_name: str
    x0: int
    y0: int
    x1: int
    y1: int
    label: str
    confidence: float
    crop_path: str | None
    time: float
    ood_score: float | None = None
    probs: tuple[float, ...] | None = None   # schema 4; None in older run folders


@dataclass(frozen=True)
class SkippedRow:
    id: int
    frame_name: str
    reason: str
    time: float


@dataclass(frozen=True)
class WarningRow:
    id: int
    frame_index: int | None
    kind: str
    message: str
    time: float


@dataclass(frozen=True)
class FrameRow:
    frame_index: int
    frame_name: str
    time: float
    focus: float | None
    blurred: bool
    cells: int
    note: str


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return True
    return isinstance(exc, sqlite3.Error) and "full" in str(exc).lower()  # SQLITE_FULL: "database or disk is full"


class Recorder:
    """Writes one run folder. Single writer; use it as a context manager or call close()."""

    def __init__(self, run_dir: Path | str, min_free_mb: float = 50.0, stop_free_mb: float = 10.0,
                 jpeg_quality: int = 90, synchronous: str = "NORMAL", max_crop_side: int = MAX_CROP_SIDE):
        self.run_dir = Path(run_dir)
        self.crops_dir = self.run_dir / CROPS_DIR
        self.db_path = self.run_dir / DB_FILE
        self.min_free_mb = min_free_mb
        self.stop_free_mb = stop_free_mb
        self.jpeg_quality = int(jpeg_quality)
        self.max_crop_side = int(max_crop_side)
        if synchronous.upper() not in ("NORMAL", "FULL"):
            raise ValueError("synchronous must be NORMAL or FULL")
        self._lock_fd: int | None = None
        self._closed = True
        self._check_folder()
        try:
            self._db = sqlite3.connect(str(self.db_path), isolation_level=None, check_same_thread=False, timeout=10)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            self._release_lock()
            raise OutputError(f"cannot create the run database {self.db_path}: {exc}. "
                              f"Choose another output folder on a local disk.") from None
        self._in_frame: int | None = None       # frame index of the open transaction
        self._frame_crops: list[Path] = []
        self._frame_cells = 0
        self._closed = False
        self.set_meta("schema_version", SCHEMA_VERSION)
        self.set_meta("started_at", time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    # ------------------------------------------------------------ checks before capture

    def _check_folder(self) -> None:
        d = self.run_dir
        if d.exists() and not d.is_dir():
            raise OutputError(f"the output path {d} is a file, not a folder: choose a folder path for the run")
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create the run folder {d}: {exc.strerror or exc}. "
                              f"Choose an output folder you can write to (e.g. under your home folder).") from None
        self._take_lock()
        try:
            if (d / DB_FILE).exists():
                raise OutputError(f"{d} already holds a recorded run ({DB_FILE}); choose a new output folder "
                                  f"so the earlier run is not mixed with this one")
            self._check_writable()
        except BaseException:
            self._release_lock()
            raise

    def _take_lock(self) -> None:
        """Hold `.session.lock` exclusively until close(); refuse if another session holds it."""
        path = self.run_dir / LOCK_FILE
        busy = OutputError(f"{self.run_dir} is in use by another counting session (it holds {path}); "
                           f"wait for it to finish or choose another output folder")
        try:
            if fcntl is None:
                self._lock_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                return
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        except FileExistsError:
            raise busy from None
        except OSError as exc:
            raise OutputError(f"cannot write into the run folder {self.run_dir}: {exc.strerror or exc}. "
                              f"Check the disk is mounted read-write and this user may write there.") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise busy from None
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None
            if fcntl is None:
                (self.run_dir / LOCK_FILE).unlink(missing_ok=True)

    def _check_writable(self) -> None:
        d = self.run_dir
        try:
            self.crops_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create the run folder {d}: {exc.strerror or exc}. "
                              f"Choose an output folder you can write to (e.g. under your home folder).") from None
        probe = d / ".write-probe"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, b"wbcedge write probe\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise OutputError(f"cannot write into the run folder {d}: {exc.strerror or exc}. "
                              f"Check the disk is mounted read-write and this user may write there.") from None
        free_mb = self._free_mb()
        if free_mb < self.min_free_mb:
            raise OutputError(f"only {free_mb:.0f} MB free on the disk holding {d}; a run needs at least "
                              f"{self.min_free_mb:.0f} MB. Free some space or choose a folder on another disk.")

    def _free_mb(self) -> float:
        return shutil.disk_usage(self.run_dir).free / 1e6

    # ------------------------------------------------------------ writing

    def set_meta(self, key: str, value: Any) -> None:
        """Store one run fact (JSON-encodable): source, profile, model, thresholds..."""
        # Outside a frame this commits at once; inside one it joins the frame's transaction.
        self._execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def add_cell(self, frame_index: int, frame_name: str, box: tuple[int, int, int, int], label: str,
                 confidence: float, crop_bgr: np.ndarray | None = None, time_s: float | None = None,
                 ood_score: float | None = None, probs: np.ndarray | None = None) -> int:
        """Record one counted cell of the current frame (committed by `commit_frame`). Returns its row id.

        box is (x0, y0, x1, y1) in frame pixels; crop_bgr (BGR uint8) is saved as a JPEG under crops/;
        probs: the cell's calibrated class probabilities (meta `classes` order), for the class mix estimate.
        """
        self._begin(frame_index)
        frame_name = self._name(frame_name)
        crop_rel = None
        if crop_bgr is not None:
            name = f"{frame_index:06d}_{self._frame_cells:02d}_{_safe(label)}.jpg"
            ok, data = cv2.imencode(".jpg", bounded_crop(crop_bgr, self.max_crop_side),
                                    [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
            if not ok:
                raise ValueError(f"could not encode the crop of a {label} in frame {frame_name} as JPEG "
                                 f"(shape {getattr(crop_bgr, 'shape', None)})")
            path = self.crops_dir / name
            try:
                _write_file(path, data.tobytes())
            except OSError as exc:
                try:
                    path.unlink()  # a partly written JPEG
                except OSError:
                    pass
                self._fail(exc, f"writing {path}")
            self._frame_crops.append(path)
            crop_rel = f"{CROPS_DIR}/{name}"
        x0, y0, x1, y1 = (int(v) for v in box)
        cur = self._execute(
            "INSERT INTO cells(frame_index, frame_name, x0, y0, x1, y1, label, confidence, crop_path, time, ood_score, "
            "probs) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (int(frame_index), frame_name, x0, y0, x1, y1, label, float(confidence), crop_rel,
             time.time() if time_s is None else float(time_s), None if ood_score is None else float(ood_score),
             None if probs is None else json.dumps([round(float(v), 6) for v in np.ravel(probs)])))
        self._frame_cells += 1
        return int(cur.lastrowid)

    def commit_frame(self, frame_index: int, frame_name: str = "", time_s: float | None = None,
                     focus: float | None = None, blurred: bool = False, note: str = "") -> None:
        """Write the frame's row and commit it with its cells: one transaction per frame.

        Call it for every frame looked at, with or without cells (blurred frames too),
        so the record shows what was seen.
        """
        self._begin(frame_index)
        frame_name = self._name(frame_name)
        self._execute("INSERT OR REPLACE INTO frames(frame_index, frame_name, time, focus, blurred, cells, note) "
                      "VALUES (?, ?, ?, ?, ?, ?, ?)",
                      (int(frame_index), frame_name, time.time() if time_s is None else float(time_s),
                       None if focus is None else float(focus), int(bool(blurred)), self._frame_cells, note))
        self._execute("COMMIT")
        self._in_frame, self._frame_crops, self._frame_cells = None, [], 0
        free_mb = self._free_mb()
        if free_mb < self.stop_free_mb:
            raise OutputError(f"the disk holding {self.run_dir} has only {free_mb:.0f} MB left; stopped recording "
                              f"after frame {frame_name or frame_index} so the records stay intact. "
                              f"Free some space, then start a new run.")

    def add_skipped(self, frame_name: str, reason: str, time_s: float | None = None) -> None:
        """Record a frame that could not be used (unreadable, too large, too small) and why."""
        self._execute("INSERT INTO skipped_frames(frame_name, reason, time) VALUES (?, ?, ?)",
                      (self._name(frame_name), display_name(reason), time.time() if time_s is None else float(time_s)))

    def add_warning(self, kind: str, message: str, frame_index: int | None = None) -> None:
        """Record something the user should know about the run (e.g. `no-overlap` on a stream)."""
        self._execute("INSERT INTO warnings(frame_index, kind, message, time) VALUES (?, ?, ?, ?)",
                      (None if frame_index is None else int(frame_index), kind, display_name(message), time.time()))

    def _name(self, name: str) -> str:
        """A name as stored: itself when it is UTF-8, else \\xNN-escaped text with its exact bytes in raw_names."""
        if is_utf8_name(name):
            return name
        shown = display_name(name)
        self._execute("INSERT OR IGNORE INTO raw_names(display, raw) VALUES (?, ?)", (shown, os.fsencode(name)))
        return shown

    def rollback_frame(self) -> None:
        """Drop the current frame's cells (e.g. the frame turned out unusable)."""
        if self._in_frame is not None:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            for p in self._frame_crops:
                try:
                    p.unlink()
                except OSError:
                    pass
        self._in_frame, self._frame_crops, self._frame_cells = None, [], 0

    def _begin(self, frame_index: int) -> None:
        if self._closed:
            raise OutputError(f"the recorder for {self.run_dir} is closed")
        if self._in_frame is None:
            self._execute("BEGIN IMMEDIATE")
            self._in_frame = int(frame_index)
        elif self._in_frame != int(frame_index):
            raise ValueError(f"frame {frame_index} started before frame {self._in_frame} was committed: "
                             f"call commit_frame() (or rollback_frame()) once per frame")

    def _execute(self, sql: str, params: tuple = ()) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, params)
        except sqlite3.Error as exc:
            self._fail(exc, "writing the run database")

    def _fail(self, exc: BaseException, doing: str) -> NoReturn:
        self.rollback_frame()
        if _is_disk_full(exc):
            raise OutputError(f"the disk holding {self.run_dir} is full ({doing}): the frames recorded before "
                              f"this one are kept in {self.db_path}. Free some space, then start a new run.") from exc
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write to {self.run_dir} ({doing}): {exc.strerror or exc}") from exc
        raise OutputError(f"the run database {self.db_path} failed ({doing}): {exc}") from exc

    # ------------------------------------------------------------ reading and closing

    def cells(self) -> list[CellRow]:
        """All committed cells, in the order they were recorded."""
        return _cells(self._db)

    def frames(self) -> list[FrameRow]:
        return _frames(self._db)

    def meta(self) -> dict[str, Any]:
        return _meta(self._db)

    def close(self, finished: bool = True) -> None:
        """Close the database. A frame not committed yet is dropped (as a crash would).

        `finished` records `finished_at` in meta; a run folder without it ended abnormally.
        """
        if self._closed:
            return
        self.rollback_frame()
        try:
            if finished:
                self.set_meta("finished_at", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except (sqlite3.Error, OutputError):
            pass  # the WAL is replayed on the next open; nothing is lost
        finally:
            self._db.close()
            self._closed = True
            self._release_lock()

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(finished=exc_type is None)


def bounded_crop(crop_bgr: np.ndarray, max_side: int = MAX_CROP_SIDE) -> np.ndarray:
    """The crop shrunk (INTER_AREA) so neither side exceeds `max_side`; smaller crops are kept as they are."""
    h, w = crop_bgr.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1.0:
        return crop_bgr
    return cv2.resize(crop_bgr, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def _write_file(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def _safe(label: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in label) or "cell"


# ---------------------------------------------------------------- reading a finished (or crashed) run

def open_run(run_dir: Path | str) -> sqlite3.Connection:
    """Open a run folder's database for reading; raises FileNotFoundError naming the folder."""
    path = Path(run_dir) / DB_FILE
    if not path.is_file():
        raise InputFileMissingError(f"{run_dir} is not a session folder: {DB_FILE} is missing")
    return sqlite3.connect(str(path))


def read_cells(run_dir: Path | str) -> list[CellRow]:
    db = open_run(run_dir)
    try:
        return _cells(db)
    finally:
        db.close()


def read_frames(run_dir: Path | str) -> list[FrameRow]:
    db = open_run(run_dir)
    try:
        return _frames(db)
    finally:
        db.close()


def read_meta(run_dir: Path | str) -> dict[str, Any]:
    db = open_run(run_dir)
    try:
        return _meta(db)
    finally:
        db.close()


def read_skipped(run_dir: Path | str) -> list[SkippedRow]:
    """Skipped frames with their reasons (empty for a schema-1 run folder)."""
    return _optional_rows(run_dir, "SELECT id, frame_name, reason, time FROM skipped_frames ORDER BY id", SkippedRow)


def read_warnings(run_dir: Path | str) -> list[WarningRow]:
    return _optional_rows(run_dir, "SELECT id, frame_index, kind, message, time FROM warnings ORDER BY id", WarningRow)


def read_raw_names(run_dir: Path | str) -> dict[str, bytes]:
    """Stored display name -> the exact bytes of the original file name (only names that are not UTF-8)."""
    return dict(_optional_rows(run_dir, "SELECT display, raw FROM raw_names", lambda d, r: (d, bytes(r))))


def _optional_rows(run_dir: Path | str, sql: str, make) -> list:
    db = open_run(run_dir)
    try:
        return [make(*r) for r in db.execute(sql)]
    except sqlite3.OperationalError:  # a table added by a later schema version
        return []
    finally:
        db.close()


def _cells(db: sqlite3.Connection) -> list[CellRow]:
    columns = {r[1] for r in db.execute("PRAGMA table_info(cells)")}
    has_ood, has_probs = "ood_score" in columns, "probs" in columns   # schema 1 has neither, 2-3 no probs
    rows = db.execute("SELECT id, frame_index, frame_name, x0, y0, x1, y1, label, confidence, crop_path, time"
                      + (", ood_score" if has_ood else ", NULL") + (", probs" if has_probs else ", NULL")
                      + " FROM cells ORDER BY id").fetchall()
    return [CellRow(*r[:-1], probs=_probs(r[-1])) for r in rows]


def _probs(text: str | None) -> tuple[float, ...] | None:
    """A cell's stored probabilities, None when absent or unreadable (they only feed an estimate)."""
    if not text:
        return None
    try:
        values = json.loads(text)
        return tuple(float(v) for v in values) if isinstance(values, list) else None
    except (ValueError, TypeError):
        return None


def _frames(db: sqlite3.Connection) -> list[FrameRow]:
    rows = db.execute("SELECT frame_index, frame_name, time, focus, blurred, cells, note "
                      "FROM frames ORDER BY frame_index").fetchall()
    return [FrameRow(r[0], r[1], r[2], r[3], bool(r[4]), r[5], r[6]) for r in rows]


def _meta(db: sqlite3.Connection) -> dict[str, Any]:
    return {k: json.loads(v) for k, v in db.execute("SELECT key, value FROM meta ORDER BY key")}
