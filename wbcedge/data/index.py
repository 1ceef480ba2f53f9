"""Index a class-folder tree into data-manifest records, one `Problem` line per file that
cannot be used as it is: nothing is dropped silently.
"""

from __future__ import annotations

import errno
import hashlib
from pathlib import Path

import cv2
import numpy as np

from wbcedge.data.manifest import HUGE_SIDE, IMAGE_SUFFIXES, TINY_SIDE, IndexResult, Problem, Record
from wbcedge.errors import InputDataError, InputFileMissingError
from wbcedge.imagefile import ImageRejected, check_image_bytes, display_name, error_line, is_utf8_name
from wbcedge.labels import CLASSES, SKIP, UnknownClassError, normalize_class
from wbcedge.parallel import parallel_map as _parallel_map

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
    try:
        check_image_bytes(data, min_side=1)  # the header's size against the pixel budget, before decoding
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except ImageRejected as e:
        return 0, 0, str(e), None
    except cv2.error as e:
        return 0, 0, f"the decoder failed ({error_line(e)})", None
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


def _link_problem(path: Path) -> str | None:
    """Why a symbolic link is not followed (dangling, a loop, a folder), or None for anything else."""
    if not path.is_symlink():
        return None
    try:
        path.resolve(strict=True)
    except RuntimeError:  # Python < 3.13 reports a loop this way
        return "symbolic link loop"
    except OSError as e:
        return "symbolic link loop" if e.errno == errno.ELOOP else "dangling symbolic link (its target is missing)"
    if path.is_dir():
        return "symbolic link to a folder (not followed)"
    return None


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
        raise InputFileMissingError(f"{root} is not a folder: give a folder with one sub-folder per class")
    entries = sorted(root.iterdir())
    problems = [Problem(display_name(p), "name is not valid UTF-8", "skipped; rename it")
                for p in entries if not is_utf8_name(p.name)]
    entries = [p for p in entries if is_utf8_name(p.name)]
    class_dirs = [d for d in entries if d.is_dir() and not d.name.startswith(".")]
    if not class_dirs:
        raise InputDataError(f"{root} has no class sub-folders: expected e.g. {root}/neutrophil/*.jpg")
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
            f"{', '.join(CLASSES)}. Rename each to one of them, or index the folder with its own names mapped "
            f"(`wbcedge data index {root} --map '{unknown[0]}=<class>' --out cells.csv`; '=skip' leaves a folder "
            f"out) and give that manifest instead.")
    problems += [Problem(str(p), _link_problem(p) or "file outside the class folders", "skipped")
                 for p in entries if not p.is_dir()]
    problems += [Problem(str(p), "hidden folder", "skipped")
                 for p in entries if p.is_dir() and p.name.startswith(".")]
    jobs: list[tuple[Path, str]] = []
    for d in class_dirs:
        label = labels[d]
        if label == SKIP:
            problems.append(Problem(str(d), "folder mapped to skip", "left out"))
            continue
        files = []
        for p in sorted(d.rglob("*")):
            if not is_utf8_name(p.relative_to(d)):
                problems.append(Problem(display_name(p), "name is not valid UTF-8", "skipped; rename it"))
            elif _link_problem(p):
                problems.append(Problem(str(p), _link_problem(p), "skipped"))
            elif p.is_file():
                files.append(p)
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
