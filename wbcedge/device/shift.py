"""Does this microscope look like the training data? A per-cell OOD score and a per-session shift alarm.

Per cell, two distances to the training crops, each divided by its median on held-out
in-distribution crops, and the larger one is the cell's score (about 1 in distribution):
- features: the class-conditional Mahalanobis distance of the model's penultimate features,
  one covariance shared by the classes (Lee et al., NeurIPS 2018);
- colour: the same distance on 15 colour statistics of the model input (CIELAB mean, spread
  and 10/50/90th percentiles), with the covariance taken over the training crops *with the
  training run's colour augmentation*, so colour changes the classifier was trained to
  tolerate count little and a foreign stain counts a lot.
Chosen against kNN distance, the energy score and max-softmax by measurement (docs/shift.md).

Per session: the mean cell score over the cells so far. Its threshold for n cells was calibrated
at export by simulating sessions of n held-out in-distribution crops run through that model
file (`session_thresholds[n-1]`, the last entry for longer sessions), times a margin for the
variation between real sessions that random draws from one pool do not show. Below `min_cells`
cells the session is not judged.

Everything the device needs travels in the bundle as `reference.npz` (listed and hashed in
manifest.json), thresholds per model file; a bundle without it runs with the shift check off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

REFERENCE_FILE = "reference.npz"
METHOD = "max(feature Mahalanobis, colour Mahalanobis), shared covariance"
ADAPT_HINT = ("adapt the model to it with `wbcedge adapt` (a few labelled cells from this microscope), "
              "or use a bundle made for it")
COLOUR_SIZE = 32  # the model input is shrunk to this before its colour statistics are taken
_PERCENTILES = (10, 50, 90)


def colour_statistics(inputs: np.ndarray) -> np.ndarray:
    """(N, 15): CIELAB mean, standard deviation and 10/50/90th percentiles of each RGB uint8 model input.

    All crops are shrunk, stacked and converted at once; the percentiles interpolate linearly
    between order statistics, as numpy.percentile does.
    """
    n = len(inputs)
    if n == 0:
        return np.zeros((0, 15), np.float32)
    small = np.concatenate([cv2.resize(np.ascontiguousarray(im), (COLOUR_SIZE, COLOUR_SIZE),
                                       interpolation=cv2.INTER_AREA) for im in inputs])
    lab = cv2.cvtColor(small, cv2.COLOR_RGB2LAB).reshape(n, -1, 3).astype(np.float32)
    pos = np.array(_PERCENTILES) / 100 * (lab.shape[1] - 1)
    low, frac = np.floor(pos).astype(int), (pos - np.floor(pos))[None, :, None].astype(np.float32)
    ordered = np.sort(lab, axis=1)
    q = ordered[:, low] * (1 - frac) + ordered[:, np.minimum(low + 1, lab.shape[1] - 1)] * frac
    return np.concatenate([lab.mean(1), lab.std(1), q.reshape(n, 9)], axis=1).astype(np.float32)


def mahalanobis_min(x: np.ndarray, means: np.ndarray, whiten: np.ndarray) -> np.ndarray:
    """Distance to the nearest class mean under the shared covariance, divided by sqrt(dimension)."""
    z, m = np.asarray(x, np.float32) @ whiten, means @ whiten
    d2 = (z ** 2).sum(1)[:, None] - 2 * z @ m.T + (m ** 2).sum(1)[None]
    return np.sqrt(np.maximum(d2.min(1), 0.0) / means.shape[1])


@dataclass
class ShiftReference:
    """The training distribution and the thresholds calibrated for one model file."""
    means: np.ndarray                 # (classes, D) class means of the training features
    whiten: np.ndarray                # (D, D): (f - mean) @ whiten has identity covariance
    colour_means: np.ndarray          # (classes, 15)
    colour_whiten: np.ndarray         # (15, 15)
    scales: np.ndarray                # (2,): held-out medians of the feature and colour distances
    cell_threshold: float             # a cell above this is "unidentified" whatever its confidence
    session_thresholds: np.ndarray    # [n-1]: threshold on the mean score of n cells
    min_cells: int = 5
    _f32: dict = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._f32 = {k: np.asarray(getattr(self, k), np.float32)
                     for k in ("means", "whiten", "colour_means", "colour_whiten")}
        self.scales = np.asarray(self.scales, np.float64)
        self.session_thresholds = np.asarray(self.session_thresholds, np.float64)

    @property
    def feature_dim(self) -> int:
        return int(self.means.shape[1])

    def parts(self, features: np.ndarray, inputs: np.ndarray) -> np.ndarray:
        """(N, 2): the feature and colour distances, each in units of its in-distribution median."""
        f = np.asarray(features, np.float32).reshape(len(features), -1)
        if f.shape[1] != self.feature_dim:
            raise ValueError(f"features of size {f.shape[1]}, the reference has {self.feature_dim}: "
                             "the reference statistics belong to another model; re-export the bundle")
        d_feat = mahalanobis_min(f, self._f32["means"], self._f32["whiten"])
        d_col = mahalanobis_min(colour_statistics(inputs), self._f32["colour_means"], self._f32["colour_whiten"])
        return np.stack([d_feat, d_col], 1) / self.scales[None]

    def cell_scores(self, features: np.ndarray, inputs: np.ndarray) -> np.ndarray:
        """OOD score per cell (higher: less like the training cells); about 1 in distribution."""
        return self.parts(features, inputs).max(1)

    def session_threshold(self, n: int) -> float:
        return float(self.session_thresholds[min(max(n, 1), len(self.session_thresholds)) - 1])

    @classmethod
    def load(cls, path: Path, model_file: str | None = None) -> "ShiftReference":
        """The reference with the thresholds of `model_file` (default: the first file calibrated)."""
        with np.load(path, allow_pickle=False) as z:
            files = [str(f) for f in z["files"]]
            if model_file is not None and model_file not in files:
                raise ValueError(f"{path} has no thresholds for {model_file} (it has {', '.join(files)}): "
                                 "re-export the bundle")
            i = files.index(model_file) if model_file is not None else 0
            return cls(z["means"], z["whiten"], z["colour_means"], z["colour_whiten"], z["scales"],
                       float(z["cell_thresholds"][i]), z["session_thresholds"][i], int(z["min_cells"]))


def save_reference(path: Path, per_file: dict[str, ShiftReference]) -> Path:
    """One reference.npz: the shared statistics and each model file's thresholds."""
    first = next(iter(per_file.values()))
    np.savez(path, means=first.means, whiten=first.whiten, colour_means=first.colour_means,
             colour_whiten=first.colour_whiten, scales=first.scales, min_cells=np.int64(first.min_cells),
             files=np.array(list(per_file)), cell_thresholds=np.array([r.cell_threshold for r in per_file.values()]),
             session_thresholds=np.stack([r.session_thresholds for r in per_file.values()]))
    return Path(path)


def fit_reference(features: np.ndarray, labels: np.ndarray, n_classes: int, shrinkage: float = 1e-3):
    """Class means and the whitening matrix of the shared within-class covariance (ridge-shrunk)."""
    f = np.asarray(features, np.float64)
    labels = np.asarray(labels)
    means = np.stack([f[labels == c].mean(0) if np.any(labels == c) else f.mean(0) for c in range(n_classes)])
    centred = f - means[labels]
    cov = centred.T @ centred / max(len(f) - n_classes, 1)
    cov += shrinkage * np.trace(cov) / len(cov) * np.eye(len(cov)) + 1e-12 * np.eye(len(cov))
    # whiten = L^-T with cov = L L^T, so |(f - m) @ whiten|^2 is the squared Mahalanobis distance
    whiten = np.linalg.inv(np.linalg.cholesky(cov)).T
    return means.astype(np.float32), whiten.astype(np.float32)


def session_thresholds(scores: np.ndarray, max_cells: int = 100, quantile: float = 0.998, margin: float = 1.25,
                       sessions: int = 4000, seed: int = 0) -> np.ndarray:
    """Per session size n = 1..max_cells: `margin` times the `quantile` of the mean score of n drawn cells."""
    rng = np.random.default_rng(seed)
    scores = np.asarray(scores, np.float64)
    out = np.empty(max_cells)
    for n in range(1, max_cells + 1):
        idx = rng.integers(0, len(scores), size=(sessions, n))
        out[n - 1] = np.quantile(scores[idx].mean(1), quantile)
    return margin * np.maximum.accumulate(out[::-1])[::-1]  # never rises with n


def calibrate(base: ShiftReference, scores: np.ndarray, cell_quantile: float = 0.99, session_quantile: float = 0.998,
              margin: float = 1.25, max_cells: int = 100, seed: int = 0) -> ShiftReference:
    """`base` with thresholds from held-out in-distribution cell scores (validation crops, never the test split)."""
    return ShiftReference(base.means, base.whiten, base.colour_means, base.colour_whiten, base.scales,
                          float(np.quantile(scores, cell_quantile)),
                          session_thresholds(scores, max_cells, session_quantile, margin, seed=seed), base.min_cells)


class ShiftMonitor:
    """The running shift score of one session: feed it each counted cell's score."""

    def __init__(self, reference: ShiftReference):
        self.reference = reference
        self.total = 0.0
        self.cells = 0
        self.beyond = 0

    def add(self, scores) -> None:
        scores = np.atleast_1d(np.asarray(scores, np.float64))
        self.total += float(scores.sum())
        self.cells += len(scores)
        self.beyond += int((scores > self.reference.cell_threshold).sum())

    @property
    def score(self) -> float | None:
        return self.total / self.cells if self.cells else None

    @property
    def threshold(self) -> float:
        return self.reference.session_threshold(self.cells)

    @property
    def alarm(self) -> bool:
        return self.cells >= self.reference.min_cells and self.score > self.threshold

    def state(self) -> dict:
        """What differential.json carries as "domain_shift"."""
        return {"score": None if self.score is None else round(self.score, 4), "threshold": round(self.threshold, 4),
                "alarm": self.alarm, "cells": self.cells, "judged": self.cells >= self.reference.min_cells,
                "min_cells": self.reference.min_cells, "cells_beyond_cell_threshold": self.beyond,
                "cell_threshold": round(self.reference.cell_threshold, 4), "method": METHOD}


def alarm_message(state: dict, reference: str = "the model's training data") -> str:
    """The plain words the console, report.html and differential.json carry when the alarm fires;
    `reference` names the cells the model knows (`banner.reference_cells`: for an adapted bundle, its site's)."""
    return (f"DOMAIN SHIFT: these {state['cells']} cells look unlike {reference} "
            f"(shift score {state['score']:.2f}, threshold {state['threshold']:.2f}; "
            f"{state['cells_beyond_cell_threshold']} cells beyond the per-cell limit were set unidentified). "
            f"The differential is not valid for this microscope: {ADAPT_HINT}.")


SHIFT_OFF = ("shift check is off: this bundle has no reference statistics (no feature output or no "
             f"{REFERENCE_FILE}); re-export it with this wbcedge to get the domain-shift alarm")
