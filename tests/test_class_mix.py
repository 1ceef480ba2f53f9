"""The differential for the sample's class mix (wbcedge.device.class_mix): an EM estimate over a session's cells.

The cells are generated: each class draws a feature from its own Gaussian, so each cell's
probabilities under an even prior (what class-weighted training aims at) are exact Bayes posteriors,
and the sample's true mix is known."""

import json
import sqlite3
from html import escape
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from wbcedge.device.class_mix import MIN_CELLS, estimate_mix, mix_differential
from wbcedge.device.records import DB_FILE, Recorder, read_cells
from wbcedge.device.report import MIX_HEADER, format_differential, write_session_outputs

CLASSES = ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"]
BLOOD = np.array([0.01, 0.03, 0.30, 0.06, 0.60])     # a normal adult differential
CENTRES = np.array([[0, 3], [3, 3], [0, 0], [1.5, 1.0], [3, 0]], float)   # monocytes between lymphocytes and neutrophils


def cells_of(mix: np.ndarray, n: int, seed: int, spread: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities under an even prior, true classes) of n cells drawn with class shares `mix`."""
    rng = np.random.default_rng(seed)
    y = rng.choice(len(mix), size=n, p=mix)
    x = CENTRES[y] + rng.normal(0, spread, (n, 2))
    log_lik = -0.5 * ((x[:, None, :] - CENTRES[None]) ** 2).sum(-1) / spread ** 2
    p = np.exp(log_lik - log_lik.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True), y


def test_em_recovers_a_blood_like_mix_that_counting_top_classes_gets_wrong():
    probs, y = cells_of(BLOOD, 3000, seed=1)
    true = np.bincount(y, minlength=5) / len(y)
    counted = np.bincount(probs.argmax(1), minlength=5) / len(y)
    est = estimate_mix(probs)
    assert est.converged and est.mix.sum() == pytest.approx(1.0)
    assert np.abs(counted - true).max() > 0.05                 # the even-prior model over-counts monocytes
    assert counted[3] > 2 * true[3]
    assert np.abs(est.mix - true).max() < 0.02
    assert est.adjusted.shape == probs.shape and np.allclose(est.adjusted.sum(1), 1.0)
    # the adjusted probabilities call more cells right than the even-prior ones (Bayes for the sample's mix)
    assert (est.adjusted.argmax(1) == y).mean() > (probs.argmax(1) == y).mean()


def test_an_even_sample_stays_even_and_the_trained_prior_is_respected():
    even = np.full(5, 0.2)
    probs, y = cells_of(even, 3000, seed=2)
    assert np.abs(estimate_mix(probs).mix - np.bincount(y, minlength=5) / len(y)).max() < 0.02
    # probabilities made under the blood prior, on a blood sample: told so, EM leaves the mix where it is
    blood_probs, yb = cells_of(BLOOD, 3000, seed=3)
    under_blood = blood_probs * BLOOD
    under_blood /= under_blood.sum(1, keepdims=True)
    told = estimate_mix(under_blood, trained_prior=BLOOD).mix
    assert np.abs(told - np.bincount(yb, minlength=5) / len(yb)).max() < 0.02
    # not told, it takes them for even-prior probabilities and pushes the majority further up
    assert estimate_mix(under_blood).mix[4] > told[4] + 0.05


def test_mix_differential_gives_percent_and_a_bootstrap_interval_that_narrows_with_more_cells():
    small = mix_differential(*cells_of(BLOOD, 60, seed=4)[:1], CLASSES, rounds=100)
    large = mix_differential(*cells_of(BLOOD, 1500, seed=4)[:1], CLASSES, rounds=100)
    for d in (small, large):
        assert sum(t["percent"] for t in d["types"].values()) == pytest.approx(100.0)
        for t in d["types"].values():
            assert t["ci_low"] - 1e-9 <= t["percent"] <= t["ci_high"] + 1e-9
    width = lambda d: d["types"]["neutrophil"]["ci_high"] - d["types"]["neutrophil"]["ci_low"]
    assert width(large) < width(small) / 2
    assert large["cells"] == 1500 and "EM" in large["method"]
    # the same cells and seed give the same interval
    assert mix_differential(*cells_of(BLOOD, 60, seed=4)[:1], CLASSES, rounds=100) == small


def test_too_few_cells_give_no_estimate_and_bad_input_is_refused_with_its_shape():
    probs, _ = cells_of(BLOOD, MIN_CELLS - 1, seed=5)
    assert mix_differential(probs, CLASSES) is None
    with pytest.raises(ValueError, match="5 probabilities per cell for 4 classes"):
        mix_differential(cells_of(BLOOD, 50, seed=5)[0], CLASSES[:4])
    with pytest.raises(ValueError, match="N x K"):
        estimate_mix(np.zeros((0, 5)))
    with pytest.raises(ValueError, match="trained_prior needs 5 positive shares"):
        estimate_mix(probs, trained_prior=[0.5, 0.5, 0, 0, 0])


def _session(run: Path, probs: np.ndarray | None, n: int, calibrated: bool = True) -> Path:
    """A session of n cells as `wbcedge run` records them (meta as the runner writes it from the bundle)."""
    with Recorder(run) as rec:
        rec.set_meta("classes", CLASSES)
        rec.set_meta("calibration", {"temperature": 0.9, "fitted_on": "val", "images": 1660} if calibrated else
                     {"temperature": 1.0, "fitted_on": None, "note": "13 labelled validation images (need 20)"})
        for i in range(n):
            p = None if probs is None else probs[i]
            label = CLASSES[int(np.argmax(p))] if p is not None else "neutrophil"
            rec.add_cell(i, f"frame{i:03d}", (0, 0, 40, 40), label, 0.9, None, probs=p)
            rec.commit_frame(i, f"frame{i:03d}")
    return run


def test_a_session_stores_each_cells_probabilities_and_reports_the_count_for_its_mix(tmp_path):
    probs, y = cells_of(BLOOD, 400, seed=6)
    run = _session(tmp_path / "s", probs, len(probs))
    cells = read_cells(run)
    assert np.allclose([c.probs for c in cells], probs, atol=1e-6)
    write_session_outputs(run)
    doc = json.loads((run / "differential.json").read_text())["differential"]
    mix = doc["class_mix"]
    assert mix["cells"] == 400
    true = 100 * np.bincount(y, minlength=5) / len(y)
    counted = [doc["types"][c]["percent"] for c in CLASSES]
    corrected = [mix["types"][c]["percent"] for c in CLASSES]
    assert np.abs(np.subtract(corrected, true)).max() < np.abs(np.subtract(counted, true)).max()
    assert mix["types"]["monocyte"]["ci_low"] <= true[3] <= mix["types"]["monocyte"]["ci_high"]
    html = (run / "report.html").read_text()
    assert escape(MIX_HEADER) in html and "EM" in html
    console = Console(width=200, record=True)
    console.print(format_differential(doc))
    assert "for this sample's mix" in console.export_text()


def test_sessions_without_probabilities_or_with_few_cells_report_no_mix(tmp_path):
    few = _session(tmp_path / "few", cells_of(BLOOD, MIN_CELLS - 1, seed=7)[0], MIN_CELLS - 1)
    write_session_outputs(few)
    doc = json.loads((few / "differential.json").read_text())["differential"]
    assert doc["class_mix"] is None and doc["class_mix_note"].startswith("not given: fewer than 20 cells")
    # a run folder of schema 3 (no probs column) still reads, without an estimate
    old = tmp_path / "old"
    _session(old, None, 30)
    db = sqlite3.connect(str(old / DB_FILE))
    db.execute("ALTER TABLE cells DROP COLUMN probs")
    db.commit()
    db.close()
    assert all(c.probs is None for c in read_cells(old)) and len(read_cells(old)) == 30
    write_session_outputs(old)
    doc = json.loads((old / "differential.json").read_text())["differential"]
    assert doc["class_mix"] is None and doc["types"]["neutrophil"]["count"] == 30
    assert doc["class_mix_note"].startswith("not available: this session's cells were recorded without")
    assert escape(MIX_HEADER) not in (old / "report.html").read_text()


def test_a_bundle_without_calibrated_confidences_gets_no_mix_and_the_reason(tmp_path):
    """EM needs calibrated probabilities: on BCCD, adapted bundles without a fitted temperature made the
    count better once and worse once in three sets of labelled cells (docs/runner.md)."""
    probs, _ = cells_of(BLOOD, 200, seed=9)
    run = _session(tmp_path / "uncalibrated", probs, len(probs), calibrated=False)
    write_session_outputs(run)
    doc = json.loads((run / "differential.json").read_text())["differential"]
    assert doc["class_mix"] is None and "not calibrated" in doc["class_mix_note"]
    assert "class mix are withheld: the bundle&#x27;s confidences are not calibrated" in (run / "report.html").read_text()


def test_under_a_domain_shift_alarm_the_mix_is_withheld_with_the_reason(tmp_path):
    """The estimate assumes only the mix changed; an alarm says the cells themselves look unlike the
    training data (on BCCD the built-in model's re-estimated count was further off than its plain count)."""
    probs, _ = cells_of(BLOOD, 200, seed=8)
    run = tmp_path / "shifted"
    _session(run, probs, len(probs))
    with sqlite3.connect(str(run / DB_FILE)) as db:
        alarm = {"alarm": True, "judged": True, "cells": 200, "score": 7.1, "threshold": 3.0,
                 "cells_beyond_cell_threshold": 80}
        db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('domain_shift', ?)", (json.dumps(alarm),))
    write_session_outputs(run)
    doc = json.loads((run / "differential.json").read_text())["differential"]
    assert doc["class_mix"] is None and doc["class_mix_note"].startswith("withheld: the domain-shift alarm fired")
    assert doc["types"]["neutrophil"]["flag"] == ""
