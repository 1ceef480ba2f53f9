"""`wbcedge report` writes what `wbcedge run` and the review sign-off wrote: one writer, nothing lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from review_support import copy_session
from typer.testing import CliRunner

from wbcedge.cli import app
from wbcedge.device.records import read_cells, read_meta

runner = CliRunner()


@pytest.fixture(scope="module")
def counted(tmp_path_factory) -> Path:
    """`wbcedge run` on the built-in sample frames, into a tmp folder."""
    out = tmp_path_factory.mktemp("run") / "session"
    res = runner.invoke(app, ["run", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


def report_files(session: Path) -> tuple[dict, str]:
    return (json.loads((session / "differential.json").read_text(encoding="utf-8")),
            (session / "report.html").read_text(encoding="utf-8"))


def test_report_keeps_the_domain_shift_result_and_the_run_facts(counted, tmp_path):
    session = copy_session(counted, tmp_path / "session")
    before, _ = report_files(session)
    assert before["domain_shift"]["cells"] > 0
    (session / "differential.json").unlink()
    res = runner.invoke(app, ["report", str(session)])
    assert res.exit_code == 0, res.output
    after, html = report_files(session)
    assert after["domain_shift"] == before["domain_shift"]
    assert after["differential"] == before["differential"]
    assert set(before["meta"]) <= set(after["meta"])  # timing, frames, model facts... all back
    assert after["meta"]["timing"] == before["meta"]["timing"] and after["meta"]["rebuilt_from_database"]
    shift_shown = "DOMAIN SHIFT" in html if before["domain_shift"].get("alarm") else 'id="domain-shift"' in html
    assert shift_shown


def test_report_keeps_a_signed_off_review(counted, tmp_path):
    pytest.importorskip("fastapi", reason="the web extra is not installed: pip install 'wbcedge[web]'")
    from fastapi.testclient import TestClient

    from wbcedge.device.review.app import create_app

    session = copy_session(counted, tmp_path / "session")
    client = TestClient(create_app(session))
    first = client.get("/api/cells").json()["cells"][0]
    assert client.post(f"/api/cells/{first['id']}/label", json={"label": "artefact", "reviewer": "Dr. B"}).status_code == 200
    assert client.post("/api/signoff", json={"reviewer": "Dr. B", "accept_remaining": True}).status_code == 200
    signed, signed_html = report_files(session)
    assert signed["review"]["signoff"]["reviewer"] == "Dr. B" and "signed off by <b>Dr. B</b>" in signed_html

    for name in ("differential.json", "differential.csv", "report.html"):
        (session / name).unlink()
    res = runner.invoke(app, ["report", str(session)])
    assert res.exit_code == 0, res.output
    assert "signed off by Dr. B" in res.output
    rebuilt, html = report_files(session)
    assert rebuilt["review"] == signed["review"]
    assert rebuilt["differential"] == signed["differential"]  # the reviewer's labels, not the model's
    assert rebuilt["review"]["artefacts"] == 1 and rebuilt["review"]["reviewed_cells"] == rebuilt["review"]["total_cells"]
    assert rebuilt["domain_shift"] == signed["domain_shift"]
    assert "signed off by <b>Dr. B</b>" in html and 'id="review"' in html
    assert "cohen_kappa" in (session / "differential.csv").read_text(encoding="utf-8")


def test_a_session_recorded_before_cells_db_kept_every_fact_keeps_them_from_its_files(counted, tmp_path):
    """Sessions recorded before cells.db held the run facts and the shift result have them only in
    differential.json: rewriting the files (a sign-off, `wbcedge report`) must not drop them."""
    import sqlite3

    session = copy_session(counted, tmp_path / "session")
    before, _ = report_files(session)
    with sqlite3.connect(session / "cells.db") as db:   # what an older session's database holds
        db.execute("DELETE FROM meta WHERE key IN ('domain_shift', 'timing')")
    res = runner.invoke(app, ["report", str(session)])
    assert res.exit_code == 0, res.output
    after, _ = report_files(session)
    assert after["domain_shift"] == before["domain_shift"] and after["meta"]["timing"] == before["meta"]["timing"]
    # what the database holds wins over the earlier file
    with sqlite3.connect(session / "cells.db") as db:
        db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('um_per_px', '0.5')")
    assert runner.invoke(app, ["report", str(session)]).exit_code == 0
    assert report_files(session)[0]["meta"]["um_per_px"] == 0.5


def test_a_missing_session_is_an_input_error_as_review_says_it(tmp_path):
    for command in (["report", str(tmp_path / "nope")], ["review", "open", str(tmp_path / "nope"), "--no-browser"]):
        res = runner.invoke(app, command)
        assert res.exit_code == 2 and "nope" in res.output and "wbcedge run" in res.output, (command, res.output)


def test_the_runner_records_each_cells_calibrated_probabilities(counted):
    """What the count for the sample's mix is estimated from (schema 4): one probability per class, the
    top one the cell's recorded confidence; the built-in frames raise the shift alarm, so no mix is given."""
    cells = read_cells(counted)
    meta = read_meta(counted)
    assert cells and all(c.probs is not None and len(c.probs) == len(meta["classes"]) for c in cells)
    for c in cells:
        assert sum(c.probs) == pytest.approx(1.0, abs=1e-4) and max(c.probs) == pytest.approx(c.confidence, abs=1e-5)
        if c.label != "unidentified":
            assert meta["classes"][c.probs.index(max(c.probs))] == c.label
    doc, _ = report_files(counted)
    assert doc["differential"]["class_mix"] is None and doc["differential"]["class_mix_note"].startswith("withheld")
