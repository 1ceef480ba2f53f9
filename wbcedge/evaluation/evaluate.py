"""Evaluate a predictor (a training run's Keras model or a bundle file) on labelled crops.

    predictor = open_model(Path("training/runs/default-edge"))   # wbcedge.train.run_folder; or a bundle folder
    y_true, probs = predict_records(predictor, records)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wbcedge.data import Record
from wbcedge.labels import class_indices
from wbcedge.preprocess import PreprocessSpec, read_image, to_model_input


def labelled_inputs(records: list[Record], spec: PreprocessSpec) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs and class indices for labelled single-cell crops, cut by the one crop policy
    (`device.recrop`: the set is re-cut by one factor when its cells are not at the trained scale)."""
    x, y, _ = labelled_inputs_report(records, spec)
    return x, y


def labelled_inputs_report(records: list[Record], spec: PreprocessSpec) -> tuple[np.ndarray, np.ndarray, dict]:
    """`labelled_inputs` and the crop report (`device.recrop.CropScale` as a dict)."""
    from wbcedge.device.recrop import load_cell_inputs

    from dataclasses import asdict

    x, scale = load_cell_inputs([r.path for r in records], spec)
    return x, class_indices(r.label for r in records), asdict(scale)


def predict_records(predictor, records: list[Record]) -> tuple[np.ndarray, np.ndarray]:
    y, probs, _ = predict_records_report(predictor, records)
    return y, probs


def predict_records_report(predictor, records: list[Record]) -> tuple[np.ndarray, np.ndarray, dict]:
    x, y, report = labelled_inputs_report(records, predictor.spec)
    return y, predictor.predict_many(x), report


def single_image_predict(path: Path, predictor) -> np.ndarray:
    from wbcedge.device.recrop import single_cell_input

    return predictor.predict(single_cell_input(read_image(path), predictor.spec)[0][None])[0]


# ---------------------------------------------------------------- another microscope: labelled frames

def read_frame_types(types_csv: Path) -> dict[str, str]:
    """Frame file name -> its one white-cell type, for frames whose types (';'-joined) name one class only."""
    import csv

    from wbcedge.labels import normalize_class

    out = {}
    with open(types_csv, newline="") as f:
        for row in csv.DictReader(f):
            types = {normalize_class(t) for t in (row.get("wbc_types") or "").split(";") if t.strip()}
            if len(types) == 1:
                out[row["image"]] = types.pop()
    return out


def evaluate_box_crops(predictor, frames_dir: Path, annotations_dir: Path, types_csv: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Classify the annotated WBC boxes of single-type frames (the cell is given, only the classifier is tested).

    Frames with exactly one WBC box are used, so the frame's type is that box's type.
    Crops are cut as the runner cuts them: around the box, at the training crops'
    physical size when the scale can be measured from the red cells.
    """
    x, y, names = box_crop_inputs(predictor.spec, frames_dir, annotations_dir, types_csv)
    return y, predictor.predict_many(x), names


def box_crop_inputs(spec: PreprocessSpec, frames_dir: Path, annotations_dir: Path,
                    types_csv: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Model inputs, class indices and frame names of the single-cell frames' annotated WBC boxes."""
    from wbcedge.device.locate import estimate_um_per_px
    from wbcedge.evaluation.locate_eval import read_voc_boxes
    from wbcedge.preprocess import crop_around_cell

    types = read_frame_types(types_csv)
    inputs, labels, names = [], [], []
    for name, label in sorted(types.items()):
        image_path, xml = Path(frames_dir) / name, Path(annotations_dir) / (Path(name).stem + ".xml")
        if not image_path.is_file() or not xml.is_file():
            continue
        boxes = read_voc_boxes(xml)
        if len(boxes) != 1:
            continue
        image = read_image(image_path)
        scale = estimate_um_per_px([image])
        inputs.append(to_model_input(crop_around_cell(image, boxes[0], spec, scale), spec))
        labels.append(label)
        names.append(name)
    x = np.stack(inputs) if inputs else np.zeros((0, spec.input_size, spec.input_size, 3), np.uint8)
    return x, class_indices(labels), names


def evaluate_frame_types(bundle_path: Path | None, frames_dir: Path, types_csv: Path, **pipeline_options) -> dict:
    """End to end on labelled frames: locate, classify, and call each frame's type by its cells' majority.

    A frame where no cell is found, or only unidentified ones, counts as wrong (and is
    counted separately), so the figure is the one a user of the runner would get.
    """
    from collections import Counter

    from wbcedge.bundle import load_bundle
    from wbcedge.device.pipeline import UNIDENTIFIED, CellPipeline
    from wbcedge.evaluation.metrics import proportion_ci

    bundle = load_bundle(bundle_path)
    pipeline = CellPipeline(bundle, **pipeline_options)
    fixed_scale = pipeline_options.get("um_per_px")   # a camera profile's: the same for every frame
    types = read_frame_types(types_csv)
    rows, confusion = [], Counter()
    for name, truth in sorted(types.items()):
        path = Path(frames_dir) / name
        if not path.is_file():
            continue
        pipeline.um_per_px = fixed_scale  # without a profile's scale, independent stills: measure each frame's
        cells = [c for c in pipeline.analyse(read_image(path)) if c.label != UNIDENTIFIED]
        if cells:
            votes = Counter(c.label for c in cells)
            best = max(votes.values())
            predicted = max((c for c in cells if votes[c.label] == best), key=lambda c: c.confidence).label
        else:
            predicted = "none"
        rows.append((name, truth, predicted))
        confusion[(truth, predicted)] += 1
    n = len(rows)
    correct = sum(t == p for _, t, p in rows)
    per_class = {}
    for c in bundle.classes:
        support = sum(1 for _, t, _ in rows if t == c)
        hits = sum(1 for _, t, p in rows if t == c and p == c)
        per_class[c] = {"support": support, "recall": hits / support if support else None,
                        "recall_ci95": list(proportion_ci(hits, support)) if support else None}
    return {"frames": n, "accuracy": correct / n if n else None,
            "accuracy_ci95": list(proportion_ci(correct, n)) if n else None,
            "no_cell_frames": sum(1 for _, _, p in rows if p == "none"),
            "per_class": per_class,
            "confusion": {f"{t}->{p}": k for (t, p), k in sorted(confusion.items())},
            "model_file": pipeline.model_entry["file"]}
