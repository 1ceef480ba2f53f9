"""The data manifest: a CSV file, one row per image (path, label, sha256, width, height,
split, source), and the records it holds.

Paths are stored relative to the manifest's folder where possible. Identical bytes form one
group (their sha256); an augmented row names its original in `source`, so leak checks see
through augmentation.
"""

from __future__ import annotations

import csv
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from wbcedge.errors import InputDataError, InputFileMissingError
from wbcedge.labels import CLASSES
from wbcedge.preprocess import IMAGE_SUFFIXES  # also re-exported: wbcedge.data.IMAGE_SUFFIXES

FIELDS = ("path", "label", "sha256", "width", "height", "split", "source")
SPLITS = ("train", "val", "test")
EXCLUDED = "excluded"
TINY_SIDE = 32      # smaller than this on either side: reported as tiny
HUGE_SIDE = 4096    # larger than this on either side: reported as huge

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "samples" / "pbc"
"""Four real PBC crops per class, shipped with the package (see its ATTRIBUTION.md)."""


class ManifestError(InputDataError):
    """A data manifest that cannot be read: not a CSV, missing columns, a malformed row."""


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

    @property
    def unreadable(self) -> list[Problem]:
        """Image files that were skipped: corrupt, truncated, too small or large, a bad link or name (hidden files aside)."""
        return [p for p in self.problems if p.action.startswith("skipped") and p.what != "hidden file"
                and Path(p.path).suffix.lower() in IMAGE_SUFFIXES]


# ---------------------------------------------------------------- manifest files

def write_manifest(records: list[Record], path: Path) -> None:
    """Write the manifest atomically: a temporary file in the same folder, fsynced, then renamed over
    `path`, so a crash or a full disk leaves the old manifest as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.parent.resolve()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            writer.writeheader()
            for r in records:
                row = {k: getattr(r, k) for k in FIELDS}
                row["path"] = _relative(r.path, base)
                row["source"] = _relative(r.source, base) if r.source else ""
                writer.writerow(row)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_manifest(path: Path) -> list[Record]:
    """Read a manifest; paths come back as given relative to the manifest's folder, made absolute."""
    path = Path(path)
    if not path.is_file():
        raise InputFileMissingError(f"{path}: no such manifest; make one with `wbcedge data index DIR --out {path}`")
    base = path.parent.resolve()
    try:
        with path.open(newline="", encoding="utf-8") as f:
            return parse_manifest(f, base, str(path))
    except (UnicodeDecodeError, csv.Error) as e:
        raise ManifestError(f"{path}: not a readable CSV manifest ({e}); re-create it with `wbcedge data index`") from None


def parse_manifest(lines, base: Path, where: str = "manifest") -> list[Record]:
    """Records from the CSV text of a manifest (an iterable of lines); ManifestError for anything malformed."""
    out = []
    reader = csv.DictReader(lines)
    missing = set(FIELDS) - set(reader.fieldnames or [])
    if missing:
        raise ManifestError(f"{where}: not a wbcedge manifest (missing columns {sorted(missing)})")
    for line, row in enumerate(reader, start=2):
        try:
            if any(row[k] is None for k in FIELDS) or "\x00" in "".join(row[k] for k in FIELDS):
                raise ValueError("missing fields or a NUL byte")
            width, height = int(row["width"]), int(row["height"])
            if width < 0 or height < 0:
                raise ValueError("negative size")
            out.append(Record(path=os.path.normpath(base / row["path"]), label=row["label"],
                              sha256=row["sha256"], width=width, height=height, split=row["split"],
                              source=os.path.normpath(base / row["source"]) if row["source"] else ""))
        except (TypeError, ValueError) as e:
            raise ManifestError(f"{where}, line {line}: malformed row ({e}); re-create the manifest with "
                                f"`wbcedge data index`") from None
    return out


def _relative(p: str, base: Path) -> str:
    """`p` relative to `base` when they share a folder below the root, else absolute."""
    resolved = Path(p).resolve()
    try:
        if Path(os.path.commonpath([resolved, base])) != Path(resolved.anchor):
            return os.path.relpath(resolved, base)
    except ValueError:  # another drive on Windows
        pass
    return str(resolved)


def load_split(source: Path, split: str | None = None, seed: int = 0) -> list[Record]:
    """Records of a manifest file, or of a class-folder tree (indexed on the fly, all in `split`)."""
    return load_labelled(source, split).records


def load_labelled(source: Path, split: str | None = None) -> IndexResult:
    """`load_split` with the files a class-folder tree's index skipped (`IndexResult.unreadable`); none for a manifest."""
    source = Path(source)
    if source.is_file():
        records = read_manifest(source)
        if split:
            records = [r for r in records if r.split == split]
            if not records:
                raise InputDataError(f"{source} has no rows in split '{split}': run `wbcedge data split` first")
        return IndexResult(records)
    from wbcedge.data.index import index_folder

    result = index_folder(source)
    if not result.records:
        raise InputDataError(_no_images_message(source, result.unreadable))
    for r in result.records:
        r.split = split or "test"
    return result


def _no_images_message(root: Path, unreadable: list[Problem]) -> str:
    """What to do about a class-folder tree whose class folders hold no usable image."""
    folders = ", ".join(sorted(f"{d.name}/" for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")))
    if unreadable:
        return (f"{root} holds no readable images in its class folders ({folders}): {len(unreadable)} image file(s) "
                f"could not be used, e.g. {unreadable[0].path} ({unreadable[0].what}); replace them with readable crops")
    return (f"{root} holds no images in its class folders ({folders}): put the crops under {root}/<class>/, "
            f"e.g. {root}/neutrophil/cell-001.jpg ({', '.join(sorted(IMAGE_SUFFIXES))})")


def counts_by_split(records: list[Record]) -> dict[str, dict[str, int]]:
    table = {c: {s: 0 for s in (*SPLITS, EXCLUDED)} for c in CLASSES}
    for r in records:
        if r.split in table.get(r.label, {}):
            table[r.label][r.split] += 1
    return table
