"""The paper's OpenCV augmentation of a train split: seeded, balanced per class, each copy
naming its source.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from wbcedge.data.manifest import Problem, Record
from wbcedge.errors import InputDataError, OutputFolderError
from wbcedge.labels import CLASSES
from wbcedge.parallel import parallel_map as _parallel_map
from wbcedge.preprocess import read_image

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
        raise InputDataError(f"per_class must be at least 1, got {per_class}")
    if seed < 0:
        raise InputDataError(f"seed must be 0 or more, got {seed}")
    if any(r.source for r in records):
        raise InputDataError("this manifest already holds augmented rows: augment the manifest written by "
                         "`wbcedge data split`, not an augmented one")
    train = [r for r in records if r.split == "train"]
    if not train:
        raise InputDataError("the manifest has no train rows: run `wbcedge data split MANIFEST` first")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise OutputFolderError(f"{out_dir} exists and is not empty: choose a new --out folder, or delete it")
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
