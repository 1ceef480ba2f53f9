"""Evaluation maths and report files, independent of how the predictions were made.

Every figure here comes with its uncertainty: a test set of 500 images measures
accuracy to within about +-1.5 points, so two models are compared on the same
images with McNemar's test, never by their accuracies alone (docs/evaluation.md).

Inputs are plain arrays: `y_true` holds class indices into `classes`, `y_prob`
holds one row of scores per image (probabilities, logits or dequantised int8
outputs: only their order matters). The maths is scikit-learn's and SciPy's;
plots use matplotlib's Agg canvas. All three live in the `report` extra and are
imported inside the functions, so the device side can import this module
without them.

    results = classification_results(y_true, y_prob, CLASSES)
    write_report(Path("runs/mobilenet/eval"), results, y_true, y_prob, CLASSES, "MobileNetV2, test split")
"""

from __future__ import annotations

import csv
import functools
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from wbcedge.device.differential import clopper_pearson
from wbcedge.errors import MissingDependencyError

if TYPE_CHECKING:
    from rich.table import Table

LEVEL = 0.95
ALPHA = 0.05  # significance level for McNemar's verdict
NO_DIFFERENCE = f"no significant difference at {ALPHA:g}"
REPORT_FILES = ("results.json", "report.md", "confusion.png", "roc.png", "reliability.png", "curves.png")


_REPORT_EXTRA = {"sklearn", "scipy", "matplotlib"}


def _needs_report_extra(func: Callable) -> Callable:
    """Turn a missing scikit-learn / SciPy / matplotlib into a message that says how to install it."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] not in _REPORT_EXTRA:
                raise
            missing = ReportExtraMissingError(
                f"{func.__name__} needs {exc.name.split('.')[0]}, which is not installed. Evaluation reports use the "
                "'report' extra: pip install 'wbcedge[report]' (not needed on the device)")
            missing.name = exc.name
            raise missing from exc
    return wrapper


class ReportExtraMissingError(MissingDependencyError, ModuleNotFoundError):
    """scikit-learn, SciPy or matplotlib (the 'report' extra) is not installed."""


# --------------------------------------------------------------------------- maths

def proportion_ci(successes: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Clopper–Pearson exact confidence interval for `successes` out of `n`.

    Exact (never narrower than it should be, even at 0 or n successes), so
    0/10 gives (0.0, 0.3085) at 95 %. With n == 0 nothing was measured: (0, 1).
    One implementation for the package: the device's pure-Python
    `wbcedge.device.differential.clopper_pearson` (no SciPy needed).
    """
    successes, n = int(successes), int(n)
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    return clopper_pearson(successes, n, level)


def _labels_and_scores(y_true: Sequence[int], y_prob: np.ndarray,
                       classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Check the inputs once, at the boundary, with messages that say what to fix."""
    k = len(classes)
    if k < 2:
        raise ValueError(f"need at least two classes, got {list(classes)}")
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"y_true must be a flat list of class indices, got shape {y.shape}")
    if y.size == 0:
        raise ValueError("no test images: y_true is empty")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
            y = y.astype(np.int64)
        else:
            raise ValueError(f"y_true must hold class indices 0..{k - 1} (ints), got dtype {y.dtype}; "
                             f"map class names with classes.index(name)")
    if y.min() < 0 or y.max() >= k:
        raise ValueError(f"y_true holds {int(y.min())}..{int(y.max())}, but there are {k} classes "
                         f"({', '.join(classes)}): labels must be 0..{k - 1}")
    p = np.asarray(y_prob, dtype=np.float64)
    if p.shape != (y.size, k):
        raise ValueError(f"y_prob must have one row of {k} class scores per image, shape ({y.size}, {k}); "
                         f"got {p.shape}. Pass the model's outputs, not argmax labels")
    if not np.all(np.isfinite(p)):
        raise ValueError("y_prob contains NaN or infinite scores; the model output is broken")
    return y.astype(np.int64), p


def _as_predictions(pred: Any, n: int, name: str) -> np.ndarray:
    """Class indices from labels (n,) or from scores (n, k) via argmax."""
    a = np.asarray(pred)
    if a.ndim == 2:
        a = a.argmax(axis=1)
    if a.shape != (n,):
        raise ValueError(f"{name} must hold one prediction per image ({n}), got shape {np.asarray(pred).shape}")
    return a.astype(np.int64)


def _ci_or_none(successes: int, n: int) -> list[float] | None:
    """The interval, or None for a class with no images (reported as absent, not as [0, 1])."""
    return list(proportion_ci(successes, n)) if n else None


@_needs_report_extra
def classification_results(y_true: Sequence[int], y_prob: np.ndarray, classes: Sequence[str]) -> dict:
    """Accuracy with its exact 95 % CI, per-class precision/recall/F1, confusion matrix, ROC AUC.

    The prediction is the arg-max of each row of `y_prob`. Precision of a class
    the model never predicts is 0 (scikit-learn's `zero_division=0`); a recall
    CI or an AUC that cannot be computed (the class is absent from y_true) is
    None. Every value is a plain int, float, list or None, so the dict goes
    straight into JSON.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support, roc_auc_score

    y, p = _labels_and_scores(y_true, y_prob, classes)
    labels = list(range(len(classes)))
    pred = p.argmax(axis=1)
    n = int(y.size)

    accuracy = float(accuracy_score(y, pred))
    correct = int(np.sum(y == pred))
    cm = confusion_matrix(y, pred, labels=labels)
    precision, recall, f1, support = precision_recall_fscore_support(
        y, pred, labels=labels, zero_division=0)

    per_class = {}
    roc_auc: dict[str, float | None] = {}
    for i, name in enumerate(classes):
        per_class[name] = {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "recall_ci95": _ci_or_none(int(cm[i, i]), int(support[i])),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        positives = y == i
        # One-vs-rest AUC needs both positives and negatives in y_true.
        roc_auc[name] = (float(roc_auc_score(positives, p[:, i]))
                         if 0 < positives.sum() < n else None)

    averages = {}
    for average in ("macro", "weighted"):
        pr, rc, f, _ = precision_recall_fscore_support(y, pred, labels=labels, average=average, zero_division=0)
        averages[f"{average}_avg"] = {"precision": float(pr), "recall": float(rc), "f1": float(f)}

    lo, hi = proportion_ci(correct, n)
    return {
        "n": n,
        "accuracy": accuracy,
        "accuracy_ci95": [lo, hi],
        "per_class": per_class,
        **averages,
        "confusion_matrix": [[int(v) for v in row] for row in cm],
        "roc_auc": roc_auc,
        "classes": list(classes),
    }


@_needs_report_extra
def mcnemar(y_true: Sequence[int], pred_a: Any, pred_b: Any, names: tuple[str, str] = ("A", "B")) -> dict:
    """Exact McNemar test: do two models, run on the *same* images, differ in accuracy?

    Only the discordant images count: b = A right and B wrong, c = A wrong and
    B right. Under "no difference" each discordant image is a fair coin, so the
    two-sided p-value is the exact binomial test of b out of b + c at 0.5.
    `pred_a` and `pred_b` are class indices (n,) or scores (n, k).
    """
    from scipy.stats import binomtest

    y = np.asarray(y_true).astype(np.int64)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"y_true must be a non-empty flat list of class indices, got shape {y.shape}")
    a = _as_predictions(pred_a, y.size, "pred_a")
    b_ = _as_predictions(pred_b, y.size, "pred_b")
    right_a, right_b = a == y, b_ == y
    b = int(np.sum(right_a & ~right_b))
    c = int(np.sum(~right_a & right_b))
    p_value = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)
    if p_value < ALPHA:
        better = names[0] if b > c else names[1]
    else:
        better = NO_DIFFERENCE
    n = int(y.size)
    return {
        "n": n,
        "names": list(names),
        "b": b,
        "c": c,
        "discordant": b + c,
        "p_value": p_value,
        "better": better,
        "accuracy_a": float(right_a.mean()),
        "accuracy_a_ci95": list(proportion_ci(int(right_a.sum()), n)),
        "accuracy_b": float(right_b.mean()),
        "accuracy_b_ci95": list(proportion_ci(int(right_b.sum()), n)),
    }


# --------------------------------------------------------------------------- text

def _abbreviations(classes: Sequence[str]) -> list[str]:
    """B E L M N for the five WBC classes (the paper's Table VI header); full names if letters clash."""
    letters = [c[:1].upper() for c in classes]
    return letters if len(set(letters)) == len(letters) else list(classes)


def _legend(short: Sequence[str], classes: Sequence[str]) -> str:
    pairs = [f"{s}: {c}" for s, c in zip(short, classes) if s != c]
    return ("Where " + ", ".join(pairs) + ". ") if pairs else ""


def _pct(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _ci(ci: Sequence[float] | None) -> str:
    return "n/a" if not ci else f"{100 * ci[0]:.1f}–{100 * ci[1]:.1f}%"


def _accuracy_line(results: dict) -> str:
    correct = round(results["accuracy"] * results["n"])
    return (f"{_pct(results['accuracy'])} ({correct}/{results['n']}), "
            f"95% CI {_ci(results['accuracy_ci95'])}")


def markdown_summary(results: dict, title: str, figures: Sequence[str] = ()) -> str:
    """The report.md text: accuracy with CI, Table VI layout, per-class detail, confusion matrix."""
    classes = results["classes"]
    short = _abbreviations(classes)
    pc = results["per_class"]
    lo, hi = results["accuracy_ci95"]
    lines = [f"# {title}", "",
             f"**Accuracy: {_accuracy_line(results)}.** "
             f"With {results['n']} test images the accuracy is known only to within "
             f"±{50 * (hi - lo):.1f} points; compare models on the same images with McNemar's test "
             f"(`wbcedge evaluate --compare`), not by their accuracies.", "",
             "## Precision, recall and F1 per class", "",
             "| Metric | " + " | ".join(short) + " | Total |",
             "|---|" + "---:|" * (len(classes) + 1)]
    for label, key in (("Precision", "precision"), ("Recall", "recall"), ("F1-score", "f1")):
        cells = [f"{pc[c][key]:.2f}" for c in classes]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {results['macro_avg'][key]:.3f} |")
    lines += ["",
              "Total is the macro average (each class counts equally), as in Table VI of the "
              "residual-block CNN paper. " + _legend(short, classes) +
              f"Weighted by support: precision {results['weighted_avg']['precision']:.3f}, "
              f"recall {results['weighted_avg']['recall']:.3f}, F1 {results['weighted_avg']['f1']:.3f}.", "",
              "## Recall with its 95% confidence interval", "",
              "| Class | Recall | 95% CI | Support | ROC AUC |",
              "|---|---:|---:|---:|---:|"]
    for c in classes:
        auc = results["roc_auc"].get(c)
        lines.append(f"| {c} | {_pct(pc[c]['recall'])} | {_ci(pc[c]['recall_ci95'])} | "
                     f"{pc[c]['support']} | {'n/a' if auc is None else f'{auc:.4f}'} |")
    lines += ["", "## Confusion matrix (rows: true class, columns: predicted)", "",
              "| true \\ predicted | " + " | ".join(short) + " | Total |",
              "|---|" + "---:|" * (len(classes) + 1)]
    for s, row in zip(short, results["confusion_matrix"]):
        lines.append(f"| **{s}** | " + " | ".join(str(v) for v in row) + f" | {sum(row)} |")
    lines.append("")
    if "ece" in results:
        text = f"Expected calibration error (15 bins): {100 * results['ece']:.2f}% as output"
        if "ece_calibrated" in results:
            text += f", {100 * results['ece_calibrated']:.2f}% after the bundle's temperature"
        lines += ["## Calibration", "", text + " (reliability.png).", ""]
    for name in figures:
        lines += [f"![{Path(name).stem}]({name})", ""]
    return "\n".join(lines)


def compare_markdown(result_a: dict, result_b: dict, mcnemar_result: dict,
                     names: tuple[str, str] | None = None) -> str:
    """Two models on the same test images: accuracies with CIs, per-class recall, McNemar's verdict."""
    if result_a["classes"] != result_b["classes"] or result_a["n"] != result_b["n"]:
        raise ValueError("the two results were not computed on the same test set "
                         f"(classes {result_a['classes']} vs {result_b['classes']}, "
                         f"n {result_a['n']} vs {result_b['n']}); evaluate both on the same images")
    na, nb = names or tuple(mcnemar_result.get("names", ("A", "B")))
    m = mcnemar_result
    lines = [f"# {na} vs {nb} on the same {result_a['n']} images", "",
             f"| | {na} | {nb} |", "|---|---:|---:|",
             f"| Accuracy | {_pct(result_a['accuracy'])} | {_pct(result_b['accuracy'])} |",
             f"| 95% CI | {_ci(result_a['accuracy_ci95'])} | {_ci(result_b['accuracy_ci95'])} |",
             f"| Macro F1 | {result_a['macro_avg']['f1']:.3f} | {result_b['macro_avg']['f1']:.3f} |"]
    for c in result_a["classes"]:
        lines.append(f"| Recall {c} | {_pct(result_a['per_class'][c]['recall'])} | "
                     f"{_pct(result_b['per_class'][c]['recall'])} |")
    verdict = (f"**{m['better']} is better** (p < {ALPHA:g})" if m["better"] != NO_DIFFERENCE
               else f"**{NO_DIFFERENCE}**")
    lines += ["", "## McNemar's exact test", "",
              f"- {na} right, {nb} wrong: **{m['b']}** images",
              f"- {na} wrong, {nb} right: **{m['c']}** images",
              f"- the other {m['n'] - m['b'] - m['c']} images were classified alike (both right or both wrong) "
              "and carry no information about which model is better",
              f"- exact two-sided p = {m['p_value']:.4g}: {verdict}", ""]
    return "\n".join(lines)


def format_table(results: dict, title: str | None = None) -> Table:
    """A short rich table for the terminal: per class precision, recall [CI], F1, support, accuracy."""
    from rich.table import Table

    table = Table(title=title, caption=f"accuracy {_accuracy_line(results)}")
    table.add_column("class")
    for col in ("precision", "recall", "recall 95% CI", "f1", "support"):
        table.add_column(col, justify="right")
    for c in results["classes"]:
        r = results["per_class"][c]
        table.add_row(c, f"{r['precision']:.3f}", f"{r['recall']:.3f}", _ci(r["recall_ci95"]),
                      f"{r['f1']:.3f}", str(r["support"]))
    m = results["macro_avg"]
    table.add_section()
    table.add_row("macro avg", f"{m['precision']:.3f}", f"{m['recall']:.3f}", "", f"{m['f1']:.3f}",
                  str(results["n"]))
    lo, hi = results["accuracy_ci95"]
    table.add_row("[bold]accuracy[/]", "", f"[bold]{results['accuracy']:.3f}[/]", _ci([lo, hi]), "",
                  str(results["n"]))
    return table


def reliability_bins(y_true: Sequence[int], y_prob: np.ndarray, bins: int = 15) -> list[dict]:
    """Top-1 confidence in equal-width bins: per non-empty bin its count, mean confidence and accuracy."""
    p = np.asarray(y_prob, dtype=float)
    y = np.asarray(y_true, dtype=int)
    conf, correct = p.max(axis=1), p.argmax(axis=1) == y
    index = np.minimum((conf * bins).astype(int), bins - 1)
    out = []
    for b in range(bins):
        m = index == b
        if m.any():
            out.append({"low": b / bins, "high": (b + 1) / bins, "count": int(m.sum()),
                        "confidence": float(conf[m].mean()), "accuracy": float(correct[m].mean())})
    return out


def expected_calibration_error(y_true: Sequence[int], y_prob: np.ndarray, bins: int = 15) -> float:
    """ECE (Guo et al. 2017): the count-weighted mean |accuracy - confidence| over confidence bins."""
    rows = reliability_bins(y_true, y_prob, bins)
    n = sum(r["count"] for r in rows)
    return float(sum(r["count"] * abs(r["accuracy"] - r["confidence"]) for r in rows) / n) if n else 0.0


# --------------------------------------------------------------------------- figures

def _figure(width: float, height: float):
    """A matplotlib Figure on the Agg canvas, without touching pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


@_needs_report_extra
def plot_confusion(path: Path, results: dict, title: str) -> Path:
    """Counts in each cell; colour is the row share (the recall of that cell's true class)."""
    cm = np.asarray(results["confusion_matrix"], dtype=float)
    classes = results["classes"]
    shares = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig = _figure(5.5, 4.8)
    ax = fig.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center",
                    color="white" if shares[i, j] > 0.5 else "black", fontsize=9)
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}\naccuracy {_accuracy_line(results)}", fontsize=9)
    fig.colorbar(image, ax=ax, label="share of the true class")
    fig.savefig(path)
    return path


@_needs_report_extra
def plot_roc(path: Path, y_true: Sequence[int], y_prob: np.ndarray, classes: Sequence[str], title: str) -> Path:
    """One-vs-rest ROC curve per class, AUC in the legend; absent classes are left out."""
    from sklearn.metrics import auc, roc_curve

    y, p = _labels_and_scores(y_true, y_prob, classes)
    fig = _figure(5.5, 4.8)
    ax = fig.add_subplot()
    for i, name in enumerate(classes):
        positives = y == i
        if not 0 < positives.sum() < y.size:
            continue
        fpr, tpr, _ = roc_curve(positives, p[:, i])
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc(fpr, tpr):.4f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    return _save_unit_plot(fig, ax, path, "false positive rate", "true positive rate (recall)",
                           f"{title}: one-vs-rest ROC", "lower right")


@_needs_report_extra
def plot_reliability(path: Path, y_true: Sequence[int], curves: dict[str, np.ndarray], title: str,
                     bins: int = 15) -> Path:
    """Reliability diagram: accuracy against confidence per bin, one line per set of probabilities, ECE in the legend."""
    fig = _figure(5.0, 4.6)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8, label="perfect calibration")
    for name, probs in curves.items():
        rows = reliability_bins(y_true, probs, bins)
        ece = expected_calibration_error(y_true, probs, bins)
        ax.plot([r["confidence"] for r in rows], [r["accuracy"] for r in rows], marker="o", ms=3,
                label=f"{name} (ECE {100 * ece:.2f}%)")
    return _save_unit_plot(fig, ax, path, "top-1 confidence (bin mean)", "accuracy in the bin",
                           f"{title}: reliability ({bins} bins)", "upper left")


def _save_unit_plot(fig, ax, path: Path, xlabel: str, ylabel: str, title: str, legend_loc: str) -> Path:
    """Axes of a plot of rates in [0, 1] against rates in [0, 1], labelled, then the PNG written."""
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(loc=legend_loc, fontsize=8)
    fig.savefig(path)
    return path


def read_history(history_csv: Path) -> dict[str, list[float]]:
    """Columns of a Keras CSVLogger file as float lists (empty cells become NaN)."""
    history_csv = Path(history_csv)
    if not history_csv.is_file():
        raise FileNotFoundError(f"training history {history_csv} not found; it is the CSVLogger file "
                                "the trainer writes next to the model (history.csv)")
    with history_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"training history {history_csv} has no epochs")
    columns: dict[str, list[float]] = {}
    for key in rows[0]:
        try:
            columns[key] = [float(r[key]) if r[key] not in ("", None) else math.nan for r in rows]
        except ValueError:
            continue  # a non-numeric column: not a curve
    if not {"accuracy", "loss"} & columns.keys():
        raise ValueError(f"training history {history_csv} has columns {list(rows[0])}; expected a Keras "
                         "CSVLogger file with epoch, accuracy, loss, val_accuracy, val_loss")
    return columns


@_needs_report_extra
def plot_curves(path: Path, history_csv: Path, title: str) -> Path:
    """Accuracy and loss per epoch, training and validation; dashed lines where a new phase restarts the epoch count."""
    h = read_history(history_csv)
    n = len(next(iter(h.values())))
    x = np.arange(1, n + 1)
    # Fine-tuning appended to the same log restarts Keras' epoch counter: mark each restart.
    epoch = h.get("epoch")
    restarts = [i + 1 for i in range(1, n) if epoch and epoch[i] <= epoch[i - 1]]
    fig = _figure(9, 3.8)
    for k, metric in enumerate(("accuracy", "loss")):
        ax = fig.add_subplot(1, 2, k + 1)
        for key, label in ((metric, "train"), (f"val_{metric}", "validation")):
            if key in h:
                ax.plot(x, h[key], marker="o" if n <= 30 else None, ms=3, label=label)
        for j, r in enumerate(restarts):
            ax.axvline(r - 0.5, color="grey", ls="--", lw=0.8, label=None if j else "new phase")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(metric, fontsize=9)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path)
    return path


# --------------------------------------------------------------------------- files

@_needs_report_extra
def write_report(folder: Path, results: dict, y_true: Sequence[int], y_prob: np.ndarray,
                 classes: Sequence[str], title: str, history_csv: Path | None = None,
                 calibrated: np.ndarray | None = None) -> dict[str, Path]:
    """Write results.json, report.md, confusion.png, roc.png, reliability.png and (with a history) curves.png.

    `calibrated`: the same predictions after the bundle's temperature, drawn beside the raw ones.
    Adds "ece" (and "ece_calibrated") to `results`.
    Returns {"json", "markdown", "confusion", "roc", "reliability"[, "curves"]} -> path written.
    """
    if list(results.get("classes", [])) != list(classes):
        raise ValueError(f"results are for classes {results.get('classes')}, not {list(classes)}; "
                         "pass the classes the results were computed with")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    paths["confusion"] = plot_confusion(folder / "confusion.png", results, title)
    paths["roc"] = plot_roc(folder / "roc.png", y_true, y_prob, classes, title)
    curves = {"as output": y_prob} if calibrated is None else {"raw": y_prob, "temperature-scaled": calibrated}
    results["ece"] = expected_calibration_error(y_true, y_prob)
    if calibrated is not None:
        results["ece_calibrated"] = expected_calibration_error(y_true, calibrated)
    paths["reliability"] = plot_reliability(folder / "reliability.png", y_true, curves, title)
    if history_csv is not None:
        paths["curves"] = plot_curves(folder / "curves.png", Path(history_csv), title)
    paths["json"] = folder / "results.json"
    paths["json"].write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")
    figures = [p.name for key, p in paths.items() if key in ("confusion", "roc", "reliability", "curves")]
    paths["markdown"] = folder / "report.md"
    paths["markdown"].write_text(markdown_summary(results, title, figures))
    return paths
