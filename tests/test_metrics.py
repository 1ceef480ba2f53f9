"""wbcedge.evaluation.metrics on generated predictions: figures agree with scikit-learn, CIs behave, files are valid."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="the metrics reports need the report extra: pip install 'wbcedge[report]'")

from sklearn.metrics import accuracy_score, classification_report, confusion_matrix  # noqa: E402

from wbcedge.evaluation.metrics import (
    NO_DIFFERENCE,
    classification_results,
    compare_markdown,
    format_table,
    mcnemar,
    proportion_ci,
    write_report,
)
from wbcedge.labels import CLASSES

K = len(CLASSES)


def from_confusion(cm: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """y_true and one-hot-ish scores that reproduce a confusion matrix given by hand."""
    y_true, y_pred = [], []
    for t, row in enumerate(cm):
        for p, count in enumerate(row):
            y_true += [t] * count
            y_pred += [p] * count
    y_prob = np.full((len(y_true), K), 0.02)
    y_prob[np.arange(len(y_true)), y_pred] = 0.92
    return np.array(y_true), y_prob


HAND_CM = [  # 500 images, 100 per class, like the paper's test split
    [99, 0, 0, 1, 0],
    [0, 97, 0, 0, 3],
    [0, 0, 96, 4, 0],
    [0, 1, 5, 94, 0],
    [0, 2, 0, 1, 97],
]


@pytest.fixture(scope="module")
def random_case():
    rng = np.random.default_rng(7)
    n = 400
    y_true = rng.integers(0, K, n)
    logits = rng.normal(size=(n, K))
    logits[np.arange(n), y_true] += 2.0  # a decent but imperfect model
    y_prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y_true, y_prob


# ----------------------------------------------------------------- proportion_ci

def test_clopper_pearson_known_values():
    lo, hi = proportion_ci(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.3085, abs=1e-4)
    lo, hi = proportion_ci(10, 10)
    assert hi == 1.0 and lo == pytest.approx(1 - 0.3085, abs=1e-4)
    lo, hi = proportion_ci(5, 10)
    assert (lo, hi) == pytest.approx((0.1871, 0.8129), abs=1e-4)


def test_ci_contains_estimate_and_narrows_with_n():
    widths = []
    for n in (50, 500, 5000):
        k = round(0.98 * n)
        lo, hi = proportion_ci(k, n)
        assert lo <= k / n <= hi
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]
    assert proportion_ci(49, 50, level=0.99)[0] < proportion_ci(49, 50, level=0.95)[0]


def test_ci_edge_cases():
    assert proportion_ci(0, 0) == (0.0, 1.0)  # nothing measured: the device's convention
    with pytest.raises(ValueError, match="successes"):
        proportion_ci(11, 10)
    with pytest.raises(ValueError, match="level"):
        proportion_ci(1, 10, level=95)


# ----------------------------------------------------------------- classification_results

def test_hand_built_confusion_matches_sklearn():
    y_true, y_prob = from_confusion(HAND_CM)
    r = classification_results(y_true, y_prob, CLASSES)
    assert r["n"] == 500
    assert r["confusion_matrix"] == HAND_CM
    assert r["accuracy"] == pytest.approx((99 + 97 + 96 + 94 + 97) / 500)
    lo, hi = r["accuracy_ci95"]
    assert lo < r["accuracy"] < hi
    # monocyte: 94 of 100 right; predicted 100 times of which 94 right
    m = r["per_class"]["monocyte"]
    assert m["recall"] == pytest.approx(0.94) and m["precision"] == pytest.approx(94 / 100)
    assert m["support"] == 100
    assert m["recall_ci95"] == pytest.approx(list(proportion_ci(94, 100)))
    assert r["classes"] == list(CLASSES)


def test_random_predictions_match_sklearn(random_case):
    y_true, y_prob = random_case
    r = classification_results(y_true, y_prob, CLASSES)
    y_pred = y_prob.argmax(axis=1)
    ref = classification_report(y_true, y_pred, labels=range(K), target_names=CLASSES,
                                output_dict=True, zero_division=0)
    assert r["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    for c in CLASSES:
        for key, ref_key in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score")):
            assert r["per_class"][c][key] == pytest.approx(ref[c][ref_key])
        assert r["per_class"][c]["support"] == ref[c]["support"]
    for avg in ("macro", "weighted"):
        assert r[f"{avg}_avg"]["f1"] == pytest.approx(ref[f"{avg} avg"]["f1-score"])
        assert r[f"{avg}_avg"]["precision"] == pytest.approx(ref[f"{avg} avg"]["precision"])
    assert r["confusion_matrix"] == confusion_matrix(y_true, y_pred).tolist()
    assert all(0.5 < auc <= 1.0 for auc in r["roc_auc"].values())
    # plain Python types only: survives a strict JSON round trip
    assert json.loads(json.dumps(r, allow_nan=False)) == r


def test_absent_class_gives_none_not_nan():
    cm = [row[:] for row in HAND_CM]
    cm[0] = [0, 0, 0, 0, 0]  # no basophils in this test set
    y_true, y_prob = from_confusion(cm)
    r = classification_results(y_true, y_prob, CLASSES)
    assert r["per_class"]["basophil"]["support"] == 0
    assert r["per_class"]["basophil"]["recall_ci95"] is None
    assert r["roc_auc"]["basophil"] is None
    json.dumps(r, allow_nan=False)


def test_bad_inputs_say_what_to_fix():
    y_true, y_prob = from_confusion(HAND_CM)
    with pytest.raises(ValueError, match="one row of 5 class scores"):
        classification_results(y_true, y_prob.argmax(axis=1), CLASSES)
    with pytest.raises(ValueError, match="labels must be 0..4"):
        classification_results(y_true + 1, y_prob, CLASSES)
    with pytest.raises(ValueError, match="empty"):
        classification_results([], np.zeros((0, K)), CLASSES)


# ----------------------------------------------------------------- McNemar

def test_mcnemar_identical_models():
    y_true, y_prob = from_confusion(HAND_CM)
    m = mcnemar(y_true, y_prob, y_prob.argmax(axis=1))
    assert m["b"] == m["c"] == 0
    assert m["p_value"] == 1.0
    assert m["better"] == NO_DIFFERENCE
    assert m["accuracy_a"] == m["accuracy_b"]


def test_mcnemar_one_model_strictly_better():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, K, 500)
    pred_a = y_true.copy()
    pred_b = y_true.copy()
    wrong = rng.choice(500, 30, replace=False)
    pred_b[wrong] = (y_true[wrong] + 1) % K  # B misses 30 images A gets right
    m = mcnemar(y_true, pred_a, pred_b, names=("resnet", "mobilenet"))
    assert (m["b"], m["c"]) == (30, 0)
    assert m["p_value"] < 1e-6
    assert m["better"] == "resnet"
    assert m["accuracy_a_ci95"][0] <= m["accuracy_a"] <= m["accuracy_a_ci95"][1]
    assert mcnemar(y_true, pred_b, pred_a, names=("x", "y"))["better"] == "y"


def test_mcnemar_few_discordant_is_not_significant():
    y_true = np.zeros(500, dtype=int)
    pred_a, pred_b = y_true.copy(), y_true.copy()
    pred_b[:5] = 1  # 99.0% vs 100.0%: a full point apart, yet only 5 discordant images
    m = mcnemar(y_true, pred_a, pred_b)
    assert m["p_value"] == pytest.approx(2 * 0.5 ** 5)
    assert m["better"] == NO_DIFFERENCE


# ----------------------------------------------------------------- report files

def _history(path):
    lines = ["epoch,accuracy,loss,val_accuracy,val_loss"]
    for e in range(6):
        lines.append(f"{e},{0.6 + 0.06 * e},{1.2 - 0.15 * e},{0.58 + 0.06 * e},{1.25 - 0.14 * e}")
    for e in range(3):  # a fine-tuning phase appended: Keras restarts the epoch counter
        lines.append(f"{e},{0.95 + 0.01 * e},{0.2 - 0.02 * e},{0.94 + 0.01 * e},{0.22 - 0.02 * e}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_write_report_files(tmp_path, random_case):
    import matplotlib.image

    y_true, y_prob = random_case
    r = classification_results(y_true, y_prob, CLASSES)
    paths = write_report(tmp_path / "eval", r, y_true, y_prob, CLASSES, "test model",
                         history_csv=_history(tmp_path / "history.csv"))
    assert set(paths) == {"json", "markdown", "confusion", "roc", "reliability", "curves"}
    for key in ("confusion", "roc", "reliability", "curves"):
        image = matplotlib.image.imread(paths[key])
        assert image is not None and image.shape[0] > 200 and image.shape[1] > 200
        assert image.std() > 0.01  # not a blank canvas
    assert json.loads(paths["json"].read_text()) == r
    md = paths["markdown"].read_text()
    assert "| Metric | B | E | L | M | N | Total |" in md
    assert "| Precision |" in md and "| Recall |" in md and "| F1-score |" in md
    assert "95% CI" in md and "confusion.png" in md
    assert "reliability.png" in md and f"{100 * r['ece']:.2f}%" in md and 0 <= r["ece"] <= 1
    for row in r["confusion_matrix"]:
        assert " | ".join(str(v) for v in row) in md


def test_write_report_without_history(tmp_path):
    y_true, y_prob = from_confusion(HAND_CM)
    r = classification_results(y_true, y_prob, CLASSES)
    paths = write_report(tmp_path, r, y_true, y_prob, CLASSES, "hand")
    assert "curves" not in paths and not (tmp_path / "curves.png").exists()
    assert all(p.stat().st_size > 1000 for p in paths.values())


def test_terminal_table_and_compare(random_case):
    from rich.console import Console

    y_true, y_prob = random_case
    r = classification_results(y_true, y_prob, CLASSES)
    console = Console(record=True, width=120)
    console.print(format_table(r, title="test"))
    text = console.export_text()
    assert all(c in text for c in CLASSES) and "accuracy" in text

    perfect = np.eye(K)[y_true]
    m = mcnemar(y_true, perfect, y_prob, names=("oracle", "model"))
    md = compare_markdown(classification_results(y_true, perfect, CLASSES), r, m)
    assert "oracle is better" in md and str(m["b"]) in md
