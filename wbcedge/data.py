"""The data layer: index a class-folder tree into a manifest, split it without leaks,
check it, and augment its train split.

A manifest is a CSV file, one row per image: path (relative to the manifest's
folder where possible), label, sha256, width, height, split, and a `source`
column that augmented rows fill with the original they came from. Files with
identical bytes form one group (their sha256) and always land in one split;
a group whose copies carry different labels is reported and excluded. An
augmented file belongs to the group of its source, so leak checks see through
augmentation.

Every file the index cannot use as it is gets one `Problem` line that names it
and says what was done with it; nothing is dropped silently.
"""

from __future__ import annotations

import csv
import hashlib
import math
import multiprocessing
import os
import random
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from wbcedge.labels import CLASSES, SKIP, UnknownClassError, normalize_class
from wbcedge.preprocess import read_image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
FIELDS = ("path", "label", "sha256", "width", "height", "split", "source")
SPLITS = ("train", "val", "test")
EXCLUDED = "excluded"
TINY_SIDE = 32      # smaller than this on either side: reported as tiny
HUGE_SIDE = 4096    # larger than this on either side: reported as huge

SAMPLES_DIR = Path(__file__).parent / "samples" / "pbc"
"""Four real PBC crops per class, shipped with the package (see its ATTRIBUTION.md)."""


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


# ---------------------------------------------------------------- parallel helpers

def _worker_init() -> None:
    cv2.setNumThreads(1)  # one process per core already; OpenCV threads would only contend


def _parallel_map(fn: Callable, items: list, workers: int | None = None, chunksize: int = 16) -> Iterator:
    """`map(fn, items)` in order, over all cores unless `workers` says otherwise.

    Workers come from a fork server, never a fork of this process: forking a process
    that runs threads (a rich progress bar, OpenCV, TensorFlow) can hang the children.
    As with any multiprocessing code, a script that calls this needs the
    `if __name__ == "__main__":` guard; `workers=1` runs in this process instead.
    """
    workers = min(workers or os.cpu_count() or 1, len(items))
    if workers <= 1:
        yield from map(fn, items)
        return
    if os.name == "posix":
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])  # workers start with OpenCV already imported
    else:
        context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_init) as pool:
        yield from pool.map(fn, items, chunksize=chunksize)


# ---------------------------------------------------------------- indexing

def _has_jpeg_end(data: bytes) -> bool:
    """True when a JPEG ends with its end-of-image marker (FFD9), padding after it allowed.

    A truncated JPEG lacks it; some decoders still return its top rows and a grey rest.
    FFD9 cannot occur inside entropy-coded data, so finding it in the last bytes is enough.
    """
    return b"\xff\xd9" in data[-1024:]


def _inspect(data: bytes) -> tuple[int, int, str | None, str | None]:
    """(width, height, why it is unusable or None, oddities or None) for an image's bytes."""
    if not data:
        return 0, 0, "empty file (0 bytes)", None
    if data[:2] == b"\xff\xd8" and not _has_jpeg_end(data):
        return 0, 0, "truncated JPEG (no end-of-image marker FFD9)", None
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        return 0, 0, "not a readable image (corrupt, truncated or not an image format)", None
    h, w = image.shape[:2]
    odd = []
    if image.ndim == 2 or image.shape[2] == 1:
        odd.append("grayscale")
    elif image.shape[2] == 4:
        odd.append("RGBA")
    if image.dtype != np.uint8:
        odd.append(f"{image.dtype.itemsize * 8}-bit")
    if min(h, w) < TINY_SIDE:
        odd.append(f"tiny ({w}x{h})")
    if max(h, w) > HUGE_SIDE:
        odd.append(f"huge ({w}x{h})")
    return w, h, None, ", ".join(odd) or None


def _probe(path: str) -> tuple[str, int, int, str | None, str | None]:
    """sha256, width, height, why unusable, oddities for one file (runs in a worker)."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        return "", 0, 0, f"cannot be read ({e.strerror or e})", None
    return (hashlib.sha256(data).hexdigest(), *_inspect(data))


def index_folder(root: Path, class_map: dict[str, str] | None = None, workers: int | None = None,
                 progress=None) -> IndexResult:
    """Index `root/<class>/<image>` into records (split left empty).

    Class folder names are normalised (`labels.normalize_class`); `class_map` maps
    further names, to a class or to 'skip'. Unknown class folders raise
    UnknownClassError naming all of them. `progress`, if given, is called once per
    image file probed.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder: give a folder with one sub-folder per class")
    entries = sorted(root.iterdir())
    class_dirs = [d for d in entries if d.is_dir() and not d.name.startswith(".")]
    if not class_dirs:
        raise ValueError(f"{root} has no class sub-folders: expected e.g. {root}/neutrophil/*.jpg")
    labels: dict[Path, str] = {}
    unknown: list[str] = []
    for d in class_dirs:
        try:
            labels[d] = normalize_class(d.name, class_map)
        except UnknownClassError:
            unknown.append(d.name)
    if unknown:
        names = ", ".join(f"'{n}'" for n in unknown)
        raise UnknownClassError(
            f"{root}: folder(s) {names} are not known white blood cell classes. Known classes: "
            f"{', '.join(CLASSES)}. Map each with --map '{unknown[0]}=<class>' "
            f"(or --map '{unknown[0]}=skip' to leave it out).")
    problems = [Problem(str(p), "file outside the class folders", "skipped")
                for p in entries if not p.is_dir()]
    problems += [Problem(str(p), "hidden folder", "skipped")
                 for p in entries if p.is_dir() and p.name.startswith(".")]
    jobs: list[tuple[Path, str]] = []
    for d in class_dirs:
        label = labels[d]
        if label == SKIP:
            problems.append(Problem(str(d), "folder mapped to skip", "left out"))
            continue
        files = sorted(p for p in d.rglob("*") if p.is_file())
        if not files:
            problems.append(Problem(str(d), "empty class folder", "no images from it"))
        for p in files:
            if any(part.startswith(".") for part in p.relative_to(d).parts):
                problems.append(Problem(str(p), "hidden file", "skipped"))
            elif p.suffix.lower() not in IMAGE_SUFFIXES:
                problems.append(Problem(str(p), f"not an image file ({p.suffix or 'no suffix'})", "skipped"))
            else:
                jobs.append((p, label))
    records: list[Record] = []
    results = _parallel_map(_probe, [str(p) for p, _ in jobs], workers, chunksize=64)
    for (p, label), (digest, w, h, unusable, odd) in zip(jobs, results):
        if progress:
            progress()
        if unusable:
            problems.append(Problem(str(p), unusable, "skipped"))
            continue
        if odd:
            problems.append(Problem(str(p), odd, "kept; converted to 8-bit RGB when read"))
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


def leak_groups(records: list[Record]) -> dict[str, list[Record]]:
    """Records grouped by the image they show: their own sha256, or for an augmented
    row the sha256 of its source (its source path when the source is not listed)."""
    hash_of_path = {r.path: r.sha256 for r in records if not r.source}
    groups: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        groups[hash_of_path.get(r.source, r.source) if r.source else r.sha256].append(r)
    return groups


def split_records(records: list[Record], seed: int = 0, test_per_class: int | None = 100,
                  test_fraction: float | None = None, val_fraction: float = 0.2) -> list[Problem]:
    """Assign `split` in place, group by group; returns the conflicts it excluded.

    Paper protocol: `test_per_class` random images per class go to test, the rest
    to train, then train is split train/val by `val_fraction` (paper: 80:20).
    Fractional protocol: `test_per_class=None` and `test_fraction` set.
    Each class is shuffled by its own generator (seed and class name), so adding
    or removing a class leaves the other classes' splits as they were.
    """
    if (test_per_class is None) == (test_fraction is None):
        raise ValueError("choose one protocol: test_per_class (paper) or test_fraction")
    if test_per_class is not None and test_per_class < 0:
        raise ValueError(f"test_per_class must be 0 or more, got {test_per_class}")
    if test_fraction is not None and not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if any(r.source for r in records):
        raise ValueError("this manifest holds augmented rows: split the manifest written by `wbcedge data "
                         "index`, then augment its train split")
    groups = leak_groups(records)
    problems = []
    by_class: dict[str, list[list[Record]]] = defaultdict(list)
    for key in sorted(groups):
        group = groups[key]
        labels = sorted({r.label for r in group})
        if len(labels) > 1:
            _assign(group, EXCLUDED)
            problems.append(Problem(", ".join(r.path for r in group),
                                    f"identical bytes labelled {' and '.join(labels)}", "excluded from every split"))
            continue
        by_class[labels[0]].append(group)
    for label in sorted(by_class):
        class_groups = by_class[label]
        random.Random(f"{seed}:{label}").shuffle(class_groups)
        n_images = sum(len(g) for g in class_groups)
        n_test = test_per_class if test_per_class is not None else round(n_images * test_fraction)
        if n_test >= n_images:
            raise ValueError(f"class {label} has {n_images} images, not enough for {n_test} test images "
                             f"and a train split: ask for fewer test images per class")
        taken = 0
        rest: list[list[Record]] = []
        for g in class_groups:
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
    out = {}
    for key, group in leak_groups(records).items():
        splits = {r.split for r in group if r.split in SPLITS}
        if len(splits) > 1:
            out[key] = splits
    return out


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
        for line, row in enumerate(reader, start=2):
            try:
                out.append(Record(path=os.path.normpath(base / row["path"]), label=row["label"],
                                  sha256=row["sha256"], width=int(row["width"]), height=int(row["height"]),
                                  split=row["split"],
                                  source=os.path.normpath(base / row["source"]) if row["source"] else ""))
            except (TypeError, ValueError) as e:
                raise ValueError(f"{path}, line {line}: malformed row ({e}); re-create the manifest with "
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


# ---------------------------------------------------------------- checking

@dataclass
class CheckResult:
    counts: dict[str, dict[str, int]]          # class -> split -> rows (train includes augmented)
    augmented: dict[str, int]                  # class -> augmented train rows
    unsplit: int                               # rows with no split yet
    duplicates: dict[str, list[Record]]        # sha256 -> copies, all duplicate groups
    conflicts: dict[str, list[Record]]         # the duplicate groups with more than one label
    straddling: dict[str, list[Record]]        # group key -> rows, groups found in more than one split
    broken: list[Problem] = field(default_factory=list)  # missing, unreadable, changed, unknown label
    odd: list[Problem] = field(default_factory=list)     # readable but non-RGB, 16-bit, tiny or huge

    @property
    def ok(self) -> bool:
        """Safe to train on: no leak between splits and every listed file is there as indexed."""
        return not self.straddling and not self.broken


def check_records(records: list[Record], workers: int | None = None, progress=None) -> CheckResult:
    """Re-read every file of a manifest and report what would make training on it wrong."""
    groups = leak_groups(records)
    straddling = {k: groups[k] for k in straddling_groups(records)}
    broken = [Problem(r.path, f"unknown label '{r.label}'", f"re-index; labels are {', '.join(CLASSES)}")
              for r in records if r.label not in CLASSES]
    odd = []
    for r, (digest, w, h, unusable, oddity) in zip(
            records, _parallel_map(_probe, [r.path for r in records], workers, chunksize=64)):
        if progress:
            progress()
        if unusable:
            missing = not Path(r.path).exists()
            broken.append(Problem(r.path, "missing" if missing else unusable,
                                  "restore it, or re-run `wbcedge data index`"))
        elif digest != r.sha256:
            broken.append(Problem(r.path, "bytes changed since indexing",
                                  "re-run `wbcedge data index` and `split`: its duplicate group may differ"))
        elif oddity:
            odd.append(Problem(r.path, oddity, "usable; converted to 8-bit RGB when read"))
    augmented: dict[str, int] = defaultdict(int)
    for r in records:
        if r.source and r.split == "train":
            augmented[r.label] += 1
    return CheckResult(counts=counts_by_split(records), augmented=dict(augmented),
                       unsplit=sum(1 for r in records if not r.split),
                       duplicates=duplicate_groups(records), conflicts=conflicting_groups(records),
                       straddling=straddling, broken=broken, odd=odd)


# ---------------------------------------------------------------- augmentation

ROTATIONS = (5, 10, 15, 90)      # degrees, each clockwise or counter-clockwise (paper)
ZOOM = (0.05, 0.20)              # zoom in by 5-20 % (paper)
JPEG_QUALITY = 95
AUGMENTED_TAG = "_aug"           # augmented file names: <source stem>_aug<copy>.jpg


def rotation_fill_scale(width: int, height: int, degrees: float) -> float:
    """The zoom that makes a `width` x `height` picture rotated by `degrees` fill its own
    frame again: the crop that leaves no blank corner, with the aspect ratio kept.

    Measured between the centres of the outermost pixels, which is where the
    bilinear samples of the output's corner pixels fall.
    """
    w, h = max(width - 1, 1), max(height - 1, 1)
    c, s = abs(math.cos(math.radians(degrees))), abs(math.sin(math.radians(degrees)))
    return max((w * c + h * s) / w, (w * s + h * c) / h)


def augment_image(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One augmented copy, the size of `image`: rotated by one of +-5/10/15/90 degrees,
    zoomed in by 5-20 % on top of the crop that removes the blank corners, and
    flipped horizontally and/or vertically at random. One interpolation in all."""
    h, w = image.shape[:2]
    angle = float(rng.choice(ROTATIONS)) * float(rng.choice((-1, 1)))
    zoom = 1.0 + rng.uniform(*ZOOM)
    # The margin keeps the corner samples a fraction of a pixel inside the picture,
    # out of reach of warpAffine's fixed-point rounding.
    scale = zoom * rotation_fill_scale(w, h, angle) * (1.0 + 1.0 / max(w, h))
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle, scale)
    out = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    flip = int(rng.integers(4))  # 0 none, 1 horizontal, 2 vertical, 3 both
    if flip:
        out = cv2.flip(out, {1: 1, 2: 0, 3: -1}[flip])
    return out


@dataclass
class _AugmentJob:
    source: str
    sha256: str
    seed: int
    copies: list[tuple[int, str]]  # (copy number, output path)


def _augment_source(job: _AugmentJob) -> tuple[list[tuple[str, str, int, int]], str | None]:
    """Write one source's augmented copies; ([(path, sha256, width, height)], error)."""
    try:
        image = read_image(Path(job.source))
    except ValueError as e:
        return [], str(e).removeprefix(f"{job.source}: ")
    made = []
    for copy, out_path in job.copies:
        # Each copy's randomness depends only on (seed, source bytes, copy number):
        # the same seed gives the same files whatever the number of workers.
        rng = np.random.default_rng([job.seed, int(job.sha256[:16], 16), copy])
        ok, buf = cv2.imencode(".jpg", augment_image(image, rng), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            return made, f"could not encode augmented copy {copy}"
        data = buf.tobytes()
        Path(out_path).write_bytes(data)
        made.append((out_path, hashlib.sha256(data).hexdigest(), image.shape[1], image.shape[0]))
    return made, None


@dataclass
class AugmentResult:
    records: list[Record]                   # the new manifest: val/test as they were, train = originals + augmented
    per_class: dict[str, dict[str, int]]    # class -> originals, sources, augmented, train
    problems: list[Problem] = field(default_factory=list)


def plan_copies(n_sources: int, n_needed: int, rng: random.Random) -> list[int]:
    """How many augmented copies each source makes so that all are used about equally
    (counts differ by at most one; which sources make one more is drawn by `rng`)."""
    if n_sources == 0:
        return []
    base, extra = divmod(max(n_needed, 0), n_sources)
    lucky = set(rng.sample(range(n_sources), extra))
    return [base + (i in lucky) for i in range(n_sources)]


def augment_records(records: list[Record], out_dir: Path, per_class: int = 4000, seed: int = 0,
                    workers: int | None = None, progress=None) -> AugmentResult:
    """Balance every class of the train split to `per_class` images (originals included)
    with augmented copies written under `out_dir/<class>/`; val and test rows are
    returned unchanged and their files are never read.

    Copies of identical bytes count once as a source. A class that already has
    `per_class` train images or more keeps them all and gets no copies. `progress`
    is called with the number of files written for each source.
    """
    out_dir = Path(out_dir)
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    if seed < 0:
        raise ValueError(f"seed must be 0 or more, got {seed}")
    if any(r.source for r in records):
        raise ValueError("this manifest already holds augmented rows: augment the manifest written by "
                         "`wbcedge data split`, not an augmented one")
    train = [r for r in records if r.split == "train"]
    if not train:
        raise ValueError("the manifest has no train rows: run `wbcedge data split MANIFEST` first")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty: choose a new --out folder, or delete it")
    jobs: list[_AugmentJob] = []
    summary: dict[str, dict[str, int]] = {}
    for label in CLASSES:
        originals = [r for r in train if r.label == label]
        if not originals:
            continue
        first_copy = {}
        for r in sorted(originals, key=lambda r: r.path):
            first_copy.setdefault(r.sha256, r)
        sources = sorted(first_copy.values(), key=lambda r: r.path)
        copies = plan_copies(len(sources), per_class - len(originals), random.Random(f"{seed}:{label}:augment"))
        summary[label] = {"originals": len(originals), "sources": len(sources), "augmented": 0}
        class_dir = out_dir / label
        class_dir.mkdir(parents=True, exist_ok=True)
        stems: set[str] = set()
        for src, n in zip(sources, copies):
            if not n:
                continue
            stem = Path(src.path).stem
            if stem in stems:  # same name in two sub-folders of one class
                stem = f"{stem}_{src.sha256[:8]}"
            stems.add(stem)
            jobs.append(_AugmentJob(src.path, src.sha256, seed, [
                (k, str(class_dir / f"{stem}{AUGMENTED_TAG}{k:03d}.jpg")) for k in range(n)]))
    label_of = {r.path: r.label for r in train}
    augmented: list[Record] = []
    problems: list[Problem] = []
    for job, (made, error) in zip(jobs, _parallel_map(_augment_source, jobs, workers, chunksize=4)):
        if progress:
            progress(len(job.copies))
        label = label_of[job.source]
        if error:
            problems.append(Problem(job.source, error, f"{len(job.copies) - len(made)} augmented copies "
                                                       f"of it not made; {label} falls short of {per_class}"))
        for path, digest, w, h in made:
            augmented.append(Record(path, label, digest, w, h, split="train", source=job.source))
        summary[label]["augmented"] += len(made)
    for s in summary.values():
        s["train"] = s["originals"] + s["augmented"]
    return AugmentResult([*records, *augmented], summary, problems)

