"""Measure the domain-shift check of a bundle: docs/shift.md's figures.

    python benchmarks/shift_bench.py --bundle wbcedge/default_bundle --data training/pbc_split.csv \
        --bccd ../shared/data/bccd --run training/runs/default-edge --json docs/shift.json

- Methods (per cell, PBC test crops vs BCCD's annotated white cells, AUROC): the bundle's
  Mahalanobis score, kNN distance on normalised features (k=10, 4,000 training crops), the
  energy score (logits from the features and the last Dense layer of the run's model), and
  max-softmax (1 - calibrated top-1 probability).
- Sessions: 100 sessions of 100 random PBC test crops (the device's scoring code on each crop);
  BCCD sessions: every frame through the runner's pipeline (locate, crop, classify, score),
  then 100 sessions of frames in random order until at least 50 cells.
- Synthetic shifts of the PBC test crops (HED stain, background tint, scale): accuracy and
  alarm rate over 100 sessions of 100 crops each.
- Cost: the scoring added per cell (per-cell score + session update), median of many runs.
Features are computed with the bundle's default model file (the one `wbcedge run` uses).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np

SESSIONS, SESSION_CELLS, BCCD_MIN_CELLS = 100, 100, 50


def auroc(inlier: np.ndarray, outlier: np.ndarray) -> float:
    """P(outlier score > inlier score), ties counted half (Mann-Whitney)."""
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([inlier, outlier]))
    n1, n2 = len(inlier), len(outlier)
    return float((ranks[n1:].sum() - n2 * (n2 + 1) / 2) / (n1 * n2))


def hed_shift(crop_bgr: np.ndarray, h: float, e: float, d: float = 1.0) -> np.ndarray:
    """Scale the haematoxylin, eosin and DAB channels of the HED decomposition (skimage).

    Only the change is added to the crop: an rgb2hed/hed2rgb round trip alone moves PBC's colours
    by about 9 levels, which would be a shift of its own.
    """
    from skimage.color import hed2rgb, rgb2hed

    rgb = cv2.cvtColor(crop_bgr, cv2.COLOR_BGR2RGB)
    hed = rgb2hed(rgb)
    delta = hed2rgb(hed * np.array([h, e, d])) - hed2rgb(hed)
    out = np.clip(rgb + 255 * delta, 0, 255).round().astype(np.uint8)
    return cv2.cvtColor(out, cv2.COLOR_RGB2BGR)


def tint(crop_bgr: np.ndarray, bgr_shift: tuple[int, int, int]) -> np.ndarray:
    """Shift the colour of the bright background (not the stained cells) by bgr_shift."""
    grey = cv2.cvtColor(crop_bgr, cv2.COLOR_BGR2GRAY).astype(np.float32)
    weight = np.clip((grey - 150) / 60, 0, 1)[..., None]
    out = crop_bgr.astype(np.float32) + weight * np.array(bgr_shift, np.float32)
    return np.clip(out, 0, 255).round().astype(np.uint8)


def rescale(crop_bgr: np.ndarray, factor: float) -> np.ndarray:
    """Magnification change: the cell `factor` times larger (crop the centre) or smaller (pad by reflection)."""
    h, w = crop_bgr.shape[:2]
    big = cv2.resize(crop_bgr, (round(w * factor), round(h * factor)), interpolation=cv2.INTER_AREA)
    if factor >= 1:
        y0, x0 = (big.shape[0] - h) // 2, (big.shape[1] - w) // 2
        return big[y0:y0 + h, x0:x0 + w]
    top, left = (h - big.shape[0]) // 2, (w - big.shape[1]) // 2
    return cv2.copyMakeBorder(big, top, h - big.shape[0] - top, left, w - big.shape[1] - left, cv2.BORDER_REFLECT)


SHIFTS = {
    "stain strong (HED: H x1.6, E x0.5)": lambda c: hed_shift(c, 1.6, 0.5),
    "stain medium (HED: H x1.2, E x0.8)": lambda c: hed_shift(c, 1.2, 0.8),
    "stain mild (HED: H x1.05, E x0.95)": lambda c: hed_shift(c, 1.05, 0.95),
    "background tint strong (B+40, G-10, R-40)": lambda c: tint(c, (40, -10, -40)),
    "background tint mild (B+8, R-8)": lambda c: tint(c, (8, 0, -8)),
    "scale x0.7 (cell smaller)": lambda c: rescale(c, 0.7),
    "scale x1.4 (cell larger)": lambda c: rescale(c, 1.4),
    "scale x1.05 (mild)": lambda c: rescale(c, 1.05),
}


def session_alarms(scores: np.ndarray, reference, sessions: int, cells: int, seed: int) -> list[bool]:
    from wbcedge.device.shift import ShiftMonitor

    rng = np.random.default_rng(seed)
    alarms = []
    for _ in range(sessions):
        m = ShiftMonitor(reference)
        m.add(scores[rng.choice(len(scores), size=min(cells, len(scores)), replace=False)])
        alarms.append(m.alarm)
    return alarms


def bccd_cells(frames_dir: Path, annotations: Path, spec) -> np.ndarray:
    """Model inputs of every annotated WBC box of every BCCD frame, cut as the runner cuts them."""
    from wbcedge.device.locate import estimate_um_per_px
    from wbcedge.evaluation.locate_eval import read_voc_boxes
    from wbcedge.preprocess import crop_around_cell, read_image, to_model_input

    inputs = []
    for xml in sorted(annotations.glob("*.xml")):
        path = frames_dir / (xml.stem + ".jpg")
        if not path.is_file():
            continue
        image = read_image(path)
        scale = estimate_um_per_px([image])
        inputs += [to_model_input(crop_around_cell(image, b, spec, scale), spec) for b in read_voc_boxes(xml)]
    return np.stack(inputs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", type=Path, default=Path("wbcedge/default_bundle"))
    ap.add_argument("--data", type=Path, default=Path("training/pbc_split.csv"))
    ap.add_argument("--bccd", type=Path, default=Path("../shared/data/bccd"))
    ap.add_argument("--run", type=Path, default=Path("training/runs/default-edge"), help="for the energy score's last layer")
    ap.add_argument("--train-images", type=int, default=4000)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backend", help="tflite or onnx (default: the bundle's default file)")
    ap.add_argument("--precision", help="int8 or fp32")
    ap.add_argument("--one-output-file", type=Path, help="the same model without the feature output (e.g. the "
                    "previous built-in int8 TFLite file): time inference with and without the second output")
    ap.add_argument("--only-cost", action="store_true", help="measure the cost per cell only")
    args = ap.parse_args()

    from wbcedge.bundle import load_bundle
    from wbcedge.data import read_manifest
    from wbcedge.device.confidence import apply_temperature
    from wbcedge.device.pipeline import CellPipeline
    from wbcedge.device.shift import ShiftMonitor, ShiftReference
    from wbcedge.labels import class_indices
    from wbcedge.preprocess import load_inputs, read_image, to_model_input
    from wbcedge.train.shift_reference import sample_per_class

    bundle = load_bundle(args.bundle)
    spec = bundle.spec
    pipeline = CellPipeline(bundle, args.backend, args.precision)
    ref: ShiftReference = pipeline.shift_reference
    if ref is None:
        raise SystemExit(f"{args.bundle} has no reference statistics: re-export it")
    clf = pipeline.classifier
    records = read_manifest(args.data)
    test = [r for r in records if r.split == "test"]
    train = sample_per_class([r for r in records if r.split == "train"], args.train_images, args.seed)
    y_test = class_indices(r.label for r in test)
    out: dict = {"bundle": str(args.bundle), "model_file": pipeline.model_entry["file"],
                 "temperature": bundle.temperature, "cell_threshold": ref.cell_threshold,
                 "session_threshold_100": ref.session_threshold(100), "min_cells": ref.min_cells}

    if args.only_cost:
        x_test = load_inputs([r.path for r in test[:64]], spec)
        _, f_test = clf.predict_many_with_features(x_test)
        out["cost_ms_per_cell"] = cost_per_cell(ref, f_test, x_test, clf, args.one_output_file)
        print("cost ms/cell:", out["cost_ms_per_cell"])
        return _write(args.json, out)

    t0 = time.time()
    test_raw = [read_image(r.path) for r in test]
    x_test = np.stack([to_model_input(c, spec) for c in test_raw])
    p_test, f_test = clf.predict_many_with_features(x_test)
    p_test = apply_temperature(p_test, bundle.temperature)
    _, f_train = clf.predict_many_with_features(load_inputs([r.path for r in train], spec))
    x_bccd = bccd_cells(args.bccd / "JPEGImages", args.bccd / "Annotations", spec)
    p_bccd, f_bccd = clf.predict_many_with_features(x_bccd)
    p_bccd = apply_temperature(p_bccd, bundle.temperature)
    print(f"features: {len(test)} PBC test, {len(train)} train, {len(x_bccd)} BCCD cells ({time.time() - t0:.0f} s)")

    # ---- methods
    def knn(f, k=10):
        a = f_train / np.linalg.norm(f_train, axis=1, keepdims=True).clip(1e-12)
        b = f / np.linalg.norm(f, axis=1, keepdims=True).clip(1e-12)
        sims = b @ a.T
        return 1 - np.sort(sims, axis=1)[:, -k]

    methods = {"chosen: max(feature, colour) Mahalanobis": lambda f, x: ref.cell_scores(f, x),
               "feature Mahalanobis (shared covariance)": lambda f, x: ref.parts(f, x)[:, 0],
               "colour Mahalanobis (augmented training colours)": lambda f, x: ref.parts(f, x)[:, 1],
               "knn (k=10, cosine, features)": lambda f, x: knn(f), "max-softmax (1 - top-1)": None}
    if args.run and (args.run / "model.keras").is_file():
        import keras  # the energy score needs the last layer's weights: training box only

        import wbcedge.train.models  # noqa: F401
        w, b = keras.saving.load_model(args.run / "model.keras").layers[-1].get_weights()
        methods["energy (-logsumexp logits)"] = lambda f, x: -np.log(np.exp(f @ w + b).sum(1))
    out["auroc"] = {}
    for name, fn in methods.items():
        s_in = 1 - p_test.max(1) if fn is None else fn(f_test, x_test)
        s_out = 1 - p_bccd.max(1) if fn is None else fn(f_bccd, x_bccd)
        out["auroc"][name] = auroc(s_in, s_out)
        print(f"AUROC {name}: {out['auroc'][name]:.4f}")

    # ---- PBC sessions
    s_test = ref.cell_scores(f_test, x_test)
    alarms = session_alarms(s_test, ref, SESSIONS, SESSION_CELLS, args.seed)
    out["pbc_sessions"] = {"sessions": SESSIONS, "cells": SESSION_CELLS, "alarms": int(sum(alarms)),
                           "cells_over_cell_threshold": float((s_test > ref.cell_threshold).mean()),
                           "accuracy": float((p_test.argmax(1) == y_test).mean())}
    s_bccd = ref.cell_scores(f_bccd, x_bccd)
    out["bccd_cells"] = {"cells": len(s_bccd), "over_cell_threshold": float((s_bccd > ref.cell_threshold).mean())}
    print("PBC sessions:", out["pbc_sessions"], "BCCD cells:", out["bccd_cells"])

    # ---- BCCD sessions through the runner's pipeline
    frames = sorted((args.bccd / "JPEGImages").glob("*.jpg"))
    per_frame = []
    for path in frames:
        pipeline.um_per_px = None
        per_frame.append([c.ood for c in pipeline.analyse(read_image(path))])
    rng = np.random.default_rng(args.seed)
    bccd_alarms, sizes, scores = [], [], []
    for _ in range(SESSIONS):
        m = ShiftMonitor(ref)
        for i in rng.permutation(len(frames)):
            m.add(per_frame[i]) if per_frame[i] else None
            if m.cells >= BCCD_MIN_CELLS:
                break
        bccd_alarms.append(m.alarm)
        sizes.append(m.cells)
        scores.append(m.score)
    out["bccd_sessions"] = {"sessions": SESSIONS, "alarms": int(sum(bccd_alarms)), "frames": len(frames),
                            "cells_min": int(min(sizes)), "cells_max": int(max(sizes)),
                            "score_min": float(min(scores)), "located_cells": int(sum(map(len, per_frame)))}
    print("BCCD sessions:", out["bccd_sessions"])

    # ---- synthetic shifts
    out["synthetic"] = {}
    for name, fn in SHIFTS.items():
        x = np.stack([to_model_input(fn(c), spec) for c in test_raw])
        p, f = clf.predict_many_with_features(x)
        s = ref.cell_scores(f, x)
        acc = float((p.argmax(1) == y_test).mean())
        al = session_alarms(s, ref, SESSIONS, SESSION_CELLS, args.seed)
        out["synthetic"][name] = {"accuracy": acc, "accuracy_drop_pp": 100 * (out["pbc_sessions"]["accuracy"] - acc),
                                  "alarm_rate": float(np.mean(al)), "auroc_vs_clean": auroc(s_test, s),
                                  "mean_score": float(s.mean())}
        print(name, out["synthetic"][name])

    # ---- cost per cell
    out["cost_ms_per_cell"] = cost_per_cell(ref, f_test, x_test, clf, args.one_output_file)
    print("cost ms/cell:", out["cost_ms_per_cell"])
    _write(args.json, out)


def _write(path: Path | None, out: dict) -> None:
    if path:
        old = json.loads(path.read_text()) if path.is_file() else {}
        path.write_text(json.dumps({**old, **out}, indent=2) + "\n")


def cost_per_cell(ref, feats: np.ndarray, inputs: np.ndarray, clf, one_output_file: Path | None) -> dict:
    """Median ms per cell of the shift scoring (score + session update), and of inference with/without the features."""
    from wbcedge.device.runtime import Classifier
    from wbcedge.device.shift import ShiftMonitor

    timings = {}
    for label, n in (("scoring, 1 cell per frame", 1), ("scoring, 8 cells per frame", 8)):
        m = ShiftMonitor(ref)
        runs = []
        for _ in range(2000):
            t = time.perf_counter()
            m.add(ref.cell_scores(feats[:n], inputs[:n]))
            _ = m.alarm
            runs.append((time.perf_counter() - t) / n)
        timings[label] = 1000 * float(np.median(runs))
    if one_output_file is not None:
        old = Classifier(one_output_file, threads=clf.threads)
        runs = {"inference, two outputs (features)": [], "inference, one output": []}
        for _ in range(300):  # alternating, so machine noise hits both alike
            for label, engine in (("inference, two outputs (features)", clf), ("inference, one output", old)):
                t = time.perf_counter()
                engine.predict_with_features(inputs[:1])
                runs[label].append(time.perf_counter() - t)
        timings.update({k: 1000 * float(np.median(v)) for k, v in runs.items()})
    return timings


if __name__ == "__main__":
    main()
