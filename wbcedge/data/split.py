"""Leak-free splits: groups of identical bytes (and their augmented copies) always land in one
split; a group whose copies carry different labels is excluded.
"""

from __future__ import annotations

import random
from collections import defaultdict

from wbcedge.data.manifest import EXCLUDED, SPLITS, Problem, Record
from wbcedge.errors import InputDataError

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
        raise InputDataError("choose one protocol: test_per_class (paper) or test_fraction")
    if test_per_class is not None and test_per_class < 0:
        raise InputDataError(f"test_per_class must be 0 or more, got {test_per_class}")
    if test_fraction is not None and not 0 <= test_fraction < 1:
        raise InputDataError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if not 0 <= val_fraction < 1:
        raise InputDataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if any(r.source for r in records):
        raise InputDataError("this manifest holds augmented rows: split the manifest written by `wbcedge data "
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
            raise InputDataError(f"class {label} has {n_images} images, not enough for {n_test} test images "
                                 f"and a train split: ask for fewer test images with --test-per-class N "
                                 f"(paper: 100) or a share with --test-fraction 0.2")
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
