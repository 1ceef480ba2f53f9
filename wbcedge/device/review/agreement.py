"""Agreement between the model's labels and the reviewer's: per class and Cohen's kappa.

Pure Python (the device has no scikit-learn); tests check `cohen_kappa` against
`sklearn.metrics.cohen_kappa_score`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float | None:
    """Cohen's kappa of two raters' labels for the same items; None when there is no item.

    kappa = (p_o - p_e) / (1 - p_e); when both raters use one and the same label
    throughout (p_e = 1) agreement is perfect and kappa is 1.0.
    """
    if len(a) != len(b):
        raise ValueError(f"two raters must label the same items: {len(a)} labels against {len(b)}")
    n = len(a)
    if n == 0:
        return None
    observed = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    expected = sum(ca[k] * cb[k] for k in ca) / (n * n)
    if expected >= 1.0:
        return 1.0
    return (observed - expected) / (1.0 - expected)


def agreement(model: Sequence[str], reviewed: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
    """Per-label counts and agreement of the model against the reviewer, and Cohen's kappa.

    For each label: `reviewed` (the reviewer's count), `model` (the model's count), `agreed`
    (both said it), `recall` = agreed/reviewed (how many of the reviewer's cells of that type
    the model found) and `precision` = agreed/model (how many of the model's were right).
    """
    if len(model) != len(reviewed):
        raise ValueError("model and reviewed labels must be for the same cells")
    names = list(labels) + sorted((set(model) | set(reviewed)) - set(labels))
    cm, cr = Counter(model), Counter(reviewed)
    both = Counter(m for m, r in zip(model, reviewed) if m == r)
    per = {}
    for k in names:
        per[k] = {"reviewed": cr[k], "model": cm[k], "agreed": both[k],
                  "recall": both[k] / cr[k] if cr[k] else None,
                  "precision": both[k] / cm[k] if cm[k] else None}
    n = len(model)
    return {"cells": n, "agreed": sum(both.values()), "percent_agreement": 100.0 * sum(both.values()) / n if n else None,
            "cohen_kappa": cohen_kappa(model, reviewed), "per_label": per}
