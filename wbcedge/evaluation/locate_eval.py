"""How well `locate_cells` finds the white cells annotated in VOC frames (e.g. BCCD),
and how large the located cell is in single-cell training crops (e.g. PBC).

    python -m wbcedge.evaluation.locate_eval ../shared/data/bccd
    python -m wbcedge.evaluation.locate_eval ../shared/data/bccd --fractions ../shared/data/pbc

The first prints recall, precision, extra boxes and time per frame for the
dataset's own trainval and test lists (when it has `ImageSets/Main/`) and for all
frames. A prediction matches a ground-truth box when their IoU reaches the
threshold; each box matches at most once (greedy, highest IoU first). The second
adds the located cell's diameter / crop side in class-folder crops, per class.
OpenCV and NumPy only.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from wbcedge.device.locate import LocatorConfig, estimate_um_per_px, locate_cells, measure_cell_fraction
from wbcedge.errors import InputDataError, InputFileMissingError
from wbcedge.preprocess import IMAGE_SUFFIXES, read_image

Box = tuple[int, int, int, int]


def read_voc_boxes(xml_path: Path | str, name: str = "WBC") -> list[Box]:
    """The (x0, y0, x1, y1) boxes of objects called `name` in a VOC annotation file.

    VOC writes xmin..xmax as pixel coordinates; they are returned as they are, and
    compared with `CellBox.box` (x1/y1 exclusive) as they are: the one-pixel
    convention difference is far below what IoU >= 0.5 can notice.
    """
    path = Path(xml_path)
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise InputDataError(f"{path}: not a readable VOC annotation ({exc})") from exc
    boxes: list[Box] = []
    for obj in root.iter("object"):
        label = (obj.findtext("name") or "").strip()
        if label != name:
            continue
        bnd = obj.find("bndbox")
        if bnd is None:
            raise InputDataError(f"{path}: object '{label}' has no <bndbox>")
        try:
            x0, y0, x1, y1 = (int(round(float(bnd.findtext(k)))) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError) as exc:
            raise InputDataError(f"{path}: object '{label}' has a malformed <bndbox>") from exc
        boxes.append((x0, y0, x1, y1))
    return boxes


def yolo_class_ids(labels_dir: Path | str, name: str) -> set[int] | None:
    """The YOLO class ids called `name` (case-insensitive) in a `classes.txt` or `data.yaml` /
    `dataset.yaml` beside the labels (or one folder up); None when no names file is found
    (then every box counts)."""
    labels_dir = Path(labels_dir)
    for folder in (labels_dir, labels_dir.parent):
        classes = folder / "classes.txt"
        if classes.is_file():
            names = [ln.strip() for ln in classes.read_text().splitlines() if ln.strip()]
            return {i for i, n in enumerate(names) if n.lower() == name.lower()}
        for yaml_name in ("data.yaml", "dataset.yaml"):
            if (folder / yaml_name).is_file():
                return _yaml_class_ids(folder / yaml_name, name)
    return None


def _yaml_class_ids(path: Path, name: str) -> set[int]:
    """Class ids from an Ultralytics data.yaml `names:` entry (a list, inline or one per line, or
    an id: name mapping), read without a YAML library."""
    import re

    text = path.read_text()
    m = re.search(r"^names:\s*\[(.*?)\]", text, re.MULTILINE | re.DOTALL)
    if m:
        names = [n.strip().strip("'\"") for n in m.group(1).split(",")]
        return {i for i, n in enumerate(names) if n.lower() == name.lower()}
    ids, i, in_names = set(), 0, False
    for line in text.splitlines():
        if re.match(r"^names:\s*$", line):
            in_names = True
            continue
        if in_names:
            item = re.match(r"^\s+(?:-\s*(.+)|(\d+)\s*:\s*(.+))$", line)
            if not item:
                break
            key, value = (i, item.group(1)) if item.group(1) is not None else (int(item.group(2)), item.group(3))
            if value.strip().strip("'\"").lower() == name.lower():
                ids.add(key)
            i += 1
    return ids


def read_yolo_boxes(txt_path: Path | str, width: int, height: int, class_ids: set[int] | None = None) -> list[Box]:
    """The (x0, y0, x1, y1) pixel boxes of a YOLO label file (`class cx cy w h`, normalised to 0..1).

    `class_ids` keeps only those classes (None: every box). Blank lines are skipped; a line
    that is not five numbers raises InputDataError naming the file and line.
    """
    path = Path(txt_path)
    boxes: list[Box] = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            cls, cx, cy, bw, bh = int(float(parts[0])), *(float(v) for v in parts[1:5])
            if len(parts) < 5:
                raise ValueError
        except (ValueError, TypeError):
            raise InputDataError(f"{path}:{n}: not a YOLO box line ('class cx cy w h', normalised to 0..1): "
                                 f"{line!r}; fix or remove that line") from None
        if class_ids is not None and cls not in class_ids:
            continue
        boxes.append((int(round((cx - bw / 2) * width)), int(round((cy - bh / 2) * height)),
                      int(round((cx + bw / 2) * width)), int(round((cy + bh / 2) * height))))
    return boxes


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes; 0.0 when either is empty."""
    ix = min(a[2], b[2]) - max(a[0], b[0])
    iy = min(a[3], b[3]) - max(a[1], b[1])
    if ix <= 0 or iy <= 0:
        return 0.0
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_boxes(pred: list[Box], gt: list[Box], iou_threshold: float = 0.5) -> list[tuple[int, int, float]]:
    """One-to-one matches (pred index, gt index, IoU) at or above the threshold, best IoU first."""
    pairs = sorted(((iou(p, g), i, j) for i, p in enumerate(pred) for j, g in enumerate(gt)), reverse=True)
    used_p: set[int] = set()
    used_g: set[int] = set()
    matches = []
    for v, i, j in pairs:
        if v < iou_threshold:
            break
        if i in used_p or j in used_g:
            continue
        used_p.add(i)
        used_g.add(j)
        matches.append((i, j, v))
    return matches


def evaluate_localization(frames_dir: Path | str, annotations_dir: Path | str, iou_threshold: float = 0.5,
                          config: LocatorConfig | None = None, names: list[str] | None = None,
                          label: str = "WBC", um_per_px: float | None = None, repeat: int = 1) -> dict:
    """Run `locate_cells` on every frame that has an annotation and score it against the `label` boxes.

    Annotations are VOC `.xml` or YOLO `.txt` files named like the frames. For YOLO the
    class called `label` is looked up in a `classes.txt` or `data.yaml` beside the labels;
    without one, every YOLO box counts as a white cell.

    `names` limits the run to these file stems (e.g. a VOC ImageSets list); `repeat`
    times each frame that many times and keeps the fastest (steadier on a busy machine). Returns
    recall, precision, extra_box_rate (false positives / ground-truth boxes), counts,
    mean_iou of the matches, mean/median/max ms per frame (locate_cells only, not
    decoding), `diameter_to_gt` (located diameter / ground-truth box's longer side,
    median and quartiles over the matches) and `misses`: one entry per frame with a
    missed or an extra box.
    """
    frames_dir, annotations_dir = Path(frames_dir), Path(annotations_dir)
    if not frames_dir.is_dir():
        raise InputFileMissingError(f"{frames_dir}: no such frames folder")
    if not annotations_dir.is_dir():
        raise InputFileMissingError(f"{annotations_dir}: no such annotations folder (VOC .xml or YOLO .txt files "
                                    "expected)")
    frames = {p.stem: p for p in sorted(frames_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    labels = {p.stem: p for p in annotations_dir.glob("*.xml") if p.stem in frames}
    yolo = {p.stem: p for p in annotations_dir.glob("*.txt") if p.stem in frames and p.stem not in labels}
    labels.update(yolo)
    yolo_ids = yolo_class_ids(annotations_dir, label) if yolo else None
    stems = sorted(labels)
    if names is not None:
        wanted = set(names)
        stems = [s for s in stems if s in wanted]
    if not stems:
        raise InputDataError(f"no frame in {frames_dir} has an annotation in {annotations_dir}"
                         + (" among the names asked for" if names is not None else ""))
    n_gt = n_pred = tp = 0
    ratios: list[float] = []
    ious: list[float] = []
    times: list[float] = []
    misses: list[dict] = []
    for stem in stems:
        frame = read_image(frames[stem])
        if labels[stem].suffix == ".txt":
            gt = read_yolo_boxes(labels[stem], frame.shape[1], frame.shape[0], yolo_ids)
        else:
            gt = read_voc_boxes(labels[stem], label)
        if not times:
            locate_cells(frame, config, um_per_px=um_per_px)   # warm-up: first call pays OpenCV's set-up
        best = float("inf")
        for _ in range(max(1, repeat)):
            t0 = time.perf_counter()
            cells = locate_cells(frame, config, um_per_px=um_per_px)
            best = min(best, (time.perf_counter() - t0) * 1000.0)
        times.append(best)
        pred = [c.box for c in cells]
        matches = match_boxes(pred, gt, iou_threshold)
        n_gt += len(gt)
        n_pred += len(pred)
        tp += len(matches)
        ious.extend(v for _, _, v in matches)
        for i, j, _ in matches:
            g = gt[j]
            ratios.append(cells[i].diameter / max(1, g[2] - g[0], g[3] - g[1]))
        hit_p = {i for i, _, _ in matches}
        hit_g = {j for _, j, _ in matches}
        missed = [gt[j] for j in range(len(gt)) if j not in hit_g]
        extra = [pred[i] for i in range(len(pred)) if i not in hit_p]
        if missed or extra:
            best = [max((iou(g, p) for p in pred), default=0.0) for g in missed]
            misses.append({"frame": frames[stem].name, "missed": missed, "best_iou": [round(b, 3) for b in best],
                           "extra": extra, "n_gt": len(gt), "n_pred": len(pred)})
    fp = n_pred - tp
    return {
        "n_frames": len(stems),
        "n_gt": n_gt,
        "n_pred": n_pred,
        "true_positives": tp,
        "false_positives": fp,
        "recall": tp / n_gt if n_gt else float("nan"),
        "precision": tp / n_pred if n_pred else float("nan"),
        "extra_box_rate": fp / n_gt if n_gt else float("nan"),
        "mean_iou": sum(ious) / len(ious) if ious else float("nan"),
        "iou_threshold": iou_threshold,
        "ms_per_frame": sum(times) / len(times),
        "ms_per_frame_median": _quantile(times, 0.5),
        "ms_per_frame_max": max(times),
        "diameter_to_gt": {"median": _quantile(ratios, 0.5), "q25": _quantile(ratios, 0.25),
                           "q75": _quantile(ratios, 0.75)},
        "misses": misses,
    }


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def measure_fractions(crops_root: Path | str, per_class: int = 300, seed: int = 0,
                      config: LocatorConfig | None = None, um_per_px: float | str | None = "auto") -> dict:
    """`measure_cell_fraction` over up to `per_class` crops of every class folder under `crops_root`.

    `um_per_px="auto"` measures the scale once from the red cells of 100 crops drawn
    from all classes (a crop shows few red cells, so a per-crop estimate is noisier;
    one microscope has one scale), a number uses that scale, None estimates per crop.
    Returns per class and over all crops: n, n_none (no cell found near the centre),
    median, q25, q75, p5, p95 of diameter / crop side.
    """
    root = Path(crops_root)
    classes = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    files = {c.name: sorted(p for p in c.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) for c in classes}
    files = {k: v for k, v in files.items() if v}
    if not files:
        raise InputFileMissingError(f"{root}: expected one folder of single-cell crops per class")
    rng = random.Random(seed)
    if um_per_px == "auto":
        pool = [p for v in files.values() for p in v]
        um_per_px = estimate_um_per_px([read_image(p) for p in rng.sample(pool, min(100, len(pool)))], config)
    result: dict = {"um_per_px": um_per_px, "per_class": {}}
    everything: list[float] = []
    for name, paths in files.items():
        chosen = rng.sample(paths, min(per_class, len(paths)))
        values, none = [], []
        for p in chosen:
            f = measure_cell_fraction(read_image(p), config, um_per_px)
            if f is None:
                none.append(p.name)
            else:
                values.append(f)
        everything.extend(values)
        result["per_class"][name] = _summary(values) | {"n_none": len(none), "none": none[:20]}
    result["all"] = _summary(everything)
    return result


def _summary(values: list[float]) -> dict:
    return {"n": len(values), "median": _quantile(values, 0.5), "q25": _quantile(values, 0.25),
            "q75": _quantile(values, 0.75), "p5": _quantile(values, 0.05), "p95": _quantile(values, 0.95)}


def _read_list(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m wbcedge.evaluation.locate_eval",
        description="Score the white-cell locator against VOC boxes (BCCD layout: JPEGImages/, Annotations/, "
                    "ImageSets/Main/).")
    parser.add_argument("root", type=Path, help="dataset folder in VOC layout, e.g. ../shared/data/bccd, or "
                                                "wbcedge/samples/frames")
    parser.add_argument("--iou", type=float, default=0.5, help="IoU a box needs to count as found (default 0.5)")
    parser.add_argument("--label", default="WBC", help="VOC object name of white cells (default WBC)")
    parser.add_argument("--um-per-px", type=float, default=None,
                        help="micrometres per pixel, when known (default: estimated from red cells)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="time each frame this many times and keep the fastest (default 1)")
    parser.add_argument("--misses", action="store_true", help="list every frame with a missed or extra box")
    parser.add_argument("--fractions", type=Path, default=None, metavar="CROPS",
                        help="also measure cell diameter / crop side in a folder of class folders of single-cell "
                             "crops, e.g. ../shared/data/pbc")
    parser.add_argument("--per-class", type=int, default=300, help="crops per class for --fractions (default 300)")
    parser.add_argument("--json", type=Path, default=None, help="also write all figures as JSON to this file")
    args = parser.parse_args(argv)

    frames_dir, ann_dir = args.root / "JPEGImages", args.root / "Annotations"
    if not frames_dir.is_dir():            # the samples layout: frames here, annotations/ beside them
        frames_dir, ann_dir = args.root, args.root / "annotations"
    if not ann_dir.is_dir():
        print(f"error: {args.root} needs JPEGImages/ and Annotations/ (VOC layout), or frames with an "
              f"annotations/ folder of VOC .xml files (as in wbcedge/samples/frames)", file=sys.stderr)
        return 2
    subsets: dict[str, list[str] | None] = {}
    sets_dir = args.root / "ImageSets" / "Main"
    for name in ("trainval", "test"):
        if (sets_dir / f"{name}.txt").is_file():
            subsets[name] = _read_list(sets_dir / f"{name}.txt")
    subsets["all"] = None

    results: dict = {}
    print(f"{'subset':<9} {'frames':>6} {'gt':>5} {'pred':>5} {'recall':>7} {'precision':>9} "
          f"{'extra':>6} {'meanIoU':>7} {'ms/frame':>8} {'median':>7} {'max ms':>7}")
    for name, names in subsets.items():
        r = evaluate_localization(frames_dir, ann_dir, args.iou, names=names, label=args.label,
                                  um_per_px=args.um_per_px, repeat=args.repeat)
        results[name] = r
        print(f"{name:<9} {r['n_frames']:>6} {r['n_gt']:>5} {r['n_pred']:>5} {r['recall']:>7.3f} "
              f"{r['precision']:>9.3f} {r['extra_box_rate']:>6.3f} {r['mean_iou']:>7.3f} "
              f"{r['ms_per_frame']:>8.2f} {r['ms_per_frame_median']:>7.2f} {r['ms_per_frame_max']:>7.2f}")
    print(f"(IoU >= {args.iou}; extra = false positives / ground-truth boxes; ms = locate_cells only, "
          f"{'fastest of ' + str(args.repeat) + ' runs, ' if args.repeat > 1 else ''}"
          f"{'um_per_px=' + str(args.um_per_px) if args.um_per_px else 'scale measured per frame'})")
    d = results["all"]["diameter_to_gt"]
    print(f"located diameter / ground-truth box's longer side: median {d['median']:.3f} "
          f"(IQR {d['q25']:.3f}-{d['q75']:.3f})")
    if args.misses:
        for m in results["all"]["misses"]:
            print(f"  {m['frame']}: missed {m['missed']} best IoU {m['best_iou']} extra {m['extra']}")
    if args.fractions is not None:
        fr = measure_fractions(args.fractions, per_class=args.per_class)
        results["fractions"] = fr
        print(f"\ncell diameter / crop side in {args.fractions} (um_per_px {fr['um_per_px']:.4f}, measured once "
              f"from red cells)")
        print(f"{'class':<12} {'n':>4} {'none':>4} {'median':>7} {'q25':>6} {'q75':>6} {'p5':>6} {'p95':>6}")
        rows = list(fr["per_class"].items()) + [("all", fr["all"] | {"n_none": sum(
            v["n_none"] for v in fr["per_class"].values())})]
        for name, v in rows:
            print(f"{name:<12} {v['n']:>4} {v['n_none']:>4} {v['median']:>7.3f} {v['q25']:>6.3f} "
                  f"{v['q75']:>6.3f} {v['p5']:>6.3f} {v['p95']:>6.3f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
