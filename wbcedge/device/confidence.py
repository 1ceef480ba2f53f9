"""Calibrated confidence: temperature scaling (Guo et al., ICML 2017) of the model's probabilities.

The temperature is fitted at export on the validation split (`fit_temperature`) and stored in the
bundle's manifest (`calibration.temperature`); the device applies it to every cell before the
"unidentified" threshold. Dividing the logits by T is the same as raising the probabilities to 1/T
and renormalising, so it works on the probabilities the model files return, and never changes
the predicted class.
"""

from __future__ import annotations

import numpy as np

_FLOOR = 1e-6  # int8 outputs round small probabilities to 0


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(p) / T), row by row."""
    probs = np.asarray(probs, np.float32)
    if temperature == 1.0 or probs.size == 0:
        return probs
    logits = np.log(np.clip(probs, _FLOOR, 1.0)) / temperature
    logits -= logits.max(axis=-1, keepdims=True)
    e = np.exp(logits)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def negative_log_likelihood(probs: np.ndarray, y: np.ndarray) -> float:
    return float(-np.log(np.clip(probs[np.arange(len(y)), y], _FLOOR, 1.0)).mean())


def fit_temperature(probs: np.ndarray, y: np.ndarray, low: float = 0.05, high: float = 20.0) -> float:
    """The temperature minimising the negative log-likelihood (golden-section search on log T)."""
    y = np.asarray(y, int)
    f = lambda log_t: negative_log_likelihood(apply_temperature(probs, float(np.exp(log_t))), y)  # noqa: E731
    a, b = np.log(low), np.log(high)
    ratio = (np.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(60):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = f(d)
    return float(np.exp((a + b) / 2))
