"""The preprocessing spec: how a picture of a cell becomes a model input.

It is defined once here, saved in every run folder and bundle (`preprocess.json`),
and read back by training, export calibration, evaluation and the device runner,
so nothing is ever copied between them by hand. OpenCV and NumPy only: the
device imports this module.

Model inputs are uint8 RGB squares of `input_size` pixels; the scaling to floats
happens inside the model (a Rescaling layer), so a full-integer int8 model takes
camera pixels as they are.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import cv2
import numpy as np

from wbcedge.errors import InputDataError, InputFileMissingError
from wbcedge.imagefile import ImageRejected, display_name, error_line, read_checked
from wbcedge.parallel import parallel_map

SPEC_FILE = "preprocess.json"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
"""Image files everything in wbcedge reads: data folders, frame folders, crops (all decoded by OpenCV)."""
INPUT_SIZE_RANGE = (16, 1024)
COLOR_ORDERS = ("RGB", "BGR")
INPUT_DTYPES = ("uint8", "float32")


class PreprocessSpecError(InputDataError):
    """A preprocessing spec with a missing, unknown or out-of-range value."""


@dataclass(frozen=True)
class PreprocessSpec:
    input_size: int = 128
    color_order: str = "RGB"          # channel order of the model input
    input_dtype: str = "uint8"        # pixels as they are; the model rescales
    interpolation: str = "area"       # cv2 interpolation used to shrink crops
    # Apparent cell size matters more than colour across microscopes (docs/known-traps.md):
    # the training crops show the white cell at this fraction of the crop side, and
    # the runner crops full frames around each located cell to match it.
    cell_fraction: float = 0.44
    # Side of the training crops in micrometres (PBC: 360 px at 0.0934 um/px = 33.6 um).
    # When the frame's scale is known, the runner crops this physical size, so a cell's
    # size, itself a clue to its type, looks as it did in training; else it falls back
    # to `cell_fraction`, which makes every cell look the same size.
    crop_um: float | None = None
    # Optional Reinhard stain normalisation: each crop's CIELAB mean and standard deviation
    # are moved to these (L, a, b means then L, a, b deviations of the training crops, from
    # `stain_reference_of`), so another lab's stain looks like the training lab's.
    # None (the default): crops go to the model as they are.
    stain_reference: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        lo, hi = INPUT_SIZE_RANGE
        problems = []
        if not (_is_int(self.input_size) and lo <= self.input_size <= hi):
            problems.append(f"input_size must be a whole number of pixels in [{lo}, {hi}], got {self.input_size!r}")
        if self.color_order not in COLOR_ORDERS:
            problems.append(f"color_order must be one of {list(COLOR_ORDERS)}, got {self.color_order!r}")
        if self.input_dtype not in INPUT_DTYPES:
            problems.append(f"input_dtype must be one of {list(INPUT_DTYPES)}, got {self.input_dtype!r}")
        if not (isinstance(self.interpolation, str) and self.interpolation in _INTERPOLATION):
            problems.append(f"interpolation must be one of {sorted(_INTERPOLATION)}, got {self.interpolation!r}")
        if not (_is_real(self.cell_fraction) and 0.0 < self.cell_fraction < 1.0):
            problems.append(f"cell_fraction must be a number in (0, 1), got {self.cell_fraction!r}")
        if self.crop_um is not None and not (_is_real(self.crop_um) and 0.0 < self.crop_um < 1e4):
            problems.append(f"crop_um must be a number of micrometres > 0 (or null), got {self.crop_um!r}")
        if self.stain_reference is not None:
            try:
                ref = tuple(float(v) for v in self.stain_reference)
            except (TypeError, ValueError):
                ref = ()
            if len(ref) != 6 or min(ref[3:]) <= 0:
                problems.append(f"stain_reference needs 6 numbers (L, a, b means; L, a, b deviations > 0), "
                                f"got {self.stain_reference!r}: recompute it with stain_reference_of")
            else:
                object.__setattr__(self, "stain_reference", ref)
        if problems:
            raise PreprocessSpecError("preprocessing spec: " + "; ".join(problems)
                                      + ". Re-export the bundle, or fix preprocess.json")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PreprocessSpec":
        if not isinstance(data, dict):
            raise PreprocessSpecError(f"preprocessing spec must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise PreprocessSpecError(f"preprocessing spec has unknown keys {sorted(unknown)}; "
                             f"this wbcedge understands {sorted(known)}: upgrade wbcedge or re-export the bundle")
        return cls(**data)

    def save(self, folder: Path) -> Path:
        path = Path(folder) / SPEC_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, folder: Path) -> "PreprocessSpec":
        path = Path(folder) / SPEC_FILE
        if not path.is_file():
            raise InputFileMissingError(f"{path} is missing: a run folder or bundle must carry its preprocessing spec")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PreprocessSpecError(f"{path} is not valid JSON ({exc}); re-export the bundle") from None
        return cls.from_dict(data)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


_INTERPOLATION = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}


def center_square(image: np.ndarray) -> np.ndarray:
    """The largest centred square of an image (single-cell crops are nearly square)."""
    h, w = image.shape[:2]
    side = min(h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2
    return image[y0:y0 + side, x0:x0 + side]


def to_model_input(crop_bgr: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """A BGR uint8 crop (OpenCV's order) -> the model's uint8 input, HxWx3 in `spec.color_order`."""
    if crop_bgr.ndim != 3 or crop_bgr.shape[2] != 3 or crop_bgr.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 BGR image, got shape {crop_bgr.shape} dtype {crop_bgr.dtype}")
    square = center_square(crop_bgr)
    size = spec.input_size
    interp = _INTERPOLATION[spec.interpolation] if square.shape[0] > size else cv2.INTER_LINEAR
    resized = cv2.resize(square, (size, size), interpolation=interp)
    if spec.stain_reference is not None:
        resized = reinhard(resized, spec.stain_reference)
    if spec.color_order == "RGB":
        resized = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(resized)


def crop_policy(spec: PreprocessSpec) -> str:
    """In one sentence, how the device will crop cells for a model with this spec."""
    relative = f"the located cell filling {100 * spec.cell_fraction:.0f}% of the crop side"
    if spec.crop_um:
        return (f"physical crops {spec.crop_um:g} um wide around each cell when the camera profile gives um_per_px; "
                f"without it, {relative}")
    return (f"crops sized relative to each cell ({relative}): the spec has no physical crop size (training data "
            "of unknown scale, or a bundle adapted with crop = \"cell\")")


def background_colour(image_bgr: np.ndarray) -> tuple[int, int, int]:
    """The field's background colour (BGR): per channel, the median of the brightest quarter of pixels.

    In a smear or a single-cell crop the brightest quarter is the empty glass between
    cells, whatever the lamp's colour or the camera's white balance.
    """
    sample = image_bgr[::4, ::4].reshape(-1, 3) if min(image_bgr.shape[:2]) >= 64 else image_bgr.reshape(-1, 3)
    grey = sample.astype(np.int32).sum(axis=1)
    bright = sample[grey >= np.percentile(grey, 75)]
    return tuple(int(v) for v in np.median(bright, axis=0))


def square_window(image_bgr: np.ndarray, cx: float, cy: float, side: int,
                  fill: tuple[int, int, int] | None = None) -> np.ndarray:
    """The `side` x `side` square of an image centred on (cx, cy); where it reaches past the
    image, the border is the image's background colour (`background_colour`, or `fill`).

    A replicated border would smear the edge row into streaks that no training crop
    ever showed; an even background is what a wider field of view would mostly show.
    Training augmentation that pads or shifts crops should pad with this too.
    """
    side = max(1, int(side))
    left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
    h, w = image_bgr.shape[:2]
    x0, y0, x1, y1 = max(0, left), max(0, top), min(w, left + side), min(h, top + side)
    if x0 == left and y0 == top and x1 == left + side and y1 == top + side:
        return image_bgr[top:top + side, left:left + side]
    out = np.empty((side, side, 3), np.uint8)
    out[:] = background_colour(image_bgr) if fill is None else fill
    if x1 > x0 and y1 > y0:
        out[y0 - top:y1 - top, x0 - left:x1 - left] = image_bgr[y0:y1, x0:x1]
    return out


def _lab(bgr: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.multiply(bgr, np.float32(1.0 / 255.0), dtype=np.float32), cv2.COLOR_BGR2LAB)


def _lab_stats(bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lab = _lab(bgr).reshape(-1, 3)
    return lab.mean(0), lab.std(0)


def reinhard(crop_bgr: np.ndarray, reference: tuple[float, ...]) -> np.ndarray:
    """Reinhard colour transfer: the crop's CIELAB mean and deviation per channel set to `reference`.
    OpenCV for the statistics, the conversions and the per-channel affine step (`cv2.transform`:
    one pass, where NumPy's broadcasting made two temporaries and took half the time): about
    0.5 ms per 160 px crop on one core (benchmarks/cell_latency.py)."""
    lab = _lab(crop_bgr)
    mean, std = (v.ravel().astype(np.float32) for v in cv2.meanStdDev(lab))
    ref = np.asarray(reference, np.float32)
    gain = ref[3:] / np.maximum(std, 1e-3)
    affine = np.zeros((3, 4), np.float32)
    affine[[0, 1, 2], [0, 1, 2]] = gain
    affine[:, 3] = ref[:3] - mean * gain
    lab = cv2.transform(lab, affine)
    np.clip(lab[..., 0], 0.0, 100.0, out=lab[..., 0])
    bgr = cv2.cvtColor(lab, cv2.COLOR_LAB2BGR)
    np.clip(bgr, 0.0, 1.0, out=bgr)
    return cv2.convertScaleAbs(bgr, alpha=255.0)  # rounds to the nearest grey level; in [0, 1] abs changes nothing


def stain_normalise_inputs(images: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Model inputs (N, S, S, 3 uint8 in the spec's colour order) with the spec's stain
    normalisation applied to each, exactly as `to_model_input` applies it to a resized crop.

    Training calls it after augmenting, so the model learns from what the device makes of a
    crop from another microscope (shifted first, then normalised), not from normalised crops
    shifted afterwards, which the device never sees."""
    if spec.stain_reference is None:
        return images
    rgb = spec.color_order == "RGB"
    out = np.empty_like(images)
    for i, image in enumerate(images):
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if rgb else image
        normalised = reinhard(bgr, spec.stain_reference)
        out[i] = cv2.cvtColor(normalised, cv2.COLOR_BGR2RGB) if rgb else normalised
    return out


def stain_reference_of(crops_bgr) -> tuple[float, ...]:
    """The Reinhard reference of a set of crops (the training crops, as BGR uint8 images):
    the median over crops of each crop's CIELAB means and deviations."""
    stats = np.array([np.concatenate(_lab_stats(c)) for c in crops_bgr])
    if not len(stats):
        raise InputDataError("no crops to compute a stain reference from")
    return tuple(float(v) for v in np.median(stats, axis=0))


def crop_around_cell(frame_bgr: np.ndarray, box: tuple[int, int, int, int], spec: PreprocessSpec,
                     um_per_px: float | None = None) -> np.ndarray:
    """A square crop centred on a located cell, sized like the training crops.

    With the frame's scale (`um_per_px`) and `spec.crop_um`, the crop is that many
    micrometres wide; otherwise the cell fills `spec.cell_fraction` of its side.
    `box` is (x0, y0, x1, y1) in frame pixels. Parts outside the frame are filled with
    the frame's background colour (`square_window`), so a cell near the edge keeps its
    apparent size without replicated streaks.
    """
    x0, y0, x1, y1 = box
    if um_per_px and spec.crop_um:
        side = max(8, int(round(spec.crop_um / um_per_px)))
    else:
        side = max(8, int(round(max(x1 - x0, y1 - y0) / spec.cell_fraction)))
    return square_window(frame_bgr, (x0 + x1) / 2.0, (y0 + y1) / 2.0, side)


def read_image(path: Path, min_side: int = 1) -> np.ndarray:
    """Read an image file as 8-bit BGR, or raise ImageRejected (a ValueError) naming the file and the problem.

    The header is checked against the pixel budget before decoding (`wbcedge.imagefile`).
    """
    data = np.frombuffer(read_checked(Path(path), min_side=min_side), dtype=np.uint8)
    try:
        image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise ImageRejected(f"{display_name(path)}: the decoder failed ({error_line(exc)})") from None
    if image is None:
        raise ImageRejected(f"{display_name(path)}: not a readable image (corrupt, truncated or not an image format)")
    try:
        return as_bgr(image)
    except ValueError as exc:
        raise ImageRejected(f"{display_name(path)}: {exc}") from None


def as_bgr(image: np.ndarray, min_side: int = 0) -> np.ndarray:
    """Bring a decoded frame to HxWx3 uint8 BGR (gray and BGRA are converted, 16 bit scaled).

    A frame with a side under `min_side` pixels (capture passes `imagefile.MIN_SIDE`) is refused.
    """
    if image.dtype == np.uint16:
        image = (image // 257).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ValueError(f"unsupported pixel type {image.dtype}; expected 8- or 16-bit")
    if image.ndim < 2 or min(image.shape[:2]) < min_side:
        raise ValueError(f"{image.shape[1] if image.ndim > 1 else 0}x{image.shape[0]} pixels is smaller than a cell "
                         f"(under {min_side} px on a side)")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    raise ValueError(f"unsupported frame shape {image.shape}")


def load_inputs(paths: list, spec: PreprocessSpec, workers: int | None = None) -> np.ndarray:
    """Read and preprocess image files into one uint8 array (N, S, S, 3), on all cores.

    Training, calibration and evaluation all go through here, so they see exactly
    what the device's `to_model_input` makes of a crop.
    """
    if not paths:
        return np.zeros((0, spec.input_size, spec.input_size, 3), np.uint8)
    return np.stack(list(parallel_map(_load_one, [(str(p), spec) for p in paths], workers, chunksize=64)))


def _load_one(args) -> np.ndarray:
    path, spec = args
    return to_model_input(read_image(Path(path)), spec)
