"""The data layer: index a class-folder tree into a manifest and split it without leaks.

A manifest is a CSV file, one row per image: path (relative to the manifest's
folder where possible), label, sha256, width, height, split, and a `source`
column that augmented rows fill with the original they came from. Files with
identical bytes form one group (their sha256) and always land in one split;
a group whose copies carry different labels is reported and excluded.
"""

from __future__ import annotations

import csv
import hashlib
import os
import random
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from wbcedge.labels import CLASSES, SKIP, UnknownClassError, normalize_class

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
FIELDS = ("path", "label", "sha256", "width", "height", "split", "source")
SPLITS = ("train", "val", "test")
EXCLUDED = "excluded"


@dataclass
class Record:
    path: str
    label: str
    sha256: str
    width: int
    height: int
    split: str = ""
    source: str = ""


@dataclass
class Problem:
    """One line about a file the index could not use as it was, and what was done."""
    path: str
    what: str
    action: str

    def __str__(self) -> str:
        return f"{self.path}: {self.what} -> {self.action}"


@dataclass
class IndexResult:
    records: list[Record]
    problems: list[Problem] = field(default_factory=list)


def _probe(path: str) -> tuple[str, int, int, str | None]:
    """sha256, width, height and an oddity note for one file (runs in a worker)."""
    data = Path(path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if not data:
        return digest, 0, 0, "empty file"
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        return digest, 0, 0, "not a readable image (corrupt, truncated or not an image)"
    h, w = image.shape[:2]
    odd = []
    if image.ndim == 2 or image.shape[2] == 1:
        odd.append("grayscale")
    elif image.shape[2] == 4:
        odd.append("RGBA")
    if image.dtype != np.uint8:
        odd.append(f"{image.dtype.itemsize * 8}-bit")
    if min(h, w) < 32:
        odd.append(f"tiny ({w}x{h})")
    if max(h, w) > 4096:
        odd.append(f"huge ({w}x{h})")
    return digest, w, h, ", ".join(odd) or None


def index_folder(root: Path, class_map: dict[str, str] | None = None, workers: int | None = None,
                 progress=None) -> IndexResult:
    """Index `root/<class>/<image>` into records. Unknown class folders raise UnknownClassError."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder: give a folder with one sub-folder per class")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise ValueError(f"{root} has no class sub-folders: expected e.g. {root}/neutrophil/*.jpg")
    problems: list[Problem] = []
    jobs: list[tuple[Path, str]] = []
    for d in class_dirs:
        label = normalize_class(d.name, class_map)  # raises with the list of known classes
        if label == SKIP:
            problems.append(Problem(str(d), "folder mapped to skip", "left out"))
            continue
        files = sorted(p for p in d.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            problems.append(Problem(str(d), "empty class folder", "no images from it"))
        for p in files:
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                problems.append(Problem(str(p), f"not an image file ({p.suffix or 'no suffix'})", "skipped"))
                continue
            jobs.append((p, label))
    records: list[Record] = []
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count()) as pool:
        for (p, label), (digest, w, h, note) in zip(jobs, pool.map(_probe, [str(p) for p, _ in jobs], chunksize=64)):
            if progress:
                progress()
            if w == 0:
                problems.append(Problem(str(p), note, "skipped"))
                continue
            if note:
                problems.append(Problem(str(p), note, "kept; converted to 8-bit RGB when read"))
            records.append(Record(str(p), label, digest, w, h))
    return IndexResult(records, problems)


# ---------------------------------------------------------------- splitting

def duplicate_groups(records: list[Record]) -> dict[str, list[Record]]:
    """sha256 -> records, for every hash that more than one file shares."""
    groups: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        groups[r.sha256].append(r)
    return {h: rs for h, rs in groups.items() if len(rs) > 1}


def conflicting_groups(records: list[Record]) -> dict[str, list[Record]]:
    """Duplicate groups whose copies carry different labels."""
    return {h: rs for h, rs in duplicate_groups(records).items() if len({r.label for r in rs}) > 1}


def split_records(records: list[Record], seed: int = 0, test_per_class: int | None = 100,
                  test_fraction: float | None = None, val_fraction: float = 0.2) -> list[Problem]:
    """Assign `split` in place, group by group; returns the conflicts it excluded.

    Paper protocol: `test_per_class` random images per class go to test, the rest
    to train, then train is split train/val by `val_fraction` (paper: 80:20).
    Fractional protocol: `test_per_class=None` and `test_fraction` set.
    """
    if (test_per_class is None) == (test_fraction is None):
        raise ValueError("choose one protocol: test_per_class (paper) or test_fraction")
    by_hash: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        by_hash[r.sha256].append(r)
    problems = []
    by_class: dict[str, list[list[Record]]] = defaultdict(list)
    for digest in sorted(by_hash):
        group = by_hash[digest]
        labels = sorted({r.label for r in group})
        if len(labels) > 1:
            for r in group:
                r.split = EXCLUDED
            problems.append(Problem(", ".join(r.path for r in group),
                                    f"identical bytes labelled {' and '.join(labels)}", "excluded from every split"))
            continue
        by_class[labels[0]].append(group)
    rng = random.Random(seed)
    for label in sorted(by_class):
        groups = by_class[label]
        rng.shuffle(groups)
        n_images = sum(len(g) for g in groups)
        n_test = test_per_class if test_per_class is not None else round(n_images * test_fraction)
        if n_test >= n_images:
            raise ValueError(f"class {label} has {n_images} images, not enough for {n_test} test images")
        taken = 0
        rest: list[list[Record]] = []
        for g in groups:
            if taken < n_test:
                _assign(g, "test")
                taken += len(g)
            else:
                rest.append(g)
        n_val = round(sum(len(g) for g in rest) * val_fraction)
        taken = 0
        for g in rest:
            if taken < n_val:
                _assign(g, "val")
                taken += len(g)
            else:
                _assign(g, "train")
    return problems


def _assign(group: list[Record], split: str) -> None:
    for r in group:
        r.split = split


def straddling_groups(records: list[Record]) -> dict[str, set[str]]:
    """Groups of identical files (or augmented copies, through `source`) found in more than one split."""
    split_of_hash: dict[str, set[str]] = defaultdict(set)
    hash_of_path = {r.path: r.sha256 for r in records if not r.source}
    for r in records:
        if r.split in SPLITS:
            key = hash_of_path.get(r.source, r.source) if r.source else r.sha256
            split_of_hash[key].add(r.split)
    return {h: s for h, s in split_of_hash.items() if len(s) > 1}


# ---------------------------------------------------------------- manifest files

def write_manifest(records: list[Record], path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.parent.resolve()
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for r in records:
            row = {k: getattr(r, k) for k in FIELDS}
            row["path"] = _relative(r.path, base)
            row["source"] = _relative(r.source, base) if r.source else ""
            writer.writerow(row)


def read_manifest(path: Path) -> list[Record]:
    """Read a manifest; paths come back as given relative to the manifest's folder, made absolute."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such manifest; make one with `wbcedge data index DIR --out {path}`")
    base = path.parent.resolve()
    out = []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = set(FIELDS) - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: not a wbcedge manifest (missing columns {sorted(missing)})")
        for row in reader:
            out.append(Record(path=os.path.normpath(base / row["path"]), label=row["label"], sha256=row["sha256"],
                              width=int(row["width"]), height=int(row["height"]), split=row["split"],
                              source=os.path.normpath(base / row["source"]) if row["source"] else ""))
    return out


def _relative(p: str, base: Path) -> str:
    try:
        return os.path.relpath(Path(p).resolve(), base)
    except ValueError:  # another drive on Windows
        return str(Path(p).resolve())


def load_split(source: Path, split: str | None = None, seed: int = 0) -> list[Record]:
    """Records of a manifest file, or of a class-folder tree (indexed on the fly, all in `split`)."""
    source = Path(source)
    if source.is_file():
        records = read_manifest(source)
        if split:
            records = [r for r in records if r.split == split]
            if not records:
                raise ValueError(f"{source} has no rows in split '{split}': run `wbcedge data split` first")
        return records
    records = index_folder(source).records
    for r in records:
        r.split = split or "test"
    return records


def counts_by_split(records: list[Record]) -> dict[str, dict[str, int]]:
    table = {c: {s: 0 for s in (*SPLITS, EXCLUDED)} for c in CLASSES}
    for r in records:
        if r.split in table.get(r.label, {}):
            table[r.label][r.split] += 1
    return table
