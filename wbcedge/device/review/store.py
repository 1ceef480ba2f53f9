"""The review record of a counting session: append-only `reviews` rows and one sign-off.

Added to the session's own `cells.db` (tables made with CREATE TABLE IF NOT EXISTS, so a
session recorded before review existed opens fine):

    reviews  (id, cell_id, previous_label, new_label, reviewer, time, comment)
             one row per change, never updated or deleted; a cell's current label is
             its newest row's new_label, else the model's `cells.label` (never overwritten)
    signoff  (reviewer, time): at most one row; once present every change is refused

Each change is one `BEGIN IMMEDIATE` transaction that reads the cell's current label,
checks the sign-off and appends the row, so two reviewers on one session never lose a
change: the last write wins for the cell and every write stays in the audit rows.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from wbcedge.device.differential import ADULT_REFERENCE, REPORT_ORDER, differential
from wbcedge.device.records import DB_FILE, SCHEMA_VERSION
from wbcedge.device.review.agreement import agreement
from wbcedge.errors import InputDataError, OutputFolderError, WbcedgeError
from wbcedge.labels import CLASSES

UNIDENTIFIED = "unidentified"
ARTEFACT = "artefact"
REVIEW_LABELS: tuple[str, ...] = (*sorted(CLASSES, key=REPORT_ORDER.index), UNIDENTIFIED, ARTEFACT)
"""What a reviewer may call a cell: the five classes, unidentified, and not a white cell."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS reviews (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    cell_id         INTEGER NOT NULL REFERENCES cells(id),
    previous_label  TEXT NOT NULL,
    new_label       TEXT NOT NULL,
    reviewer        TEXT NOT NULL,
    time            REAL NOT NULL,
    comment         TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS reviews_cell ON reviews(cell_id, id);
CREATE TABLE IF NOT EXISTS signoff (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    reviewer  TEXT NOT NULL,
    time      REAL NOT NULL
);
"""

_CELL_COLUMNS = "id, frame_index, frame_name, x0, y0, x1, y1, label, confidence, crop_path"


def _latest(db: sqlite3.Connection) -> dict[int, tuple[str, str, float]]:
    """cell id -> (label, reviewer, time) of its newest review row."""
    rows = db.execute("SELECT cell_id, new_label, reviewer, time FROM reviews "
                      "WHERE id IN (SELECT max(id) FROM reviews GROUP BY cell_id)").fetchall()
    return {r[0]: r[1:] for r in rows}


class NotASessionError(InputDataError):
    """The folder given is not a counting session (no cells.db)."""


class NewerSessionError(InputDataError):
    """The session database was written by a newer wbcedge."""


class SignedOffError(WbcedgeError):
    """The session is signed off: its labels are frozen."""


class UnknownCellError(InputDataError):
    """No cell with that id in this session."""


def _label_order(label: str) -> int:
    return REVIEW_LABELS.index(label) if label in REVIEW_LABELS else len(REVIEW_LABELS)


class ReviewStore:
    """Reads a session's cells and appends reviews; one short SQLite connection per call (thread-safe)."""

    def __init__(self, session_dir: Path | str, reference: dict[str, Any] | None = None):
        self.session_dir = Path(session_dir)
        self.db_path = self.session_dir / DB_FILE
        self._local = threading.local()
        self._static_cache: list[tuple] | None = None
        self._by_id: tuple[list[int], list[str]] | None = None
        self._reference: dict | None = dict(reference) if reference is not None else None
        self._model_diff: tuple[int, dict] | None = None
        if not self.session_dir.is_dir():
            raise NotASessionError(f"{self.session_dir} is not a folder: give a session folder that `wbcedge run` "
                                   f"wrote, e.g. runs/session-20260101-120000")
        if not self.db_path.is_file():
            raise NotASessionError(f"{self.session_dir} is not a counting session ({DB_FILE} is missing): give a "
                                   f"session folder that `wbcedge run` wrote, e.g. runs/session-20260101-120000")
        if not (os.access(self.db_path, os.W_OK) and os.access(self.session_dir, os.W_OK)):
            raise OutputFolderError(f"{self.session_dir} is read-only, and a review writes its audit rows into "
                                    f"{DB_FILE}: copy the session folder somewhere writable and review the copy")
        try:
            with self._db() as db:
                tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                if not {"meta", "cells"} <= tables:
                    raise NotASessionError(f"{self.db_path} holds no session records (tables meta and cells are "
                                           f"missing): give a session folder that `wbcedge run` wrote")
                row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
                version = json.loads(row[0]) if row else 1
                if not isinstance(version, int) or version > SCHEMA_VERSION:
                    raise NewerSessionError(
                        f"{self.db_path} was written by a newer wbcedge (session schema {version}; this one reads up "
                        f"to {SCHEMA_VERSION}): upgrade wbcedge on this machine to review it")
                db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            if "readonly" in str(exc).replace("-", "").replace(" ", "").lower():
                raise OutputFolderError(f"{self.session_dir} is read-only, and a review writes its audit rows into "
                                        f"{DB_FILE}: copy the session folder somewhere writable and review the copy") \
                    from None
            raise NotASessionError(f"{self.db_path} cannot be read as a session database ({exc}): give a session "
                                   f"folder that `wbcedge run` wrote") from None

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection to the session database (kept open: closing the last one checkpoints)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(str(self.db_path), isolation_level=None, timeout=30)
            # WAL with synchronous=NORMAL (as the recorder): a commit is atomic and never corrupts the
            # database, but a power cut may roll back the last few changes; the sign-off syncs fully.
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        yield db

    # ------------------------------------------------------------ reading

    def meta(self) -> dict[str, Any]:
        with self._db() as db:
            return {k: json.loads(v) for k, v in db.execute("SELECT key, value FROM meta")}

    def cells(self, offset: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """Cells grouped by the model's label (report order), least confident first."""
        with self._db() as db:
            static = self._static(db)
            page = static[offset:] if limit is None else static[offset:offset + limit]
            latest = _latest(db)
        return [_cell_dict(r, latest.get(r[0])) for r in page]

    def cell(self, cell_id: int) -> dict[str, Any]:
        with self._db() as db:
            return self._cell(db, cell_id)

    def _cell(self, db: sqlite3.Connection, cell_id: int) -> dict[str, Any]:
        row = db.execute(f"SELECT {_CELL_COLUMNS} FROM cells WHERE id = ?", (int(cell_id),)).fetchone()
        if row is None:
            raise UnknownCellError(f"this session has no cell {cell_id}: reload the cell list")
        review = db.execute("SELECT new_label, reviewer, time FROM reviews WHERE cell_id = ? ORDER BY id DESC LIMIT 1",
                            (int(cell_id),)).fetchone()
        return _cell_dict(row, review)

    def _static(self, db: sqlite3.Connection) -> list[tuple]:
        """The recorded cells in page order; recorded rows never change, so they are read again only when
        cells were added (a session still counting)."""
        n = db.execute("SELECT count(*) FROM cells").fetchone()[0]
        cached = self._static_cache
        if cached is None or len(cached) != n:
            rows = db.execute(f"SELECT {_CELL_COLUMNS} FROM cells").fetchall()
            rows.sort(key=lambda r: (_label_order(r[7]), r[8], r[0]))
            self._static_cache = cached = rows
        return cached

    def count(self) -> int:
        with self._db() as db:
            return int(db.execute("SELECT count(*) FROM cells").fetchone()[0])

    def crop_path(self, cell_id: int) -> Path | None:
        """The crop file of a cell, when it was recorded and is still inside the session folder."""
        with self._db() as db:
            row = db.execute("SELECT crop_path FROM cells WHERE id = ?", (int(cell_id),)).fetchone()
        if row is None or not row[0]:
            return None
        path = (self.session_dir / row[0]).resolve()
        if self.session_dir.resolve() not in path.parents or not path.is_file():
            return None
        return path

    def labels(self) -> tuple[list[int], list[str], list[str | None]]:
        """(cell ids, model labels, reviewed labels or None where not reviewed), in id order."""
        with self._db() as db:
            static = self._static(db)
            latest = _latest(db)
        if self._by_id is None or len(self._by_id[0]) != len(static):
            pairs = sorted((r[0], r[7]) for r in static)
            self._by_id = ([p[0] for p in pairs], [p[1] for p in pairs])
        ids, model = self._by_id
        return ids, model, [latest[i][0] if i in latest else None for i in ids]

    def history(self, cell_id: int | None = None) -> list[dict[str, Any]]:
        sql = "SELECT id, cell_id, previous_label, new_label, reviewer, time, comment FROM reviews"
        with self._db() as db:
            rows = db.execute(sql + (" WHERE cell_id = ? ORDER BY id" if cell_id is not None else " ORDER BY id"),
                              () if cell_id is None else (int(cell_id),)).fetchall()
        keys = ("id", "cell_id", "previous_label", "new_label", "reviewer", "time", "comment")
        return [dict(zip(keys, r)) for r in rows]

    def signoff(self) -> dict[str, Any] | None:
        with self._db() as db:
            row = db.execute("SELECT reviewer, time FROM signoff WHERE id = 1").fetchone()
        return None if row is None else {"reviewer": row[0], "time": row[1], "time_text": _iso(row[1])}

    def reference(self) -> dict[str, tuple[float, float]]:
        """The reference ranges the session was counted with (from its differential.json), else adult ranges."""
        try:
            old = json.loads((self.session_dir / "differential.json").read_text(encoding="utf-8"))
            types = old["differential"]["types"]
            return {c: (t["reference_low"], t["reference_high"]) for c, t in types.items()
                    if t.get("reference_low") is not None}
        except (OSError, ValueError, KeyError, TypeError):
            return dict(ADULT_REFERENCE)

    def summary(self) -> dict[str, Any]:
        """The differential from the reviewed labels (model's where not reviewed), the model's, and progress."""
        _, model, reviewed = self.labels()
        final = [r if r is not None else m for m, r in zip(model, reviewed)]
        if self._reference is None:
            self._reference = self.reference()
        reference = self._reference
        if self._model_diff is None or self._model_diff[0] != len(model):
            self._model_diff = (len(model), _differential(model, reference))
        return {
            "total_cells": len(model),
            "reviewed_cells": sum(r is not None for r in reviewed),
            "artefacts": sum(lab == ARTEFACT for lab in final),
            "differential": _differential(final, reference),
            "model_differential": self._model_diff[1],
            "agreement": agreement(model, final, REVIEW_LABELS),
            "signoff": self.signoff(),
        }

    # ------------------------------------------------------------ writing

    def set_label(self, cell_id: int, label: str, reviewer: str, comment: str = "") -> dict[str, Any]:
        """Append one review row; returns the cell as it now stands. Refused once signed off."""
        label = check_label(label)
        reviewer = check_reviewer(reviewer)
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                self._refuse_if_signed(db)
                current = self._cell(db, cell_id)
                previous = current["label"]
                db.execute("INSERT INTO reviews(cell_id, previous_label, new_label, reviewer, time, comment) "
                           "VALUES (?, ?, ?, ?, ?, ?)", (int(cell_id), previous, label, reviewer, time.time(),
                                                         str(comment or "")))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return self._cell(db, cell_id)

    def sign_off(self, reviewer: str, accept_remaining: bool = False) -> dict[str, Any]:
        """Freeze the session under the reviewer's name and rewrite its report with the reviewed differential.

        Cells nobody reviewed block the sign-off, unless `accept_remaining`: then each gets an
        audit row accepting the model's label ("accepted at sign-off") in the same transaction.
        """
        reviewer = check_reviewer(reviewer)
        now = time.time()
        with self._db() as db:
            db.execute("PRAGMA synchronous=FULL")
            db.execute("BEGIN IMMEDIATE")
            try:
                self._refuse_if_signed(db)
                pending = db.execute("SELECT id, label FROM cells c WHERE NOT EXISTS "
                                     "(SELECT 1 FROM reviews r WHERE r.cell_id = c.id) ORDER BY id").fetchall()
                if pending and not accept_remaining:
                    raise InputDataError(f"{len(pending)} cell(s) are not reviewed yet: review them, or sign off "
                                         f"with accept_remaining to accept the model's label for each of them")
                db.executemany("INSERT INTO reviews(cell_id, previous_label, new_label, reviewer, time, comment) "
                               "VALUES (?, ?, ?, ?, ?, 'accepted at sign-off')",
                               [(cid, lab, lab, reviewer, now) for cid, lab in pending])
                db.execute("INSERT INTO signoff(id, reviewer, time) VALUES (1, ?, ?)", (reviewer, now))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            finally:
                db.execute("PRAGMA synchronous=NORMAL")
        self.write_report()
        return self.summary()

    def write_report(self) -> dict[str, Path]:
        """Rewrite differential.json/.csv and report.html with the reviewed and the model's differential."""
        from wbcedge.device.report import write_session_outputs

        return write_session_outputs(self.session_dir, reference=self.reference())

    def report_parts(self) -> tuple[dict[str, Any], dict[str, Any], dict[int, str]]:
        """What a signed-off report adds: (reviewed differential, the "review" block, cell id -> reviewed label)."""
        summary = self.summary()
        review = {"signoff": summary["signoff"], "reviewed_cells": summary["reviewed_cells"],
                  "total_cells": summary["total_cells"], "artefacts": summary["artefacts"],
                  "agreement": summary["agreement"], "model_differential": summary["model_differential"]}
        ids, _, reviewed = self.labels()
        final = {cid: r for cid, r in zip(ids, reviewed) if r is not None}
        return summary["differential"], review, final

    def _refuse_if_signed(self, db: sqlite3.Connection) -> None:
        row = db.execute("SELECT reviewer, time FROM signoff WHERE id = 1").fetchone()
        if row is not None:
            raise SignedOffError(f"this session was signed off by {row[0]} at {_iso(row[1])}: its labels are "
                                 f"frozen. Count a new session to review again.")


def signed_off_review(session_dir: Path | str, reference: Any) -> tuple[dict, dict, dict[int, str]] | None:
    """`ReviewStore.report_parts` of a signed-off session (labels counted against `reference`), else None."""
    db_path = Path(session_dir) / DB_FILE
    db = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        has_table = db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='signoff'").fetchone()
        signed = has_table and db.execute("SELECT 1 FROM signoff WHERE id = 1").fetchone()
    finally:
        db.close()
    return ReviewStore(session_dir, reference=reference).report_parts() if signed else None


def check_label(label: Any) -> str:
    text = str(label or "").strip().lower()
    if text in ("artifact", "not a white cell"):
        text = ARTEFACT
    if text not in REVIEW_LABELS:
        raise InputDataError(f"'{label}' is not a label a reviewer can give: choose one of {', '.join(REVIEW_LABELS)}")
    return text


def check_reviewer(reviewer: Any) -> str:
    text = str(reviewer or "").strip()
    if not text:
        raise InputDataError("the reviewer's name is empty: enter your name so every change says who made it")
    if len(text) > 100:
        raise InputDataError("the reviewer's name is longer than 100 characters: enter a shorter name or initials")
    return text


def _differential(labels: list[str], reference: dict) -> dict[str, Any]:
    return differential([lab for lab in labels if lab != ARTEFACT], reference=reference,
                        unidentified_label=UNIDENTIFIED)


def _cell_dict(r: tuple, review: tuple | None) -> dict[str, Any]:
    return {"id": r[0], "frame_index": r[1], "frame_name": r[2], "box": [r[3], r[4], r[5], r[6]],
            "model_label": r[7], "confidence": r[8], "has_crop": bool(r[9]),
            "label": review[0] if review else r[7], "reviewed": review is not None,
            "reviewer": review[1] if review else None, "reviewed_at": review[2] if review else None}


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))
