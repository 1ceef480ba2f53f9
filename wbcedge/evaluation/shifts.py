"""Controlled image shifts that mimic another microscope: stain, illumination, optics, codec, scale.

Used by `benchmarks/locate_shift.py` to measure how the white-cell locator holds up on
microscopes the project has never seen. Every shift takes a BGR uint8 image and returns
one of the same kind; photometric shifts keep geometry, so annotated boxes stay valid.
Scale shifts move boxes too (`zoom_out_mosaic`, `zoom_in_window`). Strengths are
numbers whose meaning each function documents; `SHIFTS` lists three levels (mild,
middle, strong) per shift. OpenCV, NumPy and scikit-image; nothing here runs on the
device, but training augmentation may reuse these functions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from wbcedge.preprocess import background_colour

Box = tuple[int, int, int, int]

# Background colours of other microscopes' fields (BGR): white balance, filters, lamp.
TINTS_BGR = {"white": (250, 250, 250), "cyan": (240, 230, 165), "yellow": (165, 235, 245), "pink": (225, 200, 250)}


def hed_jitter(image_bgr: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Stain change in haematoxylin-eosin-DAB space: each stain scaled by 1 + U(-s, s) and shifted
    by U(-s, s) x 0.05 (Tellez et al. 2018); s = `strength`."""
    from skimage.color import hed2rgb, rgb2hed

    hed = rgb2hed(image_bgr[..., ::-1])
    alpha = 1.0 + rng.uniform(-strength, strength, 3)
    beta = rng.uniform(-strength, strength, 3) * 0.05
    rgb = hed2rgb(hed * alpha + beta)
    return _to_uint8(rgb[..., ::-1] * 255.0)


def pale_stain(image_bgr: np.ndarray, strength: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """A weaker stain: haematoxylin and eosin densities multiplied by 1 - `strength`."""
    from skimage.color import hed2rgb, rgb2hed

    hed = rgb2hed(image_bgr[..., ::-1])
    hed[..., :2] *= 1.0 - strength
    return _to_uint8(hed2rgb(hed)[..., ::-1] * 255.0)


def tint(image_bgr: np.ndarray, strength: float, target_bgr: tuple[int, int, int]) -> np.ndarray:
    """Another white balance: per-channel gains that move the background toward `target_bgr`
    (`strength` 1 = all the way; transmitted light scales every pixel by the same gain)."""
    gain = 1.0 + strength * (np.asarray(target_bgr, np.float32) / np.maximum(np.asarray(background_colour(image_bgr), np.float32), 1.0) - 1.0)
    return _to_uint8(image_bgr.astype(np.float32) * gain)


def exposure(image_bgr: np.ndarray, gain: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """Darker (< 1) or brighter (> 1, clipped) exposure."""
    return _to_uint8(image_bgr.astype(np.float32) * gain)


def contrast(image_bgr: np.ndarray, factor: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """Contrast around the image mean: < 1 washed out, > 1 harsher (clipped)."""
    img = image_bgr.astype(np.float32)
    return _to_uint8((img - img.mean()) * factor + img.mean())


def defocus(image_bgr: np.ndarray, sigma_px: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """Out of focus: a Gaussian blur of `sigma_px` pixels."""
    return cv2.GaussianBlur(image_bgr, (0, 0), sigma_px)


def jpeg(image_bgr: np.ndarray, quality: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """Re-encoded as JPEG at `quality` (0-100)."""
    _, data = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    return cv2.imdecode(data, cv2.IMREAD_COLOR)


def sensor_noise(image_bgr: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian sensor noise of `sigma` grey levels."""
    return _to_uint8(image_bgr.astype(np.float32) + rng.normal(0, sigma, image_bgr.shape))


def zoom_out_mosaic(frames: list[np.ndarray], boxes: list[list[Box]], factor: float, size: tuple[int, int]
                    ) -> tuple[np.ndarray, list[Box]]:
    """A lower magnification: frames shrunk by `factor` (< 1) and tiled into one field of `size` (w, h).

    Returns the field and every box moved into it (clipped; callers decide what a box cut by
    the field's edge counts as). Needs ceil(1/factor)^2 frames (recycled when fewer).
    """
    w, h = size
    k = int(np.ceil(1.0 / factor - 1e-9))
    tiles_w, tiles_h = int(round(w * factor)), int(round(h * factor))
    canvas = np.zeros((tiles_h * k, tiles_w * k, 3), np.uint8)
    out: list[Box] = []
    for t in range(k * k):
        frame = frames[t % len(frames)]
        fh, fw = frame.shape[:2]
        sx, sy = tiles_w / fw, tiles_h / fh
        ox, oy = (t % k) * tiles_w, (t // k) * tiles_h
        canvas[oy:oy + tiles_h, ox:ox + tiles_w] = cv2.resize(frame, (tiles_w, tiles_h), interpolation=cv2.INTER_AREA)
        for x0, y0, x1, y1 in boxes[t % len(boxes)]:
            out.append((int(round(x0 * sx)) + ox, int(round(y0 * sy)) + oy, int(round(x1 * sx)) + ox,
                        int(round(y1 * sy)) + oy))
    return canvas[:h, :w].copy(), out


def zoom_in_window(frame: np.ndarray, boxes: list[Box], factor: float, center: tuple[float, float]
                   ) -> tuple[np.ndarray, list[Box]]:
    """A higher magnification: a window of 1/`factor` of the frame around `center`, enlarged back
    to the frame's size. Returns the new frame and the boxes moved into it (not clipped)."""
    fh, fw = frame.shape[:2]
    ww, wh = fw / factor, fh / factor
    x0 = float(np.clip(center[0] - ww / 2, 0, fw - ww))
    y0 = float(np.clip(center[1] - wh / 2, 0, fh - wh))
    m = np.float32([[factor, 0, -x0 * factor], [0, factor, -y0 * factor]])
    out = cv2.warpAffine(frame, m, (fw, fh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    moved = [(int(round((a - x0) * factor)), int(round((b - y0) * factor)), int(round((c - x0) * factor)),
              int(round((d - y0) * factor))) for a, b, c, d in boxes]
    return out, moved


def tighter_crop(crop_bgr: np.ndarray, factor: float) -> np.ndarray:
    """A single-cell crop cut `factor` (> 1) times tighter around its centre: the cell fills more of it."""
    h, w = crop_bgr.shape[:2]
    nh, nw = max(8, int(round(h / factor))), max(8, int(round(w / factor)))
    y0, x0 = (h - nh) // 2, (w - nw) // 2
    return crop_bgr[y0:y0 + nh, x0:x0 + nw].copy()


def looser_crop(crop_bgr: np.ndarray, factor: float) -> np.ndarray:
    """A single-cell crop `factor` (> 1) times wider: the surroundings mirrored outward (the
    cell itself is not repeated while factor < 3, since it sits in the middle third)."""
    h, w = crop_bgr.shape[:2]
    py, px = int(round(h * (factor - 1) / 2)), int(round(w * (factor - 1) / 2))
    return cv2.copyMakeBorder(crop_bgr, py, py, px, px, cv2.BORDER_REFLECT_101)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Shift:
    """One photometric shift at three strengths (mild, middle, strong)."""
    name: str
    levels: tuple[float, float, float]
    apply: Callable[[np.ndarray, float, np.random.Generator], np.ndarray]


def _tint_shift(name: str) -> Shift:
    target = TINTS_BGR[name]
    return Shift(f"{name} background", (0.33, 0.66, 1.0), lambda img, s, rng: tint(img, s, target))


SHIFTS: tuple[Shift, ...] = (
    Shift("stain (HED jitter)", (0.2, 0.4, 0.7), hed_jitter),
    Shift("pale stain", (0.3, 0.5, 0.7), pale_stain),
    *(_tint_shift(n) for n in TINTS_BGR),
    Shift("darker", (0.75, 0.55, 0.4), exposure),
    Shift("brighter", (1.1, 1.25, 1.4), exposure),
    Shift("low contrast", (0.7, 0.5, 0.35), contrast),
    Shift("high contrast", (1.3, 1.6, 2.0), contrast),
    Shift("defocus (sigma px)", (2.0, 4.0, 7.0), defocus),
    Shift("JPEG quality", (40, 20, 8), jpeg),
    Shift("sensor noise (sigma)", (5.0, 10.0, 20.0), sensor_noise),
)
ZOOM_OUT = (0.8, 0.6, 0.4)      # magnification factors: more, smaller cells per field
ZOOM_IN = (1.4, 1.9, 2.5)       # fewer, larger cells; at 2.5 a BCCD white cell spans about half the frame
CROP_TIGHTER = (1.25, 1.5, 2.0)
CROP_LOOSER = (1.25, 1.5, 2.0)
