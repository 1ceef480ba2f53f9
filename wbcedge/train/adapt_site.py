"""The site's cells for `wbcedge adapt`: labelled cells split into fit / val / held-out,
unlabelled cells for the normalisation statistics, and the refusals that keep the result
honest. No TensorFlow here, so every refusal is checked before a model is loaded.

Labelled cells come as a class-folder tree (`DIR/<class>/*.jpg`; with `DIR/manifest.csv`, as
`wbcedge review export` writes it, only reviewer-labelled rows are used) or a wbcedge data manifest (rows with split `test` are taken as the held-out
cells; `excluded` rows are ignored). Unlabelled cells are crops, or frames that the locator
crops with the model's own preprocessing spec, as the runner does.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from wbcedge.data.manifest import EXCLUDED, IMAGE_SUFFIXES, Record, read_manifest
from wbcedge.errors import InputDataError
from wbcedge.labels import CLASSES, UnknownClassError
from wbcedge.preprocess import PreprocessSpec, crop_around_cell, read_image, to_model_input

MIN_FIT_PER_CLASS = 3
"""A class with fewer labelled cells to learn from is refused: 1-2 cells teach the model a
picture, not a class (and leave nothing for the validation part that stops training)."""

MIN_HELD_OUT = 20
"""Fewer held-out cells cannot tell a better model from the parent: with 20 cells an
accuracy of 80% has an exact 95% interval of 56-94%, already 38 points wide; with 10 it
is 44-97%. The held-out cells are the gate's test set, so below this the gate says nothing."""

REVIEW_MANIFEST = "manifest.csv"
"""`wbcedge review export` writes DIR/<class>/*.jpg and this manifest, which says who labelled each cell."""

FRAME_MIN_SIDE = 400
"""An unlabelled image whose shorter side is at least this many pixels is a frame: the
locator finds its cells and the spec crops them. Smaller images are single-cell crops."""


class AdaptDataError(InputDataError):
    """Site data that cannot support an adaptation; the message says what to add or change."""


@dataclass
class SitePlan:
    fit: list[Record]
    val: list[Record]
    test: list[Record]
    test_given: bool                      # held-out cells came separately (--test), not split off --data
    adapted: list[str] = field(default_factory=list)
    not_adapted: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, dict[str, int]]:
        out = {}
        for c in CLASSES:
            out[c] = {part: sum(r.label == c for r in rows)
                      for part, rows in (("fit", self.fit), ("val", self.val), ("held_out", self.test))}
        return out

    def data_sha256(self) -> str:
        """One hash of the site's labelled cells: the bytes and label of every cell, in any order."""
        lines = sorted(f"{r.sha256} {r.label} {part}" for part, rows in
                       (("fit", self.fit), ("val", self.val), ("held_out", self.test)) for r in rows)
        return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def read_labelled(source: Path) -> list[Record]:
    """Records of a class-folder tree or a data manifest; unknown class names are refused."""
    source = Path(source)
    if not source.exists():
        raise AdaptDataError(f"{source}: no such folder or manifest; give the site's labelled cells as "
                             "DIR/<class>/*.jpg (what `wbcedge review export` writes) or a data manifest CSV")
    if source.is_dir() and (source / REVIEW_MANIFEST).is_file():
        source = source / REVIEW_MANIFEST
    if source.is_file():
        try:
            records = _reviewed_only(source, read_manifest(source))
        except ValueError as e:
            raise AdaptDataError(str(e)) from None
        records = [r for r in records if r.split != EXCLUDED]
        unknown = sorted({r.label for r in records} - set(CLASSES))
        if unknown:
            raise UnknownClassError(f"{source}: labels {unknown} are not white blood cell classes; "
                                    f"known: {', '.join(CLASSES)}. Fix the label column (or re-index the folder "
                                    "with `wbcedge data index --map NAME=CLASS`)")
        return records
    from wbcedge.data.index import index_folder

    try:
        return index_folder(source).records
    except (FileNotFoundError, ValueError) as e:
        if isinstance(e, UnknownClassError):
            raise
        raise AdaptDataError(str(e)) from None


def _reviewed_only(path: Path, records: list[Record]) -> list[Record]:
    """Drop rows a `wbcedge review export --include-unreviewed` wrote with the model's own label
    (no reviewer): adapting on them would teach the model its own mistakes."""
    import csv

    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "reviewer" not in rows[0]:
        return records
    return [r for r, row in zip(records, rows) if (row.get("reviewer") or "").strip()]


def plan_site(data: Path, holdout: float = 0.3, seed: int = 0, test: Path | None = None,
              val_share: float = 0.2) -> SitePlan:
    """Split the site's labelled cells (stratified, seeded) and refuse what cannot work.

    Held-out cells: the `test` source when given, else the manifest's `test` rows, else a
    `holdout` share of each class (rounded, leaving MIN_FIT_PER_CLASS to learn from).
    Of the rest, `val_share` of each class (at least one cell) stops the fine-tuning early.
    Identical bytes (same sha256) always stay on one side.
    """
    if not 0.0 < holdout < 1.0:
        raise AdaptDataError(f"--holdout {holdout}: give the share of labelled cells kept for the check, "
                             "between 0 and 1 (0.3 keeps 30%)")
    records = read_labelled(data)
    if not records:
        raise AdaptDataError(f"{data} holds no labelled cells: put crops under {data}/<class>/")
    if test is not None:
        held = [r for r in read_labelled(test) if r.split != EXCLUDED]
        train_side = records
    elif any(r.split == "test" for r in records):
        held = [r for r in records if r.split == "test"]
        train_side = [r for r in records if r.split != "test"]
    else:
        held, train_side = [], records
    rng = np.random.default_rng(seed)
    groups = _groups_by_class(train_side)
    too_few = {c: len(g) for c, g in groups.items() if 0 < len(g) < MIN_FIT_PER_CLASS}
    if too_few:
        listing = ", ".join(f"{c}: {n}" for c, n in sorted(too_few.items()))
        raise AdaptDataError(f"too few labelled cells to adapt ({listing}); each class given needs at least "
                             f"{MIN_FIT_PER_CLASS} distinct cells. Label more of these, or remove the class "
                             "folder to keep the model's original behaviour for it")
    split_off = test is None and not any(r.split == "test" for r in records)
    fit, val = [], []
    for cells in groups.values():
        order = [cells[i] for i in rng.permutation(len(cells))]
        if split_off:
            n_held = min(round(len(order) * holdout), len(order) - MIN_FIT_PER_CLASS)
            held += [r for g in order[:n_held] for r in g]
            order = order[n_held:]
        n_val = max(1, round(len(order) * val_share)) if len(order) > MIN_FIT_PER_CLASS else 0
        val += [r for g in order[:n_val] for r in g]
        fit += [r for g in order[n_val:] for r in g]
    _check_no_overlap(fit + val, held)
    _check_held_out(held, groups, len(train_side) + (len(held) if split_off is False else 0))
    adapted = [c for c in CLASSES if c in groups]
    return SitePlan(fit, val, held, test is not None, adapted, [c for c in CLASSES if c not in groups])


def _groups_by_class(records: list[Record]) -> dict[str, list[list[Record]]]:
    """Per class, cells grouped by identical bytes, in a stable order."""
    by_hash: dict[tuple[str, str], list[Record]] = {}
    for r in sorted(records, key=lambda r: r.path):
        by_hash.setdefault((r.label, r.sha256 or r.path), []).append(r)
    out: dict[str, list[list[Record]]] = {}
    for (label, _), group in by_hash.items():
        out.setdefault(label, []).append(group)
    return out


def _check_no_overlap(train_side: list[Record], held: list[Record]) -> None:
    shared = {r.sha256 for r in train_side if r.sha256} & {r.sha256 for r in held if r.sha256}
    if shared:
        raise AdaptDataError(f"{len(shared)} cell(s) are both among the cells to learn from and the held-out cells "
                             "(identical bytes): the check would be trained on. Remove them from one side")


def _check_held_out(held: list[Record], groups: dict, have: int) -> None:
    counts = Counter(r.label for r in held)
    if len(held) < MIN_HELD_OUT:
        raise AdaptDataError(
            f"only {len(held)} held-out labelled cells; at least {MIN_HELD_OUT} are needed to tell the adapted "
            f"model from the original (with {MIN_HELD_OUT} cells an 80% accuracy has a 95% interval of 56-94%, "
            f"fewer make it wider than any gain). Label more cells ({have} now; about "
            f"{math.ceil(MIN_HELD_OUT / 0.3)} in all at --holdout 0.3), raise --holdout, or give --test CELLS")
    missing = [c for c in groups if counts[c] == 0]
    if missing:
        raise AdaptDataError(f"no held-out cells of {', '.join(missing)}: their recall could not be checked. "
                             "Label more of them or raise --holdout")


# ---------------------------------------------------------------- model inputs

CROP_POLICIES = ("parent", "cell", "site")
"""How adapt cuts the site's cells (`AdaptConfig.crop`): the parent's policy with the crops as
given; each crop re-cut to its own located cell; or one re-cut factor for the whole site."""


@dataclass(frozen=True)
class SiteCut:
    """How the site's crops become the adapted model's inputs, and the spec its bundle gets.

    `recut`: None (crops as given), "cell" (each crop re-cut so its own located cell fills the
    spec's cell_fraction; the spec has no crop_um, so the runner sizes crops to each cell alike),
    or one factor for every crop (side x factor about its centre; the spec's crop_um x factor, so
    the runner cuts the site's frames the same way)."""
    spec: PreprocessSpec
    recut: float | str | None = None
    median_fraction: float | None = None   # "site": the site's median located fraction before the re-cut

    def inputs(self, records: list[Record]) -> np.ndarray:
        return site_inputs(records, self.spec, self.recut)

    def describe(self, policy: str, parent_spec: PreprocessSpec) -> str:
        """How `site_cut(policy, parent_spec, ...)` cut the site's crops, in words (adapt's log and report)."""
        head = f"crops (crop = \"{policy}\"): "
        if self.recut == "cell":
            return head + (f"each crop re-cut so its located cell fills {self.spec.cell_fraction:.2f} of the side; "
                           "the bundle sizes every crop to its cell")
        if policy != "site":
            return head + "the crops as given, the parent's crop policy"
        if not parent_spec.crop_um:
            return head + "the parent sizes crops to each cell (no physical crop width), so no site factor: as given"
        if self.median_fraction is None:
            return head + ("no cell located in the fit and validation crops, so no site factor: crops used as given "
                           "(check that they show single white cells)")
        measured = (f"the site's cells fill {self.median_fraction:.2f} of their crops (median of the fit and "
                    f"validation cells), the model's {parent_spec.cell_fraction:.2f}")
        if self.recut is None:
            return head + measured + ": within the trained range, crops used as given"
        return head + measured + (f": every site crop re-cut x{self.recut:.2f}, the bundle's crops "
                                  f"{self.spec.crop_um:g} um wide (the parent's {parent_spec.crop_um:g})")

    def parent_cell_inputs(self, records: list[Record]) -> np.ndarray:
        """The parent's own training cells (replayed): re-cut to each cell under "cell"; otherwise as
        given, since their cells already fill the spec's fraction (a site factor is the site's)."""
        return site_inputs(records, self.spec, "cell" if self.recut == "cell" else None)


def site_cut(policy: str, parent_spec: PreprocessSpec, labelled: list[Record],
             cell_fraction: float | None = None) -> SiteCut:
    """The `SiteCut` of a crop policy. "site" measures the located cell fraction of the labelled
    crops it is given (the fit and validation cells: never the held-out ones; crops the runner cut
    with the parent's spec, as a session records them, so that the factor says how to change that
    cut) and re-cuts every site crop by the one factor that brings its median to the spec's
    cell_fraction, keeping the size differences between cells (`recrop.crop_scale`; a site already within its trained range,
    or a parent without physical crops, is cut as given). `cell_fraction` ("cell" only): the share
    of the side each cell is made to fill, instead of the parent's."""
    from wbcedge.device.recrop import crop_scale, located_fractions

    if policy not in CROP_POLICIES:
        raise ValueError(f"crop policy {policy!r}: one of {', '.join(CROP_POLICIES)}")
    if policy == "cell":
        return SiteCut(replace(parent_spec, crop_um=None, cell_fraction=cell_fraction or parent_spec.cell_fraction),
                       "cell")
    if policy != "site" or not parent_spec.crop_um or not labelled:
        return SiteCut(parent_spec)
    scale = crop_scale(located_fractions([read_image(Path(r.path)) for r in labelled]), parent_spec)
    if scale.factor == 1.0:
        return SiteCut(parent_spec, None, scale.median_fraction)
    return SiteCut(replace(parent_spec, crop_um=round(parent_spec.crop_um * scale.factor, 2)),
                   scale.factor, scale.median_fraction)


def site_inputs(records: list[Record], spec: PreprocessSpec, recut: float | str | None = None) -> np.ndarray:
    """Model inputs of labelled crops, through the spec's own preprocessing (in this process:
    a few hundred small crops, and no fork of a process that has TensorFlow loaded), re-cut
    first as `SiteCut.recut` says."""
    if not records:
        return np.zeros((0, spec.input_size, spec.input_size, 3), np.uint8)
    return model_inputs([read_image(Path(r.path)) for r in records], spec, recut)


def model_inputs(crops_bgr: list[np.ndarray], spec: PreprocessSpec, recut: float | str | None = None) -> np.ndarray:
    from wbcedge.device.recrop import cell_sized_crops, rescale_crop

    if recut == "cell":
        crops_bgr = cell_sized_crops(crops_bgr, spec)[0]
    elif recut:
        crops_bgr = [rescale_crop(c, float(recut)) for c in crops_bgr]
    return np.stack([to_model_input(c, spec) for c in crops_bgr])


def unlabelled_inputs(source: Path | None, spec: PreprocessSpec, limit: int = 0, seed: int = 0,
                      recut: float | str | None = None) -> np.ndarray:
    """Model inputs of a folder of unlabelled site images (searched recursively).

    Frames (shorter side >= FRAME_MIN_SIDE) are cut into cells by the locator and the
    spec's crop policy, exactly as `wbcedge run` cuts them; smaller images are crops.
    `limit` > 0 keeps that many images, drawn with `seed`. `recut`: crops re-cut as in `site_inputs`
    (frames are cut by the spec, which a `SiteCut` has already changed).
    """
    empty = np.zeros((0, spec.input_size, spec.input_size, 3), np.uint8)
    if source is None:
        return empty
    source = Path(source)
    if not source.is_dir():
        raise AdaptDataError(f"--unlabelled {source}: not a folder; give a folder of the site's cell crops or frames")
    paths = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if limit and len(paths) > limit:
        paths = [paths[i] for i in sorted(np.random.default_rng(seed).permutation(len(paths))[:limit])]
    out, crops = [], []
    for p in paths:
        try:
            image = read_image(p)
        except ValueError:
            continue
        if min(image.shape[:2]) >= FRAME_MIN_SIDE:
            out += _frame_cells(image, spec)
        else:
            crops.append(image)
    if crops:
        out += list(model_inputs(crops, spec, recut))
    return np.stack(out) if out else empty


def _frame_cells(frame: np.ndarray, spec: PreprocessSpec) -> list[np.ndarray]:
    from wbcedge.device.locate import estimate_um_per_px, locate_cells

    scale = estimate_um_per_px([frame])
    return [to_model_input(crop_around_cell(frame, cell.box, spec, scale), spec)
            for cell in locate_cells(frame, um_per_px=scale)]
