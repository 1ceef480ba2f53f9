"""The training-run folder (`model.keras`, `preprocess.json`, `labels.json`, histories) and
one `Predictor` interface over it and over a bundle's model files.

`open_model(path)` takes either: a training-run folder (Keras, needs TensorFlow: training
box only) or a bundle (device runtimes, no TensorFlow).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wbcedge.errors import InputFileMissingError
from wbcedge.preprocess import PreprocessSpec


@dataclass
class Predictor:
    """A model with the spec and classes it came with: a run folder's Keras model or one file of a bundle."""
    path: Path
    spec: PreprocessSpec
    classes: list[str]
    engine: object  # anything with predict(batch) and predict_many(inputs, batch_size)
    name: str = ""

    @property
    def keras_model(self):
        """The Keras model behind a run folder's predictor (export and the bench baseline need it)."""
        if not isinstance(self.engine, _KerasEngine):
            raise TypeError(f"{self.path} is a bundle file, not a Keras run folder")
        return self.engine.model

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.engine.predict(batch)

    def predict_many(self, inputs: np.ndarray, batch_size: int = 64) -> np.ndarray:
        return self.engine.predict_many(inputs, batch_size)


class _KerasEngine:
    """`model.keras` behind the runtime Classifier's interface (needs TensorFlow: training box only)."""

    def __init__(self, model):
        self.model = model

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.predict_many(batch)

    def predict_many(self, inputs: np.ndarray, batch_size: int = 64) -> np.ndarray:
        return np.asarray(self.model.predict(inputs.astype(np.float32), verbose=0, batch_size=batch_size), np.float32)


def is_run_folder(path: Path) -> bool:
    return (Path(path) / "model.keras").is_file()


def load_run(run_dir: Path) -> Predictor:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    run_dir = Path(run_dir)
    if not is_run_folder(run_dir):
        raise InputFileMissingError(f"{run_dir} is not a run folder (no model.keras): train one with `wbcedge train`")
    from wbcedge.train.tf_import import import_tensorflow

    import_tensorflow()
    import keras

    import wbcedge.train.models  # noqa: F401  (custom objects, if any, register on import)

    classes = json.loads((run_dir / "labels.json").read_text())
    return Predictor(run_dir, PreprocessSpec.load(run_dir), classes,
                     _KerasEngine(keras.saving.load_model(run_dir / "model.keras")), name="keras (float32)")


def open_model(path: Path, backend: str | None = None, precision: str | None = None, threads: int | None = None):
    """A predictor for a run folder or a bundle (folder or archive)."""
    from wbcedge.bundle import load_bundle
    from wbcedge.device.runtime import Classifier

    path = Path(path)
    if is_run_folder(path):
        return load_run(path)
    bundle = load_bundle(path)
    entry = bundle.model_entry(backend, precision)
    clf = Classifier(bundle.path / entry["file"], threads=threads)
    return Predictor(bundle.path / entry["file"], bundle.spec, bundle.classes, clf,
                     name=f"{entry['backend']} {entry['precision']}")
