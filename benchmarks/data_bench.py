"""Data-layer benchmark: index, split and check the whole PBC set, then augment its
train split to K images per class and check the result; images per second per stage.

Run from the repository root (figures and the command used: docs/data.md):

    nice -n 10 python benchmarks/data_bench.py --json data_bench.json

It uses every core (`os.cpu_count()`), like the `wbcedge data` commands. The work
folder (manifests, ~13,000 augmented JPEGs, ~0.3 GB) is deleted at the end unless
`--keep` is given.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import cv2
from rich.console import Console
from rich.table import Table

from wbcedge import data
from wbcedge.cli.common import write_json

REPO = Path(__file__).resolve().parents[1]
KNOWN_DUPLICATE = {"EO_225902.jpg", "BNE_191112.jpg"}  # same bytes under eosinophil and neutrophil


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "pbc",
                        help="class-folder tree to index (default: ../shared/data/pbc)")
    parser.add_argument("--per-class", type=int, default=4000, help="train images per class after augmentation")
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a new temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    console = Console()
    work = args.work or Path(tempfile.mkdtemp(prefix="wbcedge-data-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    stages: list[dict] = []

    def timed(name: str, fn, count_of):
        start = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - start
        n = count_of(out)
        stages.append({"stage": name, "images": n, "seconds": round(seconds, 2),
                       "images_per_s": round(n / seconds, 1) if seconds else None})
        console.print(f"{name}: {n} images in {seconds:.1f} s", highlight=False)
        return out

    try:
        index = timed("index", lambda: data.index_folder(args.data), lambda r: len(r.records))
        records = index.records
        for p in index.problems:
            console.print(str(p), markup=False, highlight=False)
        excluded = timed("split", lambda: data.split_records(records, seed=args.seed,
                                                             test_per_class=args.test_per_class),
                         lambda _: len(records))
        data.write_manifest(records, work / "manifest.csv")
        check = timed("check", lambda: data.check_records(records), lambda _: len(records))
        aug = timed("augment", lambda: data.augment_records(records, work / "aug", per_class=args.per_class,
                                                            seed=args.seed),
                    lambda r: sum(s["augmented"] for s in r.per_class.values()))
        data.write_manifest(aug.records, work / "aug" / "manifest.csv")
        check_aug = timed("check augmented", lambda: data.check_records(aug.records), lambda _: len(aug.records))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    conflicts = [sorted(Path(r.path).name for r in g) for g in check.conflicts.values()]
    known_found = any(set(names) == KNOWN_DUPLICATE for names in conflicts)
    table = Table(title=f"wbcedge data on {args.data} ({os.cpu_count()} cores: {cpu_name()})")
    for col in ("stage", "images", "seconds", "images/s"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for s in stages:
        table.add_row(s["stage"], str(s["images"]), f"{s['seconds']:.1f}", f"{s['images_per_s']:,.0f}")
    console.print(table)
    console.print(f"index: {len(records)} images, {len(index.problems)} problem line(s); "
                  f"{len(check.duplicates)} duplicate groups, {len(check.conflicts)} with conflicting labels "
                  f"{conflicts}; known cross-class duplicate reported: {known_found}; "
                  f"excluded by split: {len(excluded)} group(s)", highlight=False)
    console.print(f"check: ok={check.ok}, augmented check: ok={check_aug.ok}, straddling after augmentation: "
                  f"{len(check_aug.straddling)}", highlight=False)
    counts = data.counts_by_split(aug.records)
    console.print("train per class after augmentation: "
                  + ", ".join(f"{c} {s['originals']}+{s['augmented']}={s['train']}" for c, s in aug.per_class.items())
                  + "; val/test: " + ", ".join(f"{c} {counts[c]['val']}/{counts[c]['test']}" for c in counts),
                  highlight=False)
    write_json(args.json, {
        "data": str(args.data), "cores": os.cpu_count(), "cpu": cpu_name(), "python": platform.python_version(),
        "opencv": cv2.__version__, "seed": args.seed, "per_class": args.per_class,
        "test_per_class": args.test_per_class, "stages": stages, "index_problems": [str(p) for p in index.problems],
        "duplicate_groups": len(check.duplicates), "conflicting_groups": conflicts,
        "known_duplicate_reported": known_found, "check_ok": check.ok, "augmented_check_ok": check_aug.ok,
        "augment": aug.per_class,
    })
    if not (check.ok and check_aug.ok):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
