"""Find the white cells in a full-field blood-smear frame, without a trained detector.

White-cell nuclei are the most strongly stained thing in a Romanowsky-stained smear
(Giemsa, May Grünwald-Giemsa, Wright): nuclear dyes absorb red light, red cells and
eosinophilic granules green and blue, the background little. The locator works on a
small copy of the frame (`LocatorConfig.work_size`; ~2 ms per 640x480 frame on one
core), in optical density relative to the frame's own background, in five steps:

1. Nuclear stain: pixels whose red-minus-blue density is well above the frame's median
   (`nucleus_contrast`, `nucleus_relative`) and that hold enough of the frame's own
   nuclear colour next to their region's peak (`nucleus_saturation`; this keeps a pale
   strongly-blue cytoplasm, as in PBC monocytes, out of the nucleus).
2. Scale: `um_per_px` when given, otherwise measured from the red cells in the
   frame (ridge of the distance transform of the red-cell mask, read as a 7.5 µm
   red cell; re-measured on a finer copy where they are small), or from the white
   cell when the red cells' scale makes the frame's largest nucleus too wide (high
   magnification). A runner can measure it once with `estimate_um_per_px`.
3. Lobes to nuclei: blobs within `lobe_gap_um` of each other are one nucleus; then
   nuclei whose modelled cells overlap heavily (centres closer than
   `same_cell_overlap` x their mean diameter) are one cell: the far-apart lobes of an
   eosinophil or a neutrophil. Two cells side by side stay apart because their centres
   are about a diameter apart. Blobs too small to be a lobe (platelets) never merge.
4. Size limits in micrometres: nuclei under `min_nucleus_area_um2`, cells under
   `min_cell_um` (platelets, debris) and nuclei wider than `max_cell_um` (clumps)
   are dropped.
5. Whole cell: cytoplasm is pale and its edge depends on the stain, so the cell is
   modelled from its nucleus: box side = `cell_to_nucleus` x nucleus side +
   2 x `cytoplasm_rim_um` (fitted on BCCD trainval boxes), centred on the nucleus.
   The same rule gives the cell diameter on single-cell training crops
   (`measure_cell_fraction`), so the apparent cell size that the runner reproduces
   is measured identically on both.

Boxes are in frame pixels, x1/y1 exclusive, clipped to the frame; a cell whose
modelled extent crosses the frame border, or whose nucleus reaches it, is flagged
`touches_edge`. OpenCV and NumPy only: this runs on the device.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import cv2
import numpy as np

__all__ = ["CellBox", "LocatorConfig", "Located", "locate_cells", "locate_frame", "measure_cell_fraction", "estimate_um_per_px"]


@dataclass(frozen=True)
class CellBox:
    """One located white cell: a box in frame pixels (x1/y1 exclusive)."""
    x0: int
    y0: int
    x1: int
    y1: int
    score: float          # 0..1 confidence that this is a white cell
    touches_edge: bool    # the cell is cut by the frame border

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.x0, self.y0, self.x1, self.y1)

    @property
    def center(self) -> tuple[float, float]:
        return ((self.x0 + self.x1) / 2.0, (self.y0 + self.y1) / 2.0)

    @property
    def diameter(self) -> float:
        """The box's longer side: what `preprocess.crop_around_cell` sizes its crop from."""
        return float(max(self.x1 - self.x0, self.y1 - self.y0))


@dataclass(frozen=True)
class LocatorConfig:
    """Knobs of `locate_cells`. The defaults were tuned on BCCD trainval and hold on PBC crops."""
    work_px_per_um: float = 3.6          # resolution the segmentation runs at (px per micrometre)...
    work_size: int = 160                 # ...first guessed as this longer side when um_per_px is not given
    min_work_px_per_um: float = 2.5      # ...lowered toward this where the copy would be over 2 x work_size
                                         # wide (a wide field at low magnification: the time budget)
    nucleus_contrast: float = 0.2        # nuclear stain (red minus blue optical density) above the frame's median
                                         # by this fraction of the red cells' optical density...
    nucleus_relative: float = 0.4        # ...and by this fraction of the frame's nuclear peak
    nucleus_saturation: float = 0.3      # ...and nuclear dye (density along the frame's nuclear colour) above
                                         # this fraction of its region's peak
    rbc_diameter_um: float = 7.5         # red-cell diameter, the ruler when um_per_px is not given
    fallback_rbc_fraction: float = 0.2   # red-cell diameter / shorter frame side when no red cells are seen
    min_cell_um: float = 6.5             # smaller cells (box side) are platelets or debris
    min_nucleus_area_um2: float = 10.0   # so are smaller nuclei
    min_lobe_area_um2: float = 5.0       # a cell's largest nuclear blob is at least this big
    speck_area_um2: float = 0.5          # blobs below this are ignored altogether
    max_cell_um: float = 30.0            # nuclei wider than this are clumps, not one cell
    wbc_nucleus_um: float = 11.0         # a white cell's nucleus (box side; BCCD median 10.6, PBC 11.3): the
                                         # ruler when the red cells give none or one that no cell fits
    lobe_gap_um: float = 0.75            # nuclear blobs this close (closest pixels) are one nucleus
    same_cell_overlap: float = 0.85      # nuclei whose cells' centres are closer than this x their mean
                                         # diameter are one cell (far-apart eosinophil lobes)
    cell_to_nucleus: float = 1.25        # cell box side / nucleus box side
    cytoplasm_rim_um: float = 0.35       # plus this rim on every side
    min_score: float = 0.0               # drop cells scored below this

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("min_score", "speck_area_um2", "cytoplasm_rim_um", "lobe_gap_um"):
                ok = value >= 0
            elif f.name in ("nucleus_saturation", "nucleus_relative"):
                ok = 0 <= value < 1
            else:
                ok = value > 0
            if not ok:
                raise ValueError(f"LocatorConfig.{f.name}={value!r} is out of range; see the field's comment "
                                 "for what it means (sizes in micrometres must be positive)")
        if self.work_size < 32:
            raise ValueError(f"LocatorConfig.work_size={self.work_size} is too small to see cells; use 96 or more")


_DEFAULT = LocatorConfig()
# The measured scale moves the working resolution only when it is this far (relative) from
# work_px_per_um: a 640x480 frame of BCCD stays at 160 px whatever the red cells' spread.
_RESCALE_TOLERANCE = 0.25
_PALLOR_FILL = 0.6       # a hole filling this share of its box is round: a red cell's pale centre
_MAX_PALLOR_FRACTION = 3.0   # ...and no wider than this fraction of the working copy's shorter side (1/3)
_MERGED_READING = 1.5   # red cells this much smaller at twice the resolution were merged at the first
_SCALE_PASSES = 3        # re-measure the red cells at the new resolution at most this often


def _check_frame(frame_bgr: np.ndarray) -> None:
    if not isinstance(frame_bgr, np.ndarray) or frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3 \
            or frame_bgr.dtype != np.uint8:
        desc = f"shape {frame_bgr.shape} dtype {frame_bgr.dtype}" if isinstance(frame_bgr, np.ndarray) \
            else type(frame_bgr).__name__
        raise ValueError(f"expected an HxWx3 uint8 BGR frame (OpenCV's order), got {desc}; "
                         "convert grey or RGBA frames with cv2.cvtColor first")
    if min(frame_bgr.shape[:2]) < 16:
        raise ValueError(f"frame {frame_bgr.shape[1]}x{frame_bgr.shape[0]} is too small to hold a cell")


def _disc(radius: float) -> np.ndarray:
    r = max(1, int(round(radius)))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


class _Work:
    """The frame at working size and the channels every step shares, relative to the frame's own background.

    Transmitted light: a pixel is the background's light times each stain's transmittance,
    so optical density relative to the background (log background - log pixel, per
    channel) is free of the lamp's colour, the white balance and the exposure. Nuclear
    stain (azure/methylene blue, haematoxylin) absorbs red light, red cells and
    eosinophilic granules absorb green and blue: `stain` = red OD - blue OD is high on
    nuclei only. Its threshold is set per frame, relative to the frame's nuclear peak and
    to its red cells' optical density (pale stains have pale red cells too).
    """

    def __init__(self, frame_bgr: np.ndarray, config: LocatorConfig, scale: float | None = None):
        h, w = frame_bgr.shape[:2]
        self.frame_hw = (h, w)
        self.scale = min(1.0, config.work_size / max(h, w)) if scale is None else min(1.0, scale)
        small = frame_bgr if self.scale == 1.0 else _shrink(
            frame_bgr, (max(1, round(w * self.scale)), max(1, round(h * self.scale))))
        b, g, r = cv2.split(small)
        grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
        bright = (grey >= _quantiles(grey, (0.75,))[0]).astype(np.uint8)
        background = np.array([_masked_median(c, bright) for c in (b, g, r)], np.float32)
        self.background_bgr = background
        log_bg = np.log(background + 1.0)
        # Optical density per channel from one table; a pixel darker than 1/16 of the background
        # is read as 1/16 (its light is at the camera's floor, where a clipped or noisy
        # reading would otherwise give one black speck the density of a whole nucleus).
        od_b, od_g, od_r = cv2.split(cv2.LUT(small, np.minimum(log_bg[None, :] - _LOG[:, None], _MAX_OD)[None]))
        self.density = od_b + od_g + od_r               # total optical density: red cells, nuclei, granules
        self.blue_red = cv2.blur(od_r - od_b, (3, 3))
        # Red cells cover much of a smear: the 90th percentile of density measures how strongly
        # this frame is stained; a pale stain lowers nuclei and red cells alike.
        self.stain_density = max(_quantiles(self.density, (0.9,))[0], 0.05)
        self.level, top = _quantiles(self.blue_red, (0.5, 0.995))
        self.threshold = self.level + max(config.nucleus_contrast * self.stain_density,
                                          config.nucleus_relative * (top - self.level))
        purple = self.blue_red > self.threshold
        if purple.any():
            nuclear = _nuclear_stain_amount((od_b, od_g, od_r), self.blue_red, purple)
            # Pale cytoplasm is pale next to its own nucleus: each connected candidate region is
            # held to its own peak (3x3 mean), or the frame's when that is lower, so one darkly
            # stained (or clipped) cell does not set the bar for a paler one elsewhere.
            n, lab = cv2.connectedComponents(purple.astype(np.uint8), connectivity=8)
            own = np.full(n, -np.inf, np.float32)
            np.maximum.at(own, lab[purple], cv2.blur(nuclear, (3, 3))[purple])
            peak = np.minimum(own, _quantiles(nuclear[purple], (0.95,))[0])
            purple &= nuclear > config.nucleus_saturation * peak[lab]
        self.nucleus = purple.astype(np.uint8)


def _shrink(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`image` shrunk to `size` (w, h): area averaging by the largest whole factor, then bilinear
    for the rest (less than 2x, where bilinear does not alias). OpenCV's area averaging is
    fast only for whole factors (0.1 ms for 640x480 -> 320x240, 3.7 ms for -> 290x218)."""
    h, w = image.shape[:2]
    n = int(min(w / size[0], h / size[1]))
    if n >= 2:
        image = cv2.resize(image[:h - h % n, :w - w % n], (w // n, h // n), interpolation=cv2.INTER_AREA)
    if (image.shape[1], image.shape[0]) != size:
        image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    return image


_LOG = np.log(np.arange(1, 257, dtype=np.float32))     # log(v + 1) for every 8-bit value
_MAX_OD = float(np.log(16.0))   # densities are read up to 1/16 of the background's light


def _nuclear_stain_amount(od_bgr: tuple[np.ndarray, np.ndarray, np.ndarray], blue_red: np.ndarray,
                          candidates: np.ndarray) -> np.ndarray:
    """How much nuclear dye each pixel holds: its optical density projected on the frame's own
    nuclear colour (colour deconvolution with a stain vector measured per frame).

    The nuclear colour is the mean optical-density vector of the most strongly blue tenth of
    the candidates. Pale strongly-blue cytoplasm (PBC monocytes) has the hue but little of
    the amount; a nucleus has both. Total optical density would serve on a neutral
    background, but where another dye or a tinted mount shifts the nucleus's colour
    relative to the background (a pale stain keeps its off-hue share at full strength) a
    nucleus can have less total density than the background while it still holds
    clearly more of its own dye than anything else in the frame.
    """
    values = blue_red[candidates]
    core = candidates & (blue_red >= _quantiles(values, (0.9,))[0])
    vec = np.array([float(c[core].mean()) for c in od_bgr], np.float32)
    norm = float(np.linalg.norm(vec))
    if norm < 1e-6:
        return blue_red
    vec /= norm
    return od_bgr[0] * vec[0] + od_bgr[1] * vec[1] + od_bgr[2] * vec[2]


def _quantiles(values: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    """Quantiles of an image from every other pixel of every other row (fast, and plenty for a threshold)."""
    flat = values[::2, ::2].ravel() if values.ndim == 2 and min(values.shape) >= 32 else values.ravel()
    ks = [min(flat.size - 1, int(q * (flat.size - 1))) for q in qs]
    part = np.partition(flat, ks)
    return [float(part[k]) for k in ks]


def _masked_median(channel: np.ndarray, mask: np.ndarray) -> float:
    hist = cv2.calcHist([channel], [0], mask, [256], [0, 256]).ravel()
    cum = np.cumsum(hist)
    return float(np.searchsorted(cum, cum[-1] / 2.0)) if cum[-1] > 0 else float(np.median(channel))


def _rbc_diameter_px(work: _Work) -> float | None:
    """Red-cell diameter in working pixels, or None when too few red cells are visible."""
    # Red cells absorb green: they are darker than the background in G. Threshold with Otsu
    # on the non-purple pixels (clipped, so eosinophil granules or dark debris do not pull it).
    top = max(_quantiles(work.density, (0.99,))[0], 1e-3)
    dark = np.clip(work.density * (255.0 / top), 0, 255).astype(np.uint8)
    keep = cv2.dilate(work.nucleus, _disc(2)) == 0
    values = dark[keep]
    if values.size < 100:
        return None
    counts = np.cumsum(np.bincount(values, minlength=256))
    values = np.minimum(values, np.searchsorted(counts, 0.9 * counts[-1])).astype(np.uint8)
    thr, _ = cv2.threshold(values.reshape(1, -1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    cells = ((dark > thr) & keep).astype(np.uint8)
    cells = cv2.morphologyEx(cells, cv2.MORPH_CLOSE, _disc(2))
    # Fill the pale centres (central pallor) so that a red cell counts as a disc. A pallor is
    # round (a disc fills pi/4 of its box); the gaps enclosed between crowded red cells are
    # concave (under half of their box), and filling them would merge the cells.
    holes = 1 - cells
    n, lab, stats, _ = cv2.connectedComponentsWithStats(holes, connectivity=4)
    hh, ww = holes.shape
    max_hole = (min(hh, ww) / _MAX_PALLOR_FRACTION) ** 2
    bw, bh = stats[:, cv2.CC_STAT_WIDTH].astype(np.float64), stats[:, cv2.CC_STAT_HEIGHT].astype(np.float64)
    round_ = (stats[:, cv2.CC_STAT_AREA] >= _PALLOR_FILL * bw * bh) & (np.minimum(bw, bh) >= 0.6 * np.maximum(bw, bh))
    inner = (stats[:, cv2.CC_STAT_AREA] < max_hole) & (stats[:, 0] > 0) & (stats[:, 1] > 0) \
        & (stats[:, 0] + stats[:, 2] < ww) & (stats[:, 1] + stats[:, 3] < hh) & (round_ | (bw * bh <= 9))
    inner[0] = False
    cells |= inner[lab].astype(np.uint8)
    # Ridge of the distance transform (border counted as background): its upper values are
    # red-cell radii; clumps and slivers sit in the tails.
    dist = cv2.distanceTransform(cv2.copyMakeBorder(cells, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0),
                                 cv2.DIST_L2, 3)[1:-1, 1:-1]
    ridge = (dist >= cv2.dilate(dist, np.ones((5, 5), np.uint8))) & (dist >= 3)
    radii = dist[ridge]
    if radii.size < 3:
        return None
    # 2 x p80 of the ridge is ~0.77 of the red cells' bounding-box size (BCCD RBC boxes).
    return 2.0 * float(np.percentile(radii, 80)) / 0.77


def _work_scale(frame_hw: tuple[int, int], px_per_um: float, config: LocatorConfig) -> float:
    """Working copy / frame for a frame of `px_per_um` pixels per micrometre: `work_px_per_um`,
    lowered toward `min_work_px_per_um` where that copy would be wider than 2 x `work_size`.

    A field at low magnification holds many more cells per pixel; segmenting it at full
    resolution would take several times a BCCD frame's time. Nuclei stay 25 px and red cells
    18 px wide at 2.5 px per micrometre, enough for both (the shift bench with the scale given).
    """
    target = config.work_px_per_um
    longest = max(frame_hw) * target / px_per_um
    if longest > 2 * config.work_size:
        target = max(config.min_work_px_per_um, target * 2 * config.work_size / longest)
    return min(1.0, target / px_per_um)


def _scaled_work(frame_bgr: np.ndarray, config: LocatorConfig) -> tuple[_Work, float | None]:
    """The working copy at about `work_px_per_um`, and its pixels per micrometre measured on the
    red cells (None when too few are visible).

    Red cells are measured first on a copy `work_size` wide; when they come out far from
    the target resolution, the copy is remade at the resolution they imply. When that is
    finer (low magnification: small red cells), they are measured again there, since red
    cells only a few pixels wide merge and read too large; a coarser copy is not re-measured,
    since merging only grows there.
    """
    h, w = frame_bgr.shape[:2]
    work = _Work(frame_bgr, config, config.work_size / max(h, w))
    rbc = _rbc_diameter_px(work)
    ppu = None
    for _ in range(_SCALE_PASSES):
        if rbc is None:
            return work, ppu
        short = min(work.nucleus.shape)
        ppu = float(np.clip(rbc, short / 40.0, short / 1.5)) / config.rbc_diameter_um
        finer = _work_scale(frame_bgr.shape[:2], ppu / work.scale, config)
        if abs(finer / work.scale - 1.0) <= _RESCALE_TOLERANCE:
            break
        ppu_frame = ppu / work.scale
        coarser = finer < work.scale
        work = _Work(frame_bgr, config, finer)
        ppu = ppu_frame * work.scale
        if coarser:          # red cells read larger still at a coarser copy (they merge): keep this reading
            break
        rbc = _rbc_diameter_px(work)
    return work, ppu


def estimate_um_per_px(frames_bgr: np.ndarray | list[np.ndarray], config: LocatorConfig | None = None) -> float | None:
    """Micrometres per frame pixel from the red cells' size, the median over one or more frames.

    A camera's magnification does not change between frames: a runner can measure it
    once on a few frames and pass it to every `locate_cells` call (steadier than the
    per-frame estimate). None when no frame shows enough red cells.
    """
    config = config or _DEFAULT
    frames = [frames_bgr] if isinstance(frames_bgr, np.ndarray) else list(frames_bgr)
    values = []
    for frame in frames:
        found = locate_frame(frame, config)
        if found.scale_source == "red cells" and found.um_per_px is not None:
            values.append(found.um_per_px)
    return float(np.median(values)) if values else None


def _nucleus_groups(work: _Work, config: LocatorConfig, ppu: float) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Nuclear blobs linked into nuclei (blob ids per nucleus), with the blob label image and stats.

    Blobs whose boxes lie within `lobe_gap_um` of each other are one nucleus (lobes
    joined by a thin strand that the threshold cut). Far-apart lobes are joined
    later, by `_merge_overlapping`.
    """
    n, labels, stats, _ = cv2.connectedComponentsWithStats(work.nucleus, connectivity=8)
    areas = stats[:, cv2.CC_STAT_AREA]
    keep = np.nonzero(areas >= config.speck_area_um2 * ppu * ppu)[0]
    keep = keep[keep > 0]
    if keep.size == 0:
        return [], labels, stats
    x0 = stats[keep, 0].astype(np.float32)
    y0 = stats[keep, 1].astype(np.float32)
    x1 = x0 + stats[keep, 2]
    y1 = y0 + stats[keep, 3]
    gx = np.maximum(0, np.maximum(x0[:, None], x0[None, :]) - np.minimum(x1[:, None], x1[None, :]))
    gy = np.maximum(0, np.maximum(y0[:, None], y0[None, :]) - np.minimum(y1[:, None], y1[None, :]))
    gap = config.lobe_gap_um * ppu
    linked = (gx * gx + gy * gy) <= gap * gap
    # Boxes that close are only candidates: two round nuclei pressed corner to corner have
    # boxes a pixel apart while the nuclei themselves are micrometres apart.
    for i, j in zip(*np.nonzero(np.triu(linked, 1))):
        linked[i, j] = _blob_gap(labels, stats, int(keep[i]), int(keep[j])) <= gap
    # Connected components of the link graph (union-find; a frame has tens of blobs).
    parent = list(range(keep.size))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(linked, 1))):
        ri, rj = root(int(i)), root(int(j))
        if ri != rj:
            parent[rj] = ri
    roots = np.array([root(i) for i in range(keep.size)])
    return [keep[roots == r] for r in np.unique(roots)], labels, stats


def _blob_gap(labels: np.ndarray, stats: np.ndarray, a: int, b: int) -> float:
    """Pixels of background between blobs `a` and `b` at their closest (0 when they touch diagonally)."""
    x0 = min(stats[a, 0], stats[b, 0])
    y0 = min(stats[a, 1], stats[b, 1])
    x1 = max(stats[a, 0] + stats[a, 2], stats[b, 0] + stats[b, 2])
    y1 = max(stats[a, 1] + stats[a, 3], stats[b, 1] + stats[b, 3])
    roi = labels[y0:y1, x0:x1]
    dist = cv2.distanceTransform((roi != a).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return max(0.0, float(dist[roi == b].min()) - 1.0)


def _cell_extent(nbox: tuple[int, int, int, int], config: LocatorConfig, ppu: float
                 ) -> tuple[float, float, float, float]:
    """Centre and half sides (working px) of the whole cell around a nucleus box.

    Cytoplasm is pale and its edge depends on the stain, so the cell is modelled from
    the nucleus: the same rule on every microscope and on the training crops.
    """
    nx0, ny0, nx1, ny1 = nbox
    rim = config.cytoplasm_rim_um * ppu
    return ((nx0 + nx1) / 2.0, (ny0 + ny1) / 2.0,
            (nx1 - nx0) / 2.0 * config.cell_to_nucleus + rim, (ny1 - ny0) / 2.0 * config.cell_to_nucleus + rim)


def _nucleus_box(ids: np.ndarray, stats: np.ndarray) -> tuple[int, int, int, int]:
    return (int(stats[ids, 0].min()), int(stats[ids, 1].min()),
            int((stats[ids, 0] + stats[ids, 2]).max()), int((stats[ids, 1] + stats[ids, 3]).max()))


def _merge_overlapping(groups: list[np.ndarray], stats: np.ndarray, config: LocatorConfig, ppu: float
                       ) -> list[np.ndarray]:
    """Join nuclei whose modelled cells overlap heavily: two lobes of one eosinophil, not two cells.

    Two separate cells can touch but their centres stay about a diameter apart; the
    halves of one granulocyte whose lobes lie far apart give cells whose centres are
    much closer than that. The joined nucleus is not limited here: one that comes out wider
    than a cell is dropped by the size limit, and when nothing else is left the white cell
    becomes the ruler (high magnification read with too coarse a red-cell scale, where the
    lobes of one cell look a cell apart).
    """
    groups = list(groups)
    while len(groups) > 1:
        boxes = np.array([_nucleus_box(g, stats) for g in groups], np.float64)
        ext = np.array([_cell_extent(tuple(b), config, ppu) for b in boxes])
        dist = np.hypot(ext[:, 0, None] - ext[None, :, 0], ext[:, 1, None] - ext[None, :, 1])
        half = ext[:, 2:].max(axis=1)
        close = dist < config.same_cell_overlap * (half[:, None] + half[None, :])
        close &= np.triu(np.ones_like(close), 1)
        if not close.any():
            break
        i, j = np.unravel_index(np.argmin(np.where(close, dist, np.inf)), dist.shape)
        groups[i] = np.concatenate([groups[i], groups[j]])
        del groups[j]
    return groups


def locate_cells(frame_bgr: np.ndarray, config: LocatorConfig | None = None,
                 um_per_px: float | None = None) -> list[CellBox]:
    """The white cells in a BGR uint8 frame, best score first.

    `um_per_px` (micrometres per frame pixel) sets the size limits when known;
    otherwise the scale is measured from the red cells in this frame (see `locate_frame`).
    """
    return locate_frame(frame_bgr, config, um_per_px).cells


@dataclass(frozen=True)
class Located:
    """What `locate_frame` found, and the scale it used to find it."""
    cells: list[CellBox]
    um_per_px: float          # the scale the size limits used
    scale_source: str         # "given", "red cells", "assumed" (no red cells to measure: a red cell is taken
                              # as `fallback_rbc_fraction` of the frame), or "white cell" (the red cells' or the
                              # assumed scale made the largest nucleus too wide: high magnification, few red cells)


def locate_frame(frame_bgr: np.ndarray, config: LocatorConfig | None = None,
                 um_per_px: float | None = None) -> Located:
    """`locate_cells` with the scale it used and where that scale came from.

    A given `um_per_px` (a camera profile's stage-micrometre value) always wins. Otherwise
    the red cells are the ruler; when they cannot be measured, or their scale would make
    the frame's largest nucleus too wide to be one cell, that nucleus is taken as a white
    cell's (`wbc_nucleus_um`) and the size limits are applied at that scale instead of
    rejecting the cell.
    """
    _check_frame(frame_bgr)
    if um_per_px is not None and not (np.isfinite(um_per_px) and um_per_px > 0):
        raise ValueError(f"um_per_px={um_per_px!r} must be a positive number of micrometres per pixel (or None)")
    config = config or _DEFAULT
    if um_per_px is not None:        # physical working resolution: the same on every microscope
        work = _Work(frame_bgr, config, _work_scale(frame_bgr.shape[:2], 1.0 / um_per_px, config))
        ppu, source = work.scale / um_per_px, "given"
    else:
        work, ppu = _scaled_work(frame_bgr, config)
        source = "red cells"
        if ppu is None:              # no red cells to measure: assume a typical field, checked below
            ppu = config.fallback_rbc_fraction * min(work.nucleus.shape) / config.rbc_diameter_um
            source = "assumed"
    if not work.nucleus.any():
        return Located([], work.scale / ppu, source)
    nuclei, stats, labels, widest = _nuclei(work, config, ppu)
    if source == "red cells" and work.scale < 1.0 and _small_nucleus(nuclei, stats, config, ppu):
        # A nucleus-sized blob that the red-cell scale makes half a white cell's nucleus: red cells
        # only a few pixels wide merge and read too large. Measure them again at twice the
        # resolution. Resolved red cells read twice as many pixels there; when they read hardly
        # more (the frame's red cells at most 1/1.5 of the first reading), the first copy
        # measured clumps, and the finer reading is kept.
        # (The finer copy is no wider than 2 x work_size: the time budget, as in `_work_scale`.)
        fine_scale = min(1.0, 2.0 * work.scale, 2.0 * config.work_size / max(frame_bgr.shape[:2]))
        fine = _Work(frame_bgr, config, fine_scale) if fine_scale > (1.0 + _RESCALE_TOLERANCE) * work.scale else None
        rbc = _rbc_diameter_px(fine) if fine is not None else None
        if rbc is not None:
            ppu_frame = rbc / config.rbc_diameter_um / fine.scale
            if ppu_frame * _MERGED_READING < ppu / work.scale:
                scale = _work_scale(frame_bgr.shape[:2], ppu_frame, config)
                work = fine if abs(scale / fine.scale - 1.0) <= _RESCALE_TOLERANCE else _Work(frame_bgr, config, scale)
                ppu = ppu_frame * work.scale
                nuclei, stats, labels, widest = _nuclei(work, config, ppu)
    if widest and um_per_px is None:
        # The frame's largest nucleus is wider than a cell can be: the ruler is wrong, not the cell.
        ppu_wbc = widest / config.wbc_nucleus_um
        finer = _work_scale(frame_bgr.shape[:2], ppu_wbc / work.scale, config)
        ppu_frame = ppu_wbc / work.scale
        work = _Work(frame_bgr, config, finer)
        ppu, source = ppu_frame * work.scale, "white cell"
        nuclei, stats, labels, _ = _nuclei(work, config, ppu)
    return Located(_cell_boxes(frame_bgr.shape[:2], work, config, ppu, nuclei, stats, labels),
                   work.scale / ppu, source)


def _nuclei(work: _Work, config: LocatorConfig, ppu: float) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, float]:
    """Nuclei that pass the size limits, the blob stats and labels, and the widest nucleus
    dropped for being wider than a cell (working px; 0 when none was, or when a nucleus that
    passed holds more stain than it)."""
    groups, labels, stats = _nucleus_groups(work, config, ppu)
    # Platelets and specks take no part in merging; far-apart lobes of one cell do.
    lobes = [ids for ids in groups if stats[ids, cv2.CC_STAT_AREA].max() >= config.min_lobe_area_um2 * ppu * ppu]
    nuclei, widest, widest_area = [], 0.0, 0
    for ids in _merge_overlapping(lobes, stats, config, ppu):
        # Size limits: small blobs (platelets, debris) and clumps out.
        if stats[ids, cv2.CC_STAT_AREA].sum() < config.min_nucleus_area_um2 * ppu * ppu:
            continue
        nbox = _nucleus_box(ids, stats)
        side = max(nbox[2] - nbox[0], nbox[3] - nbox[1])
        if side > config.max_cell_um * ppu:
            if side > widest:
                widest, widest_area = float(side), int(stats[ids, cv2.CC_STAT_AREA].sum())
            continue
        nuclei.append(ids)
    # The too-wide nucleus counts only when it is the frame's largest nuclear mass: a frame at
    # high magnification shows one whole cell and, at most, parts of others at its edge.
    if widest and any(stats[ids, cv2.CC_STAT_AREA].sum() > widest_area for ids in nuclei):
        widest = 0.0
    return nuclei, stats, labels, widest


def _small_nucleus(nuclei: list[np.ndarray], stats: np.ndarray, config: LocatorConfig, ppu: float) -> bool:
    """Whether a nucleus that passed the area limit is under half a white cell's (`wbc_nucleus_um`)."""
    for ids in nuclei:
        x0, y0, x1, y1 = _nucleus_box(ids, stats)
        if max(x1 - x0, y1 - y0) < 0.5 * config.wbc_nucleus_um * ppu:
            return True
    return False


def _cell_boxes(frame_hw: tuple[int, int], work: _Work, config: LocatorConfig, ppu: float,
                nuclei: list[np.ndarray], stats: np.ndarray, labels: np.ndarray) -> list[CellBox]:
    h, w = frame_hw
    wh, ww = work.nucleus.shape
    s = work.scale
    cells: list[CellBox] = []
    for ids in nuclei:
        nbox = _nucleus_box(ids, stats)
        cx, cy, half_w, half_h = _cell_extent(nbox, config, ppu)
        if 2 * max(half_w, half_h) < config.min_cell_um * ppu:
            continue
        fx0, fy0 = (cx - half_w) / s, (cy - half_h) / s
        fx1, fy1 = (cx + half_w) / s, (cy + half_h) / s
        nucleus_cut = nbox[0] <= 0 or nbox[1] <= 0 or nbox[2] >= ww or nbox[3] >= wh
        touches = nucleus_cut or fx0 < 0 or fy0 < 0 or fx1 > w or fy1 > h
        x0, y0 = max(0, int(round(fx0))), max(0, int(round(fy0)))
        x1, y1 = min(w, int(round(fx1))), min(h, int(round(fy1)))
        if x1 - x0 < 2 or y1 - y0 < 2:
            continue
        area = float(stats[ids, cv2.CC_STAT_AREA].sum()) / (ppu * ppu)
        score = _score(work, labels, ids, nbox, area, config)
        if score < config.min_score:
            continue
        cells.append(CellBox(x0, y0, x1, y1, score, bool(touches)))
    cells.sort(key=lambda c: -c.score)
    return cells


def _score(work: _Work, labels: np.ndarray, ids: np.ndarray, nbox: tuple[int, int, int, int],
           area_um2: float, config: LocatorConfig) -> float:
    """0..1: how far the nucleus is above the size floor and how strongly it is stained."""
    x0, y0, x1, y1 = nbox
    inside = np.isin(labels[y0:y1, x0:x1], ids)
    stain = float(work.blue_red[y0:y1, x0:x1][inside].mean()) - work.threshold
    size_term = np.clip((area_um2 - config.min_nucleus_area_um2) / config.min_nucleus_area_um2, 0.0, 1.0)
    stain_term = np.clip(stain / max(work.threshold - work.level, 1e-3), 0.0, 1.0)
    return float(round(0.5 + 0.25 * size_term + 0.25 * stain_term, 4))


def measure_cell_fraction(crop_bgr: np.ndarray, config: LocatorConfig | None = None,
                          um_per_px: float | None = None) -> float | None:
    """White-cell diameter / crop side for a single-cell crop (the cell roughly centred).

    The diameter is `CellBox.diameter` from `locate_cells`, the same rule that sizes
    cells in full frames, so a runner that crops frames at side = diameter / fraction
    shows the model cells at the apparent size it was trained on. The side is the
    crop's shorter one (what `preprocess.center_square` keeps). None when no white
    cell is found near the centre.
    """
    _check_frame(crop_bgr)
    h, w = crop_bgr.shape[:2]
    cells = locate_cells(crop_bgr, config, um_per_px)
    if not cells:
        return None
    cx, cy = w / 2.0, h / 2.0
    side = float(min(h, w))
    cell = min(cells, key=lambda c: np.hypot(c.center[0] - cx, c.center[1] - cy))
    if abs(cell.center[0] - cx) > side / 4 or abs(cell.center[1] - cy) > side / 4:
        return None
    return cell.diameter / side
