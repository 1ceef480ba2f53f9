"""Reviewed cells as training data: `DIR/<class>/<session>_<cell>.jpg` plus `DIR/manifest.csv`.

The manifest has the data manifest's columns (`wbcedge.data.manifest.FIELDS`, so
`read_manifest` reads it) and, after them, where each crop came from: session, cell_id,
reviewer, reviewed_at (ISO time), model_label, model_confidence, signed_off_by. `split` is
left empty: the consumer (`wbcedge adapt`, `wbcedge data split`) decides. Only cells a
reviewer labelled with one of the five classes are written; unidentified and artefact
cells never are, unreviewed cells only with `include_unreviewed` (model's label, no reviewer).
"""

from __future__ import annotations

import csv
import hashlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from wbcedge.data.manifest import FIELDS
from wbcedge.device.review.store import ReviewStore
from wbcedge.errors import InputDataError, OutputFolderError
from wbcedge.labels import CLASSES

MANIFEST_FILE = "manifest.csv"
PROVENANCE_FIELDS = ("session", "cell_id", "reviewer", "reviewed_at", "model_label", "model_confidence",
                     "signed_off_by")


@dataclass
class ExportResult:
    out: Path
    manifest: Path
    written: dict[str, int]           # class -> crops written
    skipped: dict[str, int]           # reason -> cells left out


def export_reviewed(sessions: list[Path | str], out: Path | str, include_unreviewed: bool = False) -> ExportResult:
    """Write the reviewed cells of one or more sessions as a class-folder tree and a manifest."""
    stores = [ReviewStore(s) for s in sessions]  # every session is checked before anything is written
    names = [s.session_dir.resolve().name for s in stores]
    if len(set(names)) != len(names):
        raise OutputFolderError(f"two sessions share a folder name ({', '.join(names)}): file names would clash; "
                                f"export them into separate folders")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputFolderError(f"{out} exists and is not an empty folder: export into a new folder so earlier "
                                f"exports are not mixed in")
    skipped: dict[str, int] = {}
    chosen = []
    for store, name in zip(stores, names):
        for cell in store.cells():
            reason = _leave_out(cell, include_unreviewed)
            if reason is None and store.crop_path(cell["id"]) is None:
                reason = "no crop on disk"
            if reason:
                skipped[reason] = skipped.get(reason, 0) + 1
            else:
                chosen.append((store, name, cell))
    if not chosen:
        left = ", ".join(f"{v} {k}" for k, v in skipped.items()) or "no cells"
        raise InputDataError(f"nothing to export from {', '.join(str(s) for s in sessions)} ({left}): review the "
                             "cells first (wbcedge review SESSION), or add --include-unreviewed to take the model's "
                             "labels where nobody reviewed")
    written = {c: 0 for c in CLASSES}
    rows = []
    signoffs = {name: store.signoff() for store, name in zip(stores, names)}
    for store, name, cell in chosen:
        signoff = signoffs[name]
        label = cell["label"]
        dest = out / label / f"{name}_{cell['id']}.jpg"
        dest.parent.mkdir(parents=True, exist_ok=True)
        src = store.crop_path(cell["id"])
        shutil.copyfile(src, dest)
        data = dest.read_bytes()
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        h, w = image.shape[:2] if image is not None else (0, 0)
        rows.append({"path": f"{label}/{dest.name}", "label": label, "sha256": hashlib.sha256(data).hexdigest(),
                     "width": w, "height": h, "split": "", "source": "",
                     "session": name, "cell_id": cell["id"], "reviewer": cell["reviewer"] or "",
                     "reviewed_at": _iso(cell["reviewed_at"]), "model_label": cell["model_label"],
                     "model_confidence": f"{cell['confidence']:.4f}",
                     "signed_off_by": signoff["reviewer"] if signoff else ""})
        written[label] += 1
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / MANIFEST_FILE
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=(*FIELDS, *PROVENANCE_FIELDS))
        writer.writeheader()
        writer.writerows(rows)
    return ExportResult(out, manifest, written, skipped)


def _leave_out(cell: dict, include_unreviewed: bool) -> str | None:
    if not cell["reviewed"] and not include_unreviewed:
        return "not reviewed"
    if cell["label"] not in CLASSES:
        return f"labelled {cell['label']}"
    return None


def _iso(t: float | None) -> str:
    return "" if t is None else time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))
