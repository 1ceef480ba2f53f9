"""The white cell differential: percent per type, an exact 95% interval, and flags.

A manual differential counts 100 (or 200) white cells; the percent of each type
carries the sampling error of that count. `differential` reports each type's count,
percent, the Clopper-Pearson ("exact") binomial interval and a low/high flag against
reference ranges. Cells the classifier would not name (below its confidence
threshold) are counted as unidentified: reported, but left out of the percentages.

Pure Python (math only): the device has no scipy. `clopper_pearson` inverts the
regularized incomplete beta function by bisection; tests check it against scipy.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

from wbcedge.errors import InputDataError, InputFileMissingError
from wbcedge.labels import CLASSES, normalize_class
from wbcedge.tomlfile import loads_toml


class ReferenceRangeError(InputDataError):
    """A reference-range file that cannot be read or holds an invalid range."""

# Typical adult reference ranges, percent of white cells. Laboratory manuals commonly
# print neutrophils 40-70% (many labs 40-75%), lymphocytes 20-40% or 20-45%,
# monocytes 2-8% or 2-10%, eosinophils 1-4% or 1-6%, basophils 0.5-1% or 0-2%; the
# widest common bounds are used so a flag means "outside what most labs accept".
# Each laboratory validates its own ranges (and children's differ): load them with
# `load_reference` (differential --reference FILE).
ADULT_REFERENCE: dict[str, tuple[float, float]] = {
    "neutrophil": (40.0, 75.0),
    "lymphocyte": (20.0, 45.0),
    "monocyte": (2.0, 10.0),
    "eosinophil": (1.0, 6.0),
    "basophil": (0.0, 2.0),
}

# The order a laboratory report lists the types in; classes not named here follow.
REPORT_ORDER = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil")


# ---------------------------------------------------------------- exact binomial interval

def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz's method)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 100000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            return h
    raise ArithmeticError(f"incomplete beta did not converge for a={a}, b={b}, x={x}")


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), for a, b > 0 and 0 <= x <= 1."""
    if a <= 0 or b <= 0:
        raise ValueError("betainc needs a > 0 and b > 0")
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    # The continued fraction converges fast for x < (a+1)/(a+b+2); use symmetry otherwise.
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def beta_quantile(q: float, a: float, b: float, tol: float = 1e-13) -> float:
    """x with I_x(a, b) = q: Newton's method on the beta density, kept inside a bisection bracket.

    I_x is increasing in x, so [lo, hi] always holds the root; a Newton step that would leave
    it is replaced by a bisection step. A handful of steps instead of ~45 bisections keeps the
    review station's live differential fast.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError("q must be within [0, 1]")
    if q in (0.0, 1.0):
        return q
    log_norm = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    lo, hi = 0.0, 1.0
    x = a / (a + b)
    for _ in range(400):
        f = betainc(a, b, x) - q
        if f < 0:
            lo = x
        else:
            hi = x
        if hi - lo <= tol or f == 0.0:
            break
        density = math.exp(log_norm + (a - 1.0) * math.log(x) + (b - 1.0) * math.log1p(-x))
        nxt = x - f / density if density > 0 else -1.0
        if not lo < nxt < hi:
            nxt = 0.5 * (lo + hi)
        if abs(nxt - x) <= tol * 0.1:
            return nxt
        x = nxt
    return x


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact two-sided binomial interval for k successes in n trials, as fractions in [0, 1].

    lower = Beta quantile alpha/2 of (k, n-k+1), 0 when k = 0;
    upper = Beta quantile 1-alpha/2 of (k+1, n-k), 1 when k = n.
    With n = 0 nothing is known: (0, 1).
    """
    if isinstance(k, bool) or isinstance(n, bool) or int(k) != k or int(n) != n:
        raise ValueError(f"k and n must be whole numbers, got k={k!r}, n={n!r}")
    k, n = int(k), int(n)
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be between 0 and 1 (e.g. 0.95), got {level}")
    if n == 0:
        return 0.0, 1.0
    alpha = 1.0 - level
    lower = 0.0 if k == 0 else beta_quantile(alpha / 2.0, k, n - k + 1)
    upper = 1.0 if k == n else beta_quantile(1.0 - alpha / 2.0, k + 1, n - k)
    return lower, upper


@lru_cache(maxsize=4096)
def _interval(k: int, n: int, level: float) -> tuple[float, float]:
    """clopper_pearson for the differential, remembered: a reviewer's relabel changes two counts at a time."""
    return clopper_pearson(k, n, level)


# ---------------------------------------------------------------- reference ranges

def load_reference(path: str | Path) -> dict[str, tuple[float, float]]:
    """Reference ranges (percent) from a JSON or TOML file.

    Either `{"neutrophil": [40, 70], ...}` or `{"neutrophil": {"low": 40, "high": 70}}`;
    TOML: `neutrophil = [40, 70]`. Class names are normalised ("Neutrophils", "EOS"
    are fine); a key "name" or "source" is kept out of the ranges. Types left out get no flag.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileMissingError(f"reference range file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".toml":
            data = loads_toml(text)
        else:
            data = json.loads(text)
    except (OSError, ValueError, RecursionError) as exc:  # JSON/TOML decode errors and bad UTF-8 are ValueErrors
        raise ReferenceRangeError(f"{path}: not valid {'TOML' if path.suffix.lower() == '.toml' else 'JSON'}: {exc}") from None
    if not isinstance(data, dict):
        raise ReferenceRangeError(f"{path}: expected a mapping of cell type to [low, high] percent")
    ranges: dict[str, tuple[float, float]] = {}
    for key, value in data.items():
        if key in ("name", "source"):
            continue
        cls = normalize_class(str(key))  # raises with the list of known classes
        if isinstance(value, dict):
            value = (value.get("low"), value.get("high"))
        if (not isinstance(value, (list, tuple)) or len(value) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
            raise ReferenceRangeError(f"{path}: {key} must be [low, high] in percent, got {value!r}")
        low, high = float(value[0]), float(value[1])
        if not 0.0 <= low <= high <= 100.0:
            raise ReferenceRangeError(f"{path}: {key} range {low}-{high} must satisfy 0 <= low <= high <= 100")
        ranges[cls] = (low, high)
    return ranges


# ---------------------------------------------------------------- the differential

def differential(labels: Sequence[str], classes: Sequence[str] = CLASSES, unidentified_label: str = "unidentified",
                 reference: Mapping[str, tuple[float, float]] | None = ADULT_REFERENCE,
                 level: float = 0.95) -> dict[str, Any]:
    """Count, percent, exact interval and flag per cell type.

    labels: one per counted cell: a class name or `unidentified_label`.
    Percentages are of the classified cells (unidentified excluded) and sum to 100.
    flag: "low" / "high" when the percent lies outside the reference range, else "".
    The result is plain JSON-ready data, `classes` in report order (REPORT_ORDER):
        {"classes": [...], "level": 0.95, "total_cells": N, "classified": n,
         "unidentified": u, "unidentified_percent_of_all": ...,
         "types": {cls: {"count", "percent", "ci_low", "ci_high", "reference_low",
                         "reference_high", "flag"}}}
    percent and interval bounds are in percent, None when no cell was classified.
    """
    classes = sorted(classes, key=lambda c: (REPORT_ORDER.index(c) if c in REPORT_ORDER else len(REPORT_ORDER)))
    counts = Counter(labels)
    unknown = sorted(set(counts) - set(classes) - {unidentified_label})
    if unknown:
        raise ValueError(f"labels {unknown} are neither a class ({', '.join(classes)}) nor "
                         f"'{unidentified_label}': the labels and the model's classes do not match")
    reference = dict(reference or {})
    unidentified = counts.get(unidentified_label, 0)
    n = sum(counts[c] for c in classes)
    types: dict[str, dict[str, Any]] = {}
    for cls in classes:
        k = counts.get(cls, 0)
        low_ref, high_ref = reference.get(cls, (None, None))
        if n:
            percent = 100.0 * k / n
            lo, hi = _interval(k, n, level)
            ci_low, ci_high = 100.0 * lo, 100.0 * hi
        else:
            percent = ci_low = ci_high = None
        flag = ""
        if percent is not None and low_ref is not None:
            flag = "low" if percent < low_ref else "high" if percent > high_ref else ""
        types[cls] = {"count": k, "percent": percent, "ci_low": ci_low, "ci_high": ci_high,
                      "reference_low": low_ref, "reference_high": high_ref, "flag": flag}
    total = n + unidentified
    return {
        "classes": classes,
        "level": level,
        "total_cells": total,
        "classified": n,
        "unidentified": unidentified,
        "unidentified_label": unidentified_label,
        "unidentified_percent_of_all": (100.0 * unidentified / total) if total else None,
        "flag_basis": "point estimate outside the reference range",
        "types": types,
    }


FLAGS_WITHHELD = ("withheld: the domain-shift alarm fired, so these percentages are not valid for this "
                  "microscope and a high or low flag would read as a finding")


def withhold_flags(diff: Mapping[str, Any], reason: str = FLAGS_WITHHELD) -> dict[str, Any]:
    """A copy of `diff` with no high/low flag and `flag_basis` saying why (counts, percentages and
    intervals stay: they are what the model saw, for review)."""
    return {**diff, "types": {c: {**t, "flag": ""} for c, t in diff["types"].items()}, "flag_basis": reason}
