"""Robustness bench of the white-cell locator under shifts that mimic other microscopes.

BCCD frames (VOC WBC boxes) and PBC single-cell crops, each shifted by
`wbcedge.evaluation.shifts` at three strengths (mild, middle, strong): stain, background
tint, exposure, contrast, defocus, JPEG, noise, lower and higher magnification, and
(crops) tighter and looser crops. Per shift: recall and precision at IoU 0.5, extra boxes
per annotated cell, and the located diameter's error against the annotated box; on
crops, how often the cell is found and how far its measured fraction of the crop side is
from the expected one. Also: locate time per unshifted frame and the per-frame scale
estimate against BCCD's own red-cell boxes. Figures and commands: docs/locate.md.

    nice -n 10 python benchmarks/locate_shift.py ../shared/data --json runs/locate_shift.json
    python benchmarks/locate_shift.py ../shared/data --timing-only --repeat 5        # times only
    python benchmarks/locate_shift.py ../shared/data --subset trainval --limit 0 --scale-only
    python benchmarks/locate_shift.py ../shared/data --compare before.json after.json   # table only

The scale is measured per frame (no camera profile): the case of an unknown microscope.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

from wbcedge.device.locate import estimate_um_per_px, locate_cells, locate_frame, measure_cell_fraction
from wbcedge.evaluation import shifts as S
from wbcedge.evaluation.locate_eval import iou, match_boxes, read_voc_boxes
from wbcedge.preprocess import PreprocessSpec, read_image

REPO = Path(__file__).resolve().parents[1]
LEVELS = ("mild", "middle", "strong")
VISIBLE = 0.6          # a box cut by a shifted field's edge is scored when this much of it is inside...
                       # ...and otherwise ignored (a box on it is neither a hit nor an extra)


def load_bccd(root: Path, subset: str, limit: int | None, seed: int) -> list[dict]:
    names = None
    if subset != "all":
        names = [ln.split()[0] for ln in (root / "ImageSets" / "Main" / f"{subset}.txt").read_text().splitlines()
                 if ln.strip()]
    stems = sorted(p.stem for p in (root / "Annotations").glob("*.xml"))
    if names is not None:
        stems = [s for s in stems if s in set(names)]
    if limit and limit < len(stems):
        stems = sorted(random.Random(seed).sample(stems, limit))
    out = []
    for s in stems:
        xml = root / "Annotations" / f"{s}.xml"
        out.append({"name": s, "image": read_image(root / "JPEGImages" / f"{s}.jpg"),
                    "wbc": read_voc_boxes(xml, "WBC"), "rbc": read_voc_boxes(xml, "RBC")})
    return out


def _visible(box, w, h) -> tuple[tuple[int, int, int, int], float]:
    x0, y0, x1, y1 = box
    cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    area = max(1, (x1 - x0) * (y1 - y0))
    inside = max(0, cx1 - cx0) * max(0, cy1 - cy0)
    return (cx0, cy0, cx1, cy1), inside / area


def split_boxes(boxes, w, h) -> tuple[list, list]:
    """Boxes to score (mostly inside the field, clipped) and boxes to ignore (mostly outside)."""
    score, ignore = [], []
    for b in boxes:
        clipped, frac = _visible(b, w, h)
        if frac >= VISIBLE:
            score.append(clipped)
        elif frac > 0:
            ignore.append(clipped)
    return score, ignore


class Tally:
    def __init__(self):
        self.n_gt = self.n_pred = self.tp = self.fp = 0
        self.diam_err: list[float] = []
        self.frames = 0

    def add(self, cells, gt, ignore=()):
        pred = [c.box for c in cells]
        matches = match_boxes(pred, gt)
        hit = {i for i, _, _ in matches}
        self.frames += 1
        self.n_gt += len(gt)
        self.tp += len(matches)
        self.n_pred += len(matches)
        for i, j, _ in matches:
            g = gt[j]
            self.diam_err.append(abs(cells[i].diameter / max(1, g[2] - g[0], g[3] - g[1]) - 1.0))
        for i, p in enumerate(pred):
            if i in hit:
                continue
            if any(iou(p, g) >= 0.3 for g in ignore):
                continue
            self.fp += 1
            self.n_pred += 1

    def result(self) -> dict:
        return {"frames": self.frames, "n_gt": self.n_gt, "n_pred": self.n_pred, "tp": self.tp, "fp": self.fp,
                "recall": self.tp / self.n_gt if self.n_gt else None,
                "precision": self.tp / self.n_pred if self.n_pred else None,
                "extra": self.fp / self.n_gt if self.n_gt else None,
                "diameter_error_median": float(np.median(self.diam_err)) if self.diam_err else None}


def bench_frames(frames: list[dict], seed: int, progress) -> dict:
    out: dict = {}
    t = Tally()
    for f in frames:
        t.add(locate_cells(f["image"]), f["wbc"])
    out["none"] = t.result()
    progress("none", out["none"])
    for shift in S.SHIFTS:
        for level, s in zip(LEVELS, shift.levels):
            t = Tally()
            for k, f in enumerate(frames):
                rng = np.random.default_rng([seed, k])
                t.add(locate_cells(shift.apply(f["image"], s, rng)), f["wbc"])
            out[f"{shift.name}|{level}|{s}"] = t.result()
            progress(f"{shift.name} {level} {s}", out[f"{shift.name}|{level}|{s}"])
    for level, s in zip(LEVELS, S.ZOOM_OUT):
        t = Tally()
        k = int(np.ceil(1 / s - 1e-9))
        for i, f in enumerate(frames):
            group = [frames[(i + j) % len(frames)] for j in range(k * k)]
            h, w = f["image"].shape[:2]
            field, boxes = S.zoom_out_mosaic([g["image"] for g in group], [g["wbc"] for g in group], s, (w, h))
            gt, ignore = split_boxes(boxes, w, h)
            t.add(locate_cells(field), gt, ignore)
        out[f"lower magnification|{level}|x{s}"] = t.result()
        progress(f"zoom out {s}", out[f"lower magnification|{level}|x{s}"])
    for level, s in zip(LEVELS, S.ZOOM_IN):
        t = Tally()
        for i, f in enumerate(frames):
            if not f["wbc"]:
                continue
            rng = random.Random(seed * 1000 + i)
            x0, y0, x1, y1 = rng.choice(f["wbc"])
            h, w = f["image"].shape[:2]
            field, boxes = S.zoom_in_window(f["image"], f["wbc"], s, ((x0 + x1) / 2, (y0 + y1) / 2))
            gt, ignore = split_boxes(boxes, w, h)
            t.add(locate_cells(field), gt, ignore)
        out[f"higher magnification|{level}|x{s}"] = t.result()
        progress(f"zoom in {s}", out[f"higher magnification|{level}|x{s}"])
    return out


def bench_timing(frames: list[dict], repeat: int) -> dict:
    locate_cells(frames[0]["image"])
    times = []
    for f in frames:
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            locate_cells(f["image"])
            best = min(best, (time.perf_counter() - t0) * 1000)
        times.append(best)
    return {"ms_mean": float(np.mean(times)), "ms_median": float(np.median(times)),
            "ms_p95": float(np.percentile(times, 95)), "ms_max": float(np.max(times)), "repeat": repeat}


def bench_field_timing(frames: list[dict], repeat: int, um_per_px: float | None) -> dict:
    """`locate_cells` time per 640x480 field at lower and higher magnification, the scale measured
    per field and (`um_per_px` / zoom, a camera profile's value) given: fastest of `repeat` per
    field, median over up to 40 fields."""
    fields = {}
    subset = frames[:40]
    h, w = subset[0]["image"].shape[:2]
    for s in S.ZOOM_OUT:
        k = int(np.ceil(1 / s - 1e-9))
        fields[f"lower magnification x{s}"] = (s, [S.zoom_out_mosaic(
            [subset[(i + j) % len(subset)]["image"] for j in range(k * k)],
            [subset[(i + j) % len(subset)]["wbc"] for j in range(k * k)], s, (w, h))[0] for i in range(len(subset))])
    for s in S.ZOOM_IN:
        fields[f"higher magnification x{s}"] = (s, [S.zoom_in_window(f["image"], f["wbc"], s, (w / 2, h / 2))[0]
                                                    for f in subset])
    out = {}
    for name, (s, images) in fields.items():
        row = {}
        for label, um in (("measured", None), ("given", None if um_per_px is None else um_per_px / s)):
            if label == "given" and um is None:
                continue
            times = []
            for img in images:
                best = float("inf")
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    locate_cells(img, um_per_px=um)
                    best = min(best, (time.perf_counter() - t0) * 1000)
                times.append(best)
            row[label] = {"ms_median": float(np.median(times)), "ms_p90": float(np.percentile(times, 90))}
        out[name] = row
    return out


def bench_scale(frames: list[dict]) -> dict:
    """Per-frame red-cell scale estimate against 7.5 um / the median of BCCD's own RBC boxes."""
    sides = [((b[2] - b[0]) + (b[3] - b[1])) / 2 for f in frames for b in f["rbc"]
             if b[0] > 1 and b[1] > 1 and b[2] < f["image"].shape[1] - 1 and b[3] < f["image"].shape[0] - 1]
    ref = 7.5 / float(np.median(sides))
    ratios = []
    for f in frames:
        est = estimate_um_per_px([f["image"]])
        ratios.append(est / ref if est else float("nan"))
    r = np.array(ratios)
    ok = r[np.isfinite(r)]
    return {"rbc_box_median_px": float(np.median(sides)), "reference_um_per_px": ref,
            "estimate_over_reference_median": float(np.median(ok)), "p10": float(np.percentile(ok, 10)),
            "p90": float(np.percentile(ok, 90)), "within_15pct": float(np.mean(np.abs(ok - 1) <= 0.15)),
            "failed": int((~np.isfinite(r)).sum())}


def bench_scale_by_magnification(frames: list[dict]) -> dict:
    """The scale `locate_frame` uses against each frame's own red-cell boxes (7.5 um / their median
    side), at BCCD's magnification and at lower (the frame shrunk and tiled with itself) and higher
    (a window around a white cell) ones: ratio used / true um per pixel, and which ruler was used."""
    out = {}
    for s in (1.0, *S.ZOOM_OUT[1:], *S.ZOOM_IN[1:]):
        ratios, sources = [], {}
        for i, f in enumerate(frames):
            h, w = f["image"].shape[:2]
            sides = [((b[2] - b[0]) + (b[3] - b[1])) / 2 for b in f["rbc"]
                     if b[0] > 1 and b[1] > 1 and b[2] < w - 1 and b[3] < h - 1]
            if len(sides) < 3:
                continue
            if s == 1.0:
                img = f["image"]
            elif s < 1.0:
                img = S.zoom_out_mosaic([f["image"]], [f["wbc"]], s, (w, h))[0]
            else:
                x0, y0, x1, y1 = random.Random(i).choice(f["wbc"] or [(w // 2 - 20, h // 2 - 20, w // 2 + 20, h // 2 + 20)])
                img = S.zoom_in_window(f["image"], f["wbc"], s, ((x0 + x1) / 2, (y0 + y1) / 2))[0]
            found = locate_frame(img)
            ratios.append(found.um_per_px / (7.5 / (float(np.median(sides)) * s)))
            sources[found.scale_source] = sources.get(found.scale_source, 0) + 1
        r = np.array(ratios)
        out[f"x{s}"] = {"frames": len(r), "median": float(np.median(r)), "p10": float(np.percentile(r, 10)),
                        "p90": float(np.percentile(r, 90)), "within_15pct": float(np.mean(np.abs(r - 1) <= 0.15)),
                        "sources": sources}
    return out


def load_pbc(root: Path, per_class: int, seed: int) -> list[np.ndarray]:
    rng = random.Random(seed)
    out = []
    for c in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(c.glob("*.jpg"))
        out += [read_image(p) for p in rng.sample(files, min(per_class, len(files)))]
    return out


def bench_crops(crops: list[np.ndarray], seed: int, spec: PreprocessSpec, progress) -> dict:
    base = [measure_cell_fraction(c) for c in crops]
    found = [b for b in base if b is not None]
    out = {"none": {"n": len(crops), "found": len(found) / len(crops),
                    "fraction_median": float(np.median(found)) if found else None,
                    "fraction_over_spec": float(np.median(found)) / spec.cell_fraction if found else None}}
    progress("crops none", out["none"])

    def run(key, make, factor=1.0):
        hits, errs = 0, []
        for k, (c, b) in enumerate(zip(crops, base)):
            f = measure_cell_fraction(make(c, np.random.default_rng([seed, k])))
            if f is not None:
                hits += 1
                if b is not None:
                    errs.append(abs(f / (b * factor) - 1))
        out[key] = {"n": len(crops), "found": hits / len(crops),
                    "fraction_error_median": float(np.median(errs)) if errs else None,
                    "within_10pct": float(np.mean(np.array(errs) <= 0.10)) if errs else None}
        progress(key, out[key])

    for shift in S.SHIFTS:
        for level, s in zip(LEVELS, shift.levels):
            run(f"{shift.name}|{level}|{s}", lambda c, rng, s=s, shift=shift: shift.apply(c, s, rng))
    for level, s in zip(LEVELS, S.CROP_TIGHTER):
        run(f"tighter crop|{level}|x{s}", lambda c, rng, s=s: S.tighter_crop(c, s), s)
    for level, s in zip(LEVELS, S.CROP_LOOSER):
        run(f"looser crop|{level}|x{1 / s:.2f}", lambda c, rng, s=s: S.looser_crop(c, s), 1 / s)
    return out


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def table(results: list[dict], names: list[str]) -> str:
    lines = []
    fr = [r["frames"] for r in results]
    head = "| shift | level | " + " | ".join(f"recall {n} | extra {n} | diam. err {n}" for n in names) + " |"
    lines += [("BCCD frames (IoU >= 0.5; extra = boxes matching no annotated cell / annotated cells; "
               "diam. err = median |located diameter / annotated box side - 1|)"), "", head,
              "|" + "---|" * (2 + 3 * len(names))]
    for key in fr[0]:
        shift, level, s = (key.split("|") + ["", ""])[:3] if "|" in key else ("none", "", "")
        cells = []
        for f in fr:
            v = f.get(key)
            cells += ["-"] * 3 if v is None else [_pct(v["recall"]), _pct(v["extra"]), _pct(v["diameter_error_median"])]
        lines.append(f"| {shift} {s} | {level} | " + " | ".join(cells) + " |")
    if all("crops" in r for r in results):
        cr = [r["crops"] for r in results]
        lines += ["", ("PBC crops (found = a cell near the centre; fraction err. = median |fraction / expected - 1|, "
                       "expected = the unshifted crop's fraction x the crop change; within 10 % = share of crops)"), "",
                  "| shift | level | " + " | ".join(f"found {n} | fraction err. {n} | within 10 % {n}" for n in names)
                  + " |", "|" + "---|" * (2 + 3 * len(names))]
        for key in cr[0]:
            shift, level, s = (key.split("|") + ["", ""])[:3] if "|" in key else ("none", "", "")
            cells = []
            for c in cr:
                v = c.get(key)
                if v is None:
                    cells += ["-"] * 3
                elif key == "none":
                    cells += [_pct(v["found"]), f"median fraction {v['fraction_median']:.3f}", "-"]
                else:
                    cells += [_pct(v["found"]), _pct(v["fraction_error_median"]), _pct(v["within_10pct"])]
            lines.append(f"| {shift} {s} | {level} | " + " | ".join(cells) + " |")
    for n, r in zip(names, results):
        if "timing" in r:
            t = r["timing"]
            lines.append(f"\n{n}: locate_cells on unshifted frames, fastest of {t['repeat']}: mean {t['ms_mean']:.2f} ms, "
                         f"median {t['ms_median']:.2f}, p95 {t['ms_p95']:.2f}, max {t['ms_max']:.2f} ms per frame")
        for field, row in r.get("timing_fields", {}).items():
            lines.append(f"{n}: {field}: median " + ", ".join(
                f"{v['ms_median']:.2f} ms (p90 {v['ms_p90']:.2f}) with the scale {k}" for k, v in row.items()))
        if "scale" in r:
            s = r["scale"]
            lines.append(f"{n}: per-frame scale / (7.5 um / median RBC box {s['rbc_box_median_px']:.0f} px = "
                         f"{s['reference_um_per_px']:.4f} um/px): median {s['estimate_over_reference_median']:.3f} "
                         f"(p10-p90 {s['p10']:.3f}-{s['p90']:.3f}), within 15 %: {100 * s['within_15pct']:.0f} % "
                         f"of frames, failed on {s['failed']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("data", type=Path, nargs="?", default=Path("../shared/data"),
                   help="folder with bccd/ (VOC layout) and pbc/ (class folders)")
    p.add_argument("--subset", default="all", choices=("all", "trainval", "test"), help="BCCD list to use")
    p.add_argument("--limit", type=int, default=120, help="at most this many BCCD frames (seeded sample; 0 = all)")
    p.add_argument("--per-class", type=int, default=40, help="PBC crops per class (0 = skip crops)")
    p.add_argument("--repeat", type=int, default=3, help="timing: fastest of this many runs per frame")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write the figures here")
    p.add_argument("--compare", type=Path, nargs="+", metavar="JSON",
                   help="print the table of earlier --json files side by side and exit")
    p.add_argument("--names", nargs="+", help="column names for --compare (default: the files' stems)")
    p.add_argument("--scale-only", action="store_true",
                   help="only compare the scale used with each frame's red-cell boxes, at several magnifications")
    p.add_argument("--timing-only", action="store_true",
                   help="only time locate_cells on unshifted frames and on lower/higher-magnification fields")
    args = p.parse_args(argv)
    if args.compare:
        results = [json.loads(f.read_text()) for f in args.compare]
        print(table(results, args.names or [f.stem for f in args.compare]))
        return 0

    def progress(key, r):
        print(f"  {key}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()),
              file=sys.stderr, flush=True)

    frames = load_bccd(args.data / "bccd", args.subset, args.limit or None, args.seed)
    print(f"{len(frames)} BCCD frames ({args.subset}), {sum(len(f['wbc']) for f in frames)} WBC boxes",
          file=sys.stderr)
    results = {"subset": args.subset, "n_frames": len(frames), "seed": args.seed}
    if args.scale_only:
        print(json.dumps(bench_scale_by_magnification(frames), indent=1))
        return 0
    results["timing"] = bench_timing(frames, args.repeat)
    um = estimate_um_per_px([f["image"] for f in frames[:20]])
    results["timing_fields"] = bench_field_timing(frames, args.repeat, um)
    if args.timing_only:
        print(json.dumps({k: results[k] for k in ("timing", "timing_fields")}, indent=1))
        return 0
    results["scale"] = bench_scale(frames)
    results["frames"] = bench_frames(frames, args.seed, progress)
    if args.per_class:
        crops = load_pbc(args.data / "pbc", args.per_class, args.seed)
        results["crops"] = bench_crops(crops, args.seed, PreprocessSpec.load(REPO / "wbcedge" / "default_bundle"), progress)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(table([results], ["now"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
