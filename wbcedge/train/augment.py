"""Online training augmentation that imitates other microscopes, as TensorFlow ops on batches.

Every option is a field of `AugmentConfig` with a default (the robust recipe); a
training config's `[augment]` table overrides some of them. One call takes a float
batch in 0-255 RGB and a stateless seed `[2]`, so the same seed gives the same
pictures (tests, the picture grid) while training draws a new seed every step.

What each option imitates:
    flips, rot90        a cell has no orientation
    scale               another magnification or camera: the crop is zoomed by a factor
                        drawn so that the cell fills `cell_range` of the crop side
                        (the training crops show it at `PreprocessSpec.cell_fraction`),
                        and at most `size_jitter` of physical size either way
    hed, hed_bias       another stain batch or protocol: haematoxylin, eosin and DAB
                        amounts scaled and shifted in optical-density space, with
                        scikit-image's HED matrices (`rgb2hed` / `hed2rgb` maths)
    white_balance       another camera's white balance: a gain per RGB channel
    tint                another illumination or slide background: a colour added in
                        proportion to brightness, so the bright background tints most
    hue, saturation     residual colour drift
    brightness, contrast, gamma   another lamp, exposure or camera curve
    defocus, motion     a share of images blurred by a Gaussian of random sigma (up to
                        `defocus_sigma` px) or a line kernel (up to `motion_px` long)
    noise               sensor noise: shot noise growing with brightness plus read noise,
                        standard deviation up to this many grey levels
    jpeg                a share of images re-encoded at quality `jpeg_quality` (low-high)
    clean               a share of images left as the microscope gave them (flips and
                        rotations only), so the source microscope's own look stays
                        in every batch (a second, recovering stage uses it)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

from wbcedge.errors import InputDataError

# Old configs wrote `blur` (probability of a 3x3 box blur) and `channel_gain`; they map onto
# the new names so every run folder's config.json still loads.
_RENAMED = {"blur": "defocus", "channel_gain": "white_balance"}


@dataclass(frozen=True)
class AugmentConfig:
    flips: bool = True
    rot90: bool = True
    scale: bool = True
    cell_range: tuple[float, float] = (0.3, 0.6)
    size_jitter: float = 0.25
    hed: float = 0.05
    hed_bias: float = 0.015
    white_balance: float = 0.12
    tint: float = 0.08
    hue: float = 0.03
    saturation: float = 0.3
    brightness: float = 0.12
    contrast: float = 0.25
    gamma: float = 0.25
    defocus: float = 0.35
    defocus_sigma: float = 2.0
    motion: float = 0.1
    motion_px: int = 7
    noise: float = 6.0
    jpeg: float = 0.3
    jpeg_quality: tuple[int, int] = (40, 95)
    gray: float = 0.0
    clean: float = 0.0

    @classmethod
    def from_dict(cls, data: dict | None, preset: str = "robust") -> "AugmentConfig":
        """`preset` ("robust": the defaults here, or "none": all off) with `data`'s options changed."""
        if preset not in PRESETS:
            raise InputDataError(f"unknown augmentation preset '{preset}'; choose one of {', '.join(PRESETS)}")
        base = cls() if preset == "robust" else cls.none()
        data = {**{k: v for k, v in base.to_dict().items()},
                **{_RENAMED.get(k, k): v for k, v in (data or {}).items()}}
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InputDataError(f"unknown augmentation options {sorted(unknown)}; known: {sorted(known)}")
        for key in ("cell_range", "jpeg_quality"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def none(cls) -> "AugmentConfig":
        """Every augmentation off; the parameters (ranges, sigmas) keep their defaults."""
        return cls(**{f.name: (False if f.type == "bool" else 0.0) for f in fields(cls) if f.name not in _PARAMETERS})


# Fields that shape an augmentation rather than switch it on (a strength or a probability).
_PARAMETERS = ("cell_range", "size_jitter", "defocus_sigma", "motion_px", "jpeg_quality")
PRESETS = ("robust", "none")


def zoom_range(cfg: AugmentConfig, cell_fraction: float) -> tuple[float, float]:
    """The zoom factors allowed: the cell stays within `cell_range` of the crop and within
    `size_jitter` of its physical size (zoom > 1 enlarges the cell)."""
    lo = max(cfg.cell_range[0] / cell_fraction, 1.0 - cfg.size_jitter)
    hi = min(cfg.cell_range[1] / cell_fraction, 1.0 + cfg.size_jitter)
    return (min(lo, 1.0), max(hi, 1.0))


def hed_matrices() -> tuple[np.ndarray, np.ndarray]:
    """scikit-image's stain matrices: optical density (RGB) -> HED and back."""
    from skimage.color import colorconv  # scikit-image: the train extra (imported here, after TensorFlow)

    return colorconv.hed_from_rgb.astype(np.float32), colorconv.rgb_from_hed.astype(np.float32)


def make_augment(cfg: AugmentConfig, cell_fraction: float | None = None):
    """`augment(images, seed) -> images`: float 0-255 RGB batches (N, S, S, 3) in and out.
    `cell_fraction` (the spec's) is needed for `scale` only."""
    import tensorflow as tf

    if cfg.scale and cell_fraction is None:
        raise InputDataError("scale augmentation needs the preprocessing spec's cell_fraction")
    hed_from_rgb, rgb_from_hed = (tf.constant(m) for m in hed_matrices())
    log_adjust = float(np.log(1e-6))  # scikit-image's floor for optical density
    zlo, zhi = zoom_range(cfg, cell_fraction) if cfg.scale else (1.0, 1.0)

    def uniform(seed, shape, lo, hi):
        return tf.random.stateless_uniform(shape, seed, lo, hi)

    def per_image(seed, n, p):
        return tf.reshape(tf.cast(uniform(seed, [n], 0.0, 1.0) < p, tf.float32), [n, 1, 1, 1])

    def augment(images, seed):
        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 24)
        x = tf.cast(images, tf.float32)
        n = tf.shape(x)[0]
        size = tf.shape(x)[1]
        if cfg.flips:
            x = tf.where(per_image(seeds[0], n, 0.5) > 0, tf.reverse(x, [2]), x)
            x = tf.where(per_image(seeds[1], n, 0.5) > 0, tf.reverse(x, [1]), x)
        if cfg.rot90:
            x = tf.where(per_image(seeds[2], n, 0.5) > 0, tf.transpose(x, [0, 2, 1, 3]), x)
        as_given = x
        if cfg.scale and (zlo < 1.0 or zhi > 1.0):
            x = _zoom(tf, x, uniform(seeds[3], [n], zlo, zhi), uniform(seeds[4], [n, 2], -0.04, 0.04))
        x = x / 255.0
        if cfg.hed or cfg.hed_bias:
            od = tf.math.log(tf.maximum(x, 1e-6)) / log_adjust
            # scikit-image clips negative stain amounts in rgb2hed; here they are kept, so no
            # jitter is exactly no change
            stains = tf.einsum("nhwc,cd->nhwd", od, hed_from_rgb)
            scale = uniform(seeds[5], [n, 1, 1, 3], 1.0 - cfg.hed, 1.0 + cfg.hed)
            bias = uniform(seeds[6], [n, 1, 1, 3], -cfg.hed_bias, cfg.hed_bias)
            stains = stains * scale + bias
            x = tf.exp(tf.einsum("nhwd,dc->nhwc", stains, rgb_from_hed) * log_adjust)
        if cfg.white_balance:
            x = x * uniform(seeds[7], [n, 1, 1, 3], 1.0 - cfg.white_balance, 1.0 + cfg.white_balance)
        if cfg.tint:
            luminance = tf.reduce_mean(x, axis=-1, keepdims=True)
            x = x + luminance * uniform(seeds[8], [n, 1, 1, 3], -cfg.tint, cfg.tint)
        x = tf.clip_by_value(x, 0.0, 1.0)
        if cfg.hue:
            x = tf.map_fn(lambda a: tf.image.stateless_random_hue(a[0], cfg.hue, a[1]),
                          (x, tf.random.experimental.stateless_split(seeds[9], n)), fn_output_signature=tf.float32)
        if cfg.saturation:
            s = tf.reshape(uniform(seeds[10], [n], 1.0 - cfg.saturation, 1.0 + cfg.saturation), [n, 1, 1, 1])
            gray = tf.reduce_mean(x, axis=-1, keepdims=True)
            x = gray + (x - gray) * s
        if cfg.brightness:
            x = x + uniform(seeds[11], [n, 1, 1, 1], -cfg.brightness, cfg.brightness)
        if cfg.contrast:
            mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
            x = mean + (x - mean) * uniform(seeds[12], [n, 1, 1, 1], 1.0 - cfg.contrast, 1.0 + cfg.contrast)
        x = tf.clip_by_value(x, 0.0, 1.0)
        if cfg.gamma:
            x = tf.pow(x + 1e-6, tf.exp(uniform(seeds[13], [n, 1, 1, 1], -cfg.gamma, cfg.gamma)))
        if cfg.gray:
            x = tf.where(per_image(seeds[14], n, cfg.gray) > 0,
                         tf.repeat(tf.reduce_mean(x, axis=-1, keepdims=True), 3, axis=-1), x)
        if cfg.defocus:
            sigma = uniform(seeds[15], [], 0.5, max(cfg.defocus_sigma, 0.5))
            x = tf.where(per_image(seeds[16], n, cfg.defocus) > 0, _blur(tf, x, _gaussian_kernel(tf, sigma)), x)
        if cfg.motion:
            kernel = _line_kernel(tf, uniform(seeds[17], [], 2.0, float(max(cfg.motion_px, 2))),
                                  uniform(seeds[18], [], 0.0, np.pi), cfg.motion_px)
            x = tf.where(per_image(seeds[19], n, cfg.motion) > 0, _blur(tf, x, kernel), x)
        if cfg.noise:
            level = uniform(seeds[20], [n, 1, 1, 1], 0.0, cfg.noise / 255.0)
            shot = tf.sqrt(tf.maximum(x, 0.0))
            x = x + level * (0.5 + shot) * tf.random.stateless_normal(tf.shape(x), seeds[21])
        x = tf.clip_by_value(x, 0.0, 1.0)
        if cfg.jpeg:
            lo, hi = cfg.jpeg_quality
            quality = tf.random.stateless_uniform([n], seeds[22], lo, hi + 1, dtype=tf.int32)
            coded = tf.map_fn(lambda a: tf.image.adjust_jpeg_quality(a[0], a[1]), (x, quality),
                              fn_output_signature=tf.float32)
            x = tf.where(per_image(seeds[23], n, cfg.jpeg) > 0, tf.reshape(coded, tf.shape(x)), x)
        del size
        x = tf.clip_by_value(x, 0.0, 1.0) * 255.0
        if cfg.clean:
            clean_seed = tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), 24)
            x = tf.where(per_image(clean_seed, n, cfg.clean) > 0, as_given, x)
        return x

    return augment


def _zoom(tf, x, zoom, shift):
    """Zoom each image about its centre (zoom > 1 enlarges); zooming out reflects the border."""
    size = tf.shape(x)[1]
    pad = size // 2
    padded = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
    total = tf.cast(size + 2 * pad, tf.float32)
    half = tf.cast(size, tf.float32) / (2.0 * zoom) / total    # half-side of the box, normalised
    centre = 0.5 + shift
    boxes = tf.stack([centre[:, 0] - half, centre[:, 1] - half, centre[:, 0] + half, centre[:, 1] + half], axis=1)
    n = tf.shape(x)[0]
    return tf.image.crop_and_resize(padded, boxes, tf.range(n), tf.stack([size, size]), method="bilinear")


def _gaussian_kernel(tf, sigma, radius: int = 4):
    t = tf.range(-radius, radius + 1, dtype=tf.float32)
    g = tf.exp(-0.5 * (t / sigma) ** 2)
    g = g / tf.reduce_sum(g)
    return g[:, None] * g[None, :]


def _line_kernel(tf, length, angle, size: int):
    radius = max(size, 3) // 2
    t = tf.range(-radius, radius + 1, dtype=tf.float32)
    yy, xx = tf.meshgrid(t, t, indexing="ij")
    # distance of each tap from the line through the centre, and position along it
    across = tf.abs(-tf.sin(angle) * xx + tf.cos(angle) * yy)
    along = tf.abs(tf.cos(angle) * xx + tf.sin(angle) * yy)
    k = tf.maximum(0.0, 1.0 - across) * tf.cast(along <= length / 2.0, tf.float32)
    return k / tf.reduce_sum(k)


def _blur(tf, x, kernel):
    k = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    r = (kernel.shape[0] or 9) // 2
    padded = tf.pad(x, [[0, 0], [r, r], [r, r], [0, 0]], mode="REFLECT")
    return tf.nn.depthwise_conv2d(padded, k, [1, 1, 1, 1], "VALID")
