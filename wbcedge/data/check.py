"""Check a data manifest: re-read every file, find leaks between splits, missing or changed
files and odd images.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from wbcedge.data.index import _probe
from wbcedge.data.manifest import Problem, Record, counts_by_split
from wbcedge.data.split import conflicting_groups, duplicate_groups, leak_groups, straddling_groups
from wbcedge.labels import CLASSES
from wbcedge.parallel import parallel_map as _parallel_map

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
