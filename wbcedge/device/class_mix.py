"""The differential corrected for the sample's class mix: an EM estimate over a session's cells.

A wbcedge model is trained with inverse-frequency class weights (`wbcedge train`, `wbcedge adapt`),
so its probabilities are those of a sample holding every type equally often. A blood sample does
not: neutrophils are about 60% of white cells, monocytes a few percent. Counting each cell's top
class therefore over-counts the rare types: every neutrophil taken for a monocyte weighs heavily
against the few real monocytes (docs/adapt.md, run M: monocytes counted at 7.6-8.3% where BCCD's
held-out cells hold 3.6%).

`estimate_mix` is the EM estimate of the sample's class shares (Saerens, Latinne & Decaestecker,
Neural Computation 14, 2002): reweight each cell's probabilities by (mix / trained prior), take the
mean over the cells as the new mix, repeat. It needs no label, only the session's own cells, and
corrects a change of class mix between training and sample; it cannot correct a model that
confuses two types on this microscope (a shift of how the cells look): the domain-shift alarm is
for that (shift.py), and the figures of both cases are in docs/runner.md.
`mix_differential` adds a bootstrap interval over the cells. NumPy only (the device side).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

MIN_CELLS = 20       # fewer cells: no estimate (the interval would span most of 0-100%)
BOOTSTRAP_ROUNDS = 200


@dataclass(frozen=True)
class MixEstimate:
    mix: np.ndarray          # the sample's class shares (sums to 1)
    adjusted: np.ndarray     # each cell's probabilities for that mix (rows sum to 1)
    iterations: int
    converged: bool


def estimate_mix(probs: np.ndarray, trained_prior: Sequence[float] | None = None, max_iter: int = 1000,
                 tol: float = 1e-7) -> MixEstimate:
    """EM estimate of the class shares of the cells whose probabilities are `probs` (N x K).

    `trained_prior`: the class shares the probabilities assume (default: even, as inverse-frequency
    class weights make them). Starts from that prior; stops when no share moves by more than `tol`."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or not len(p):
        raise ValueError(f"probs must be a non-empty N x K array of class probabilities, got shape {p.shape}")
    k = p.shape[1]
    prior = np.full(k, 1.0 / k) if trained_prior is None else np.asarray(trained_prior, dtype=np.float64)
    if prior.shape != (k,) or np.any(prior <= 0):
        raise ValueError(f"trained_prior needs {k} positive shares, got {trained_prior!r}")
    prior = prior / prior.sum()
    p = p / np.maximum(p.sum(1, keepdims=True), 1e-12)
    mix, adjusted = prior.copy(), p
    for i in range(1, max_iter + 1):
        adjusted = p * (mix / prior)
        adjusted /= np.maximum(adjusted.sum(1, keepdims=True), 1e-300)
        new = adjusted.mean(0)
        if np.abs(new - mix).max() < tol:
            return MixEstimate(new, adjusted, i, True)
        mix = new
    return MixEstimate(mix, adjusted, max_iter, False)


def mix_differential(probs: np.ndarray, classes: Sequence[str], level: float = 0.95,
                     rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0,
                     trained_prior: Sequence[float] | None = None) -> dict[str, Any] | None:
    """The EM class mix in percent per class, with a percentile bootstrap interval over the cells
    (the cells resampled `rounds` times); None with fewer than MIN_CELLS cells. JSON-ready."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or len(p) < MIN_CELLS:
        return None
    if p.shape[1] != len(classes):
        raise ValueError(f"{p.shape[1]} probabilities per cell for {len(classes)} classes")
    est = estimate_mix(p, trained_prior)
    rng = np.random.default_rng(seed)
    boots = np.array([estimate_mix(p[rng.integers(0, len(p), len(p))], trained_prior).mix for _ in range(rounds)])
    lo, hi = np.percentile(boots, [50 * (1 - level), 50 * (1 + level)], axis=0)
    return {
        "cells": len(p),
        "level": level,
        "method": ("EM estimate of the sample's class mix from every cell's probabilities, unidentified cells "
                   f"included (Saerens et al. 2002); percentile bootstrap interval, {rounds} resamplings of the cells"),
        "converged": est.converged,
        "types": {c: {"percent": 100.0 * float(est.mix[i]), "ci_low": 100.0 * float(lo[i]),
                      "ci_high": 100.0 * float(hi[i])} for i, c in enumerate(classes)},
    }
