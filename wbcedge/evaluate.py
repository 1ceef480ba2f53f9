"""Evaluate a run folder (Keras, training box) or a bundle (device runtimes) on labelled crops.

    predictor = open_model(Path("runs/default-edge"))     # or a bundle folder
    y_true, probs = predict_records(predictor, records)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wbcedge.data import Record
from wbcedge.labels import class_indices
from wbcedge.preprocess import PreprocessSpec, load_inputs, read_image, to_model_input


@dataclass
class KerasPredictor:
    """A run folder's `model.keras` (needs TensorFlow: training box only)."""
    path: Path
    spec: PreprocessSpec
    classes: list[str]
    model: object
    name: str = "keras"

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict(batch.astype(np.float32), verbose=0, batch_size=64), np.float32)

    def predict_many(self, inputs: np.ndarray, batch_size: int = 64) -> np.ndarray:
        return self.predict(inputs)


@dataclass
class BundlePredictor:
    """One model file of a bundle, run by the device runtime (ai-edge-litert or onnxruntime)."""
    path: Path
    spec: PreprocessSpec
    classes: list[str]
    classifier: object
    name: str = ""

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.classifier.predict(batch)

    def predict_many(self, inputs: np.ndarray, batch_size: int = 64) -> np.ndarray:
        return self.classifier.predict_many(inputs, batch_size)


def is_run_folder(path: Path) -> bool:
    return (Path(path) / "model.keras").is_file()


def load_run(run_dir: Path) -> KerasPredictor:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    run_dir = Path(run_dir)
    if not is_run_folder(run_dir):
        raise FileNotFoundError(f"{run_dir} is not a run folder (no model.keras): train one with `wbcedge train`")
    import keras
    import wbcedge.models  # noqa: F401  (custom objects, if any, register on import)

    classes = json.loads((run_dir / "labels.json").read_text())
    return KerasPredictor(run_dir, PreprocessSpec.load(run_dir), classes,
                          keras.saving.load_model(run_dir / "model.keras"), name="keras (float32)")


def open_model(path: Path, backend: str | None = None, precision: str | None = None, threads: int | None = None):
    """A predictor for a run folder or a bundle (folder or archive)."""
    from wbcedge.bundle import load_bundle
    from wbcedge.runtime import Classifier

    path = Path(path)
    if is_run_folder(path):
        return load_run(path)
    bundle = load_bundle(path)
    entry = bundle.model_entry(backend, precision)
    clf = Classifier(bundle.path / entry["file"], threads=threads)
    return BundlePredictor(bundle.path / entry["file"], bundle.spec, bundle.classes, clf,
                           name=f"{entry['backend']} {entry['precision']}")


def labelled_inputs(records: list[Record], spec: PreprocessSpec) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs and class indices for labelled records, preprocessed by the spec's own code."""
    return load_inputs([r.path for r in records], spec), class_indices(r.label for r in records)


def predict_records(predictor, records: list[Record]) -> tuple[np.ndarray, np.ndarray]:
    x, y = labelled_inputs(records, predictor.spec)
    return y, predictor.predict_many(x)


def single_image_predict(path: Path, predictor) -> np.ndarray:
    return predictor.predict(to_model_input(read_image(path), predictor.spec)[None])[0]
