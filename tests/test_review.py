"""The review station: audit rows, sign-off, the reviewed report, agreement, bad input, concurrency, export."""

from __future__ import annotations

import csv
import json
import random
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from review_support import copy_session, count_builtin_session, generated_session

from wbcedge.device.records import SCHEMA_VERSION, read_cells
from wbcedge.device.review.agreement import agreement, cohen_kappa
from wbcedge.device.review.store import REVIEW_LABELS, NewerSessionError, NotASessionError, ReviewStore
from wbcedge.errors import InputDataError, MissingDependencyError

fastapi = pytest.importorskip("fastapi", reason="the web extra is not installed: pip install 'wbcedge[web]'")
from fastapi.testclient import TestClient

from wbcedge.device.review.app import TOKEN_HEADER, create_app


@pytest.fixture(scope="module")
def builtin_session(tmp_path_factory) -> Path:
    return count_builtin_session(tmp_path_factory.mktemp("builtin") / "session")


@pytest.fixture
def session(builtin_session, tmp_path) -> Path:
    return copy_session(builtin_session, tmp_path / "session")


def rows(session: Path, sql: str) -> list[tuple]:
    db = sqlite3.connect(str(session / "cells.db"))
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


# ---------------------------------------------------------------- agreement

@pytest.mark.parametrize("seed", range(6))
def test_kappa_matches_sklearn(seed):
    cohen_kappa_score = pytest.importorskip("sklearn.metrics", reason="scikit-learn (report extra) is the "
                                            "reference; the device-only install lacks it").cohen_kappa_score

    rng = random.Random(seed)
    n = rng.randint(1, 300)
    a = [rng.choice(REVIEW_LABELS[: rng.randint(1, 7)]) for _ in range(n)]
    b = [x if rng.random() < 0.7 else rng.choice(REVIEW_LABELS) for x in a]
    ours, theirs = cohen_kappa(a, b), cohen_kappa_score(a, b)
    if np.isnan(theirs):  # both raters used one and the same label: sklearn says nan, we say perfect
        assert ours == 1.0 and set(a) == set(b) and len(set(a)) == 1
    else:
        assert ours == pytest.approx(theirs, abs=1e-12)


def test_agreement_counts_per_label():
    a = agreement(["neutrophil", "neutrophil", "monocyte", "unidentified"],
                  ["neutrophil", "monocyte", "monocyte", "artefact"], REVIEW_LABELS)
    assert a["agreed"] == 2 and a["cells"] == 4
    assert a["per_label"]["neutrophil"] == {"reviewed": 1, "model": 2, "agreed": 1, "recall": 1.0, "precision": 0.5}
    assert a["per_label"]["monocyte"]["recall"] == 0.5
    assert cohen_kappa([], []) is None


# ---------------------------------------------------------------- the API on a real session

def test_relabel_appends_audit_rows_and_recomputes_the_differential(session):
    client = TestClient(create_app(session))
    cells = client.get("/api/cells").json()
    assert cells["total"] == len(read_cells(session)) >= 6
    first = cells["cells"][0]
    # grouped by the model's label in report order, least confident first within a group
    order = [(REVIEW_LABELS.index(c["model_label"]), c["confidence"]) for c in cells["cells"]]
    assert order == sorted(order)
    before = client.get("/api/differential").json()
    new = "basophil" if first["model_label"] != "basophil" else "eosinophil"
    r = client.post(f"/api/cells/{first['id']}/label", json={"label": new, "reviewer": "A. Tech", "comment": "granules"})
    assert r.status_code == 200, r.text
    assert r.json()["cell"]["label"] == new and r.json()["cell"]["model_label"] == first["model_label"]
    after = r.json()["summary"]
    assert after["reviewed_cells"] == 1
    assert after["differential"]["types"][new]["count"] == before["differential"]["types"][new]["count"] + 1
    assert after["model_differential"] == before["model_differential"]
    r = client.post(f"/api/cells/{first['id']}/label", json={"label": "artefact", "reviewer": "B. Tech"})
    assert r.json()["summary"]["artefacts"] == 1
    assert r.json()["summary"]["differential"]["total_cells"] == cells["total"] - 1  # artefacts leave the count
    audit = rows(session, "SELECT cell_id, previous_label, new_label, reviewer, comment FROM reviews ORDER BY id")
    assert audit == [(first["id"], first["model_label"], new, "A. Tech", "granules"),
                     (first["id"], new, "artefact", "B. Tech", "")]
    # the model's label and confidence are never overwritten
    assert rows(session, f"SELECT label, confidence FROM cells WHERE id={first['id']}") == \
        [(first["model_label"], first["confidence"])]


def test_signoff_freezes_and_rewrites_the_report(session):
    client = TestClient(create_app(session))
    listed = client.get("/api/cells").json()["cells"]
    ids = [c["id"] for c in listed]
    first_model = listed[0]["model_label"]
    client.post(f"/api/cells/{ids[0]}/label", json={"label": "eosinophil", "reviewer": "A"})
    r = client.post("/api/signoff", json={"reviewer": "A"})
    assert r.status_code == 422 and "not reviewed yet" in r.json()["detail"]
    assert client.post("/api/signoff", json={"reviewer": " ", "accept_remaining": True}).status_code == 422
    r = client.post("/api/signoff", json={"reviewer": "Dr. B", "accept_remaining": True})
    assert r.status_code == 200, r.text
    s = r.json()
    assert s["reviewed_cells"] == s["total_cells"] == len(ids)
    assert rows(session, "SELECT reviewer FROM signoff") == [("Dr. B",)]
    assert rows(session, "SELECT count(*) FROM reviews WHERE comment = 'accepted at sign-off'") == [(len(ids) - 1,)]
    # frozen
    r = client.post(f"/api/cells/{ids[1]}/label", json={"label": "monocyte", "reviewer": "A"})
    assert r.status_code == 409 and "signed off by Dr. B" in r.json()["detail"]
    assert client.post("/api/signoff", json={"reviewer": "C", "accept_remaining": True}).status_code == 409
    assert rows(session, "SELECT count(*) FROM reviews") == [(len(ids),)]
    # the report now carries the reviewed differential, the model's and the agreement
    doc = json.loads((session / "differential.json").read_text())
    assert doc["differential"]["types"]["eosinophil"]["count"] == doc["review"]["model_differential"]["types"][
        "eosinophil"]["count"] + (0 if s["agreement"]["agreed"] == len(ids) else 1)
    assert doc["review"]["signoff"]["reviewer"] == "Dr. B"
    assert doc["review"]["agreement"]["cohen_kappa"] == pytest.approx(s["agreement"]["cohen_kappa"])
    table = list(csv.reader((session / "differential.csv").read_text().splitlines()))
    assert table[0][-4:] == ["model_count", "model_percent", "agreed", "model_recall_percent"]
    assert table[-1][0] == "cohen_kappa" and float(table[-1][1]) == pytest.approx(s["agreement"]["cohen_kappa"], abs=1e-4)
    page = (session / "report.html").read_text()
    if first_model != "eosinophil":  # the gallery groups by the reviewed label and names the model's
        assert f"model: {first_model}" in page.split('id="eosinophil"')[1].split("</div>")[0]
    assert "signed off by <b>Dr. B</b>" in page and "Cohen&#x27;s kappa" not in page and "Cohen's kappa" in page


def test_bad_input_gets_one_clear_error_each(session, tmp_path):
    client = TestClient(create_app(session))
    cid = client.get("/api/cells").json()["cells"][0]["id"]
    r = client.post(f"/api/cells/{cid}/label", json={"label": "platelet", "reviewer": "A"})
    assert r.status_code == 422 and "not a label a reviewer can give" in r.json()["detail"]
    r = client.post(f"/api/cells/{cid}/label", json={"label": "monocyte", "reviewer": ""})
    assert r.status_code == 422 and "reviewer's name is empty" in r.json()["detail"]
    r = client.post("/api/cells/999999/label", json={"label": "monocyte", "reviewer": "A"})
    assert r.status_code == 404 and "no cell 999999" in r.json()["detail"]
    assert rows(session, "SELECT count(*) FROM reviews") == [(0,)]
    # not a session folder
    with pytest.raises(NotASessionError, match="not a counting session"):
        ReviewStore(tmp_path)
    with pytest.raises(NotASessionError, match="not a folder"):
        ReviewStore(tmp_path / "missing")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "cells.db").write_text("not a database")
    with pytest.raises(NotASessionError, match="cannot be read"):
        ReviewStore(tmp_path / "junk")
    # a database from a newer wbcedge
    db = sqlite3.connect(str(session / "cells.db"))
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (json.dumps(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    with pytest.raises(NewerSessionError, match="newer wbcedge"):
        ReviewStore(session)


def test_cli_errors_are_one_line(tmp_path):
    res = subprocess.run([sys.executable, "-m", "wbcedge", "review", str(tmp_path), "--no-browser"],
                         capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "not a counting session" in res.stderr


def test_missing_web_extra_is_one_clear_error(monkeypatch):
    import importlib.util

    from wbcedge.device.review import require_web

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "fastapi" else real(name, *a))
    with pytest.raises(MissingDependencyError, match=r"wbcedge\[web\]"):
        require_web()


def test_a_session_recorded_before_reviews_existed_opens(session):
    assert "reviews" not in {r[0] for r in rows(session, "SELECT name FROM sqlite_master")}
    store = ReviewStore(session)
    assert {"reviews", "signoff"} <= {r[0] for r in rows(session, "SELECT name FROM sqlite_master")}
    assert store.summary()["reviewed_cells"] == 0 and store.signoff() is None
    ReviewStore(session)  # opening again changes nothing


def test_concurrent_reviewers_lose_no_change(tmp_path):
    session = generated_session(tmp_path / "s", 20)
    ids = [c["id"] for c in ReviewStore(session).cells()]
    labels = ["neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil"]

    def reviewer(name: str, seed: int) -> None:
        store, rng = ReviewStore(session), random.Random(seed)
        for _ in range(40):
            store.set_label(rng.choice(ids[:5]), rng.choice(labels), name)

    threads = [threading.Thread(target=reviewer, args=(f"R{i}", i)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    audit = ReviewStore(session).history()
    assert len(audit) == 160
    for cid in ids[:5]:
        chain = [a for a in audit if a["cell_id"] == cid]
        model = ReviewStore(session).cell(cid)["model_label"]
        # every change saw the one before it: previous_label links the rows without a gap
        assert [a["previous_label"] for a in chain] == [model] + [a["new_label"] for a in chain[:-1]]
        assert ReviewStore(session).cell(cid)["label"] == chain[-1]["new_label"]  # last write wins


def test_token_is_required_for_writes_only(session):
    client = TestClient(create_app(session, token="s3cret"))
    cid = client.get("/api/cells").json()["cells"][0]["id"]  # reads stay open
    body = {"label": "monocyte", "reviewer": "A"}
    r = client.post(f"/api/cells/{cid}/label", json=body)
    assert r.status_code == 403 and "access token" in r.json()["detail"]
    assert client.post(f"/api/cells/{cid}/label", json=body, headers={TOKEN_HEADER: "wrong"}).status_code == 403
    assert client.post("/api/signoff", json={"reviewer": "A", "accept_remaining": True}).status_code == 403
    assert client.post(f"/api/cells/{cid}/label", json=body, headers={TOKEN_HEADER: "s3cret"}).status_code == 200
    assert client.post(f"/api/cells/{cid}/label?token=s3cret", json=body).status_code == 200


def test_page_crops_and_frames(session):
    client = TestClient(create_app(session))
    page = client.get("/")
    assert page.status_code == 200 and "static/review.js" in page.text and session.name in page.text
    assert client.get("/static/review.js").status_code == 200
    c = client.get("/api/cells").json()["cells"][0]
    crop = client.get(f"/crops/{c['id']}.jpg")
    assert crop.status_code == 200 and crop.content == (session / read_cells(session)[c["id"] - 1].crop_path).read_bytes()
    frame = client.get(f"/frames/{c['id']}.jpg")  # the built-in frames are on disk: the box is drawn on its frame
    assert frame.status_code == 200
    image = cv2.imdecode(np.frombuffer(frame.content, np.uint8), cv2.IMREAD_COLOR)
    x0, y0, _, y1 = c["box"]
    src = cv2.imread(str(Path(ReviewStore(session).meta()["source"]) / c["frame_name"]))
    assert image.shape == src.shape
    edge = image[max(y0, 1):y1, x0:x0 + 2].astype(int)
    assert edge[..., 2].mean() > 180 and edge[..., 1].mean() > 180 and edge[..., 0].mean() < 90  # yellow (BGR)
    assert client.get("/frames/999999.jpg").status_code == 404
    assert client.get("/api/cells?limit=0").status_code == 422


def test_frame_missing_falls_back(tmp_path):
    session = generated_session(tmp_path / "s", 3)
    client = TestClient(create_app(session))
    r = client.get("/frames/1.jpg")
    assert r.status_code == 404 and "only the crop" in r.json()["detail"]
    assert client.get("/crops/1.jpg").status_code == 200


def test_cells_paginate(tmp_path):
    session = generated_session(tmp_path / "s", 130)
    client = TestClient(create_app(session))
    pages = [client.get(f"/api/cells?offset={o}&limit=50").json() for o in (0, 50, 100)]
    assert [len(p["cells"]) for p in pages] == [50, 50, 30] and pages[0]["total"] == 130
    ids = [c["id"] for p in pages for c in p["cells"]]
    assert sorted(ids) == list(range(1, 131))


# ---------------------------------------------------------------- export

def test_export_writes_a_class_tree_and_a_readable_manifest(tmp_path):
    from wbcedge.data.manifest import read_manifest
    from wbcedge.device.review.export import export_reviewed

    a, b = generated_session(tmp_path / "a", 12, seed=1), generated_session(tmp_path / "b", 8, seed=2)
    sa, sb = ReviewStore(a), ReviewStore(b)
    sa.set_label(1, "eosinophil", "A")
    sa.set_label(2, "artefact", "A")
    sa.set_label(3, "unidentified", "A")
    sb.set_label(4, "basophil", "B")
    sb.sign_off("B", accept_remaining=True)
    res = export_reviewed([a, b], tmp_path / "out")
    records = read_manifest(res.manifest)
    written = {Path(r.path).relative_to(res.out).as_posix(): r.label for r in records}
    b_kept = [c for c in ReviewStore(b).cells() if c["label"] in ("neutrophil", "lymphocyte", "monocyte",
                                                                 "eosinophil", "basophil")]
    assert written["eosinophil/a_1.jpg"] == "eosinophil" and written["basophil/b_4.jpg"] == "basophil"
    assert len(records) == 1 + len(b_kept)  # session a: only the one cell reviewed with a class
    for r in records:
        assert Path(r.path).is_file() and Path(r.path).parent.name == r.label and r.width == 96
    with res.manifest.open() as f:
        extra = {row["path"]: row for row in csv.DictReader(f)}
    assert extra["eosinophil/a_1.jpg"]["reviewer"] == "A" and extra["basophil/b_4.jpg"]["signed_off_by"] == "B"
    assert res.skipped["not reviewed"] == 9
    # unreviewed cells on request; a used folder is refused
    res2 = export_reviewed([a], tmp_path / "out2", include_unreviewed=True)
    assert sum(res2.written.values()) == sum(1 for c in ReviewStore(a).cells()
                                             if c["label"] not in ("artefact", "unidentified"))
    from wbcedge.errors import OutputFolderError
    with pytest.raises(OutputFolderError, match="not an empty folder"):
        export_reviewed([a], tmp_path / "out")
    # and the data layer indexes it as a class-folder tree
    from wbcedge.data.index import index_folder
    assert len(index_folder(res.out).records) == len(records)


def test_export_cli(session, tmp_path):
    ReviewStore(session).set_label(1, "lymphocyte", "A")
    res = subprocess.run([sys.executable, "-m", "wbcedge", "review", "export", str(session), "--out",
                          str(tmp_path / "out"), "--json", "-"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "out" / "lymphocyte" / f"{session.name}_1.jpg").is_file()
    assert "1 reviewed crops" in res.stdout


def test_export_of_sessions_nobody_reviewed_is_an_error_not_an_empty_folder(tmp_path):
    """`adapt --data` on an empty export would fail later with a vaguer message; say it here."""
    a = generated_session(tmp_path / "a", 6, seed=3)
    res = subprocess.run([sys.executable, "-m", "wbcedge", "review", "export", str(a), "--out", str(tmp_path / "out")],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "nothing to export" in res.stderr and "6 not reviewed" in res.stderr
    assert "--include-unreviewed" in res.stderr and not (tmp_path / "out").exists()

def test_label_checks():
    from wbcedge.device.review.store import check_label, check_reviewer

    assert check_label(" Monocyte ") == "monocyte" and check_label("artifact") == "artefact"
    with pytest.raises(InputDataError):
        check_label("")
    with pytest.raises(InputDataError):
        check_reviewer("x" * 101)


# ---------------------------------------------------------------- live view (wbcedge run --serve)

def test_run_serve_shows_the_live_frame_and_keeps_the_station_open(tmp_path):
    import socket

    import httpx

    from wbcedge.device.session import CountOptions, count_cells

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    seen: list[dict] = []
    messages: list[str] = []
    result = count_cells(CountOptions(out=tmp_path / "live", serve=True, port=port), on_message=messages.append)
    try:
        assert any(f"127.0.0.1:{port}" in m for m in messages)
        with httpx.Client(base_url=result.server.url) as client:
            state = client.get("/api/live").json()
            seen.append(state)
            assert state["running"] is False and state["frames"] == result.frames_seen == 6
            assert state["cells"] == len(result.labels) and sum(state["counts"].values()) == len(result.labels)
            assert state["focus"] is not None and "no threshold" in state["focus_text"]
            frame = client.get("/live/frame.jpg")
            image = cv2.imdecode(np.frombuffer(frame.content, np.uint8), cv2.IMREAD_COLOR)
            assert frame.status_code == 200 and image is not None and image.shape[1] <= 960
            assert 'id="live-frame"' in client.get("/").text
            ids = [c["id"] for c in client.get("/api/cells").json()["cells"]]
            assert len(ids) == len(result.labels)
            r = client.post("/api/signoff", json={"reviewer": "A", "accept_remaining": True})
            assert r.status_code == 200, r.text  # the count has ended: sign-off is allowed
    finally:
        result.server.stop()


def test_signoff_is_refused_while_counting(session):
    from wbcedge.device.review.live import LiveFeed

    feed = LiveFeed()
    client = TestClient(create_app(session, live=feed))
    assert client.get("/live/frame.jpg").status_code == 404  # no frame yet
    r = client.post("/api/signoff", json={"reviewer": "A", "accept_remaining": True})
    assert r.status_code == 409 and "still counting" in r.json()["detail"]
    feed.finish()
    assert client.post("/api/signoff", json={"reviewer": "A", "accept_remaining": True}).status_code == 200


def test_the_shift_alarm_shows_when_the_session_has_one(session):
    doc = json.loads((session / "differential.json").read_text())
    doc["domain_shift"] = {"score": 3.1, "threshold": 1.2, "alarm": True, "cells": 7,
                           "message": "DOMAIN SHIFT: these 7 cells look unlike the model's training data"}
    (session / "differential.json").write_text(json.dumps(doc))
    client = TestClient(create_app(session))
    assert "DOMAIN SHIFT: these 7 cells" in client.get("/").text
    client.post("/api/signoff", json={"reviewer": "A", "accept_remaining": True})
    assert json.loads((session / "differential.json").read_text())["domain_shift"]["alarm"] is True  # kept
    doc["domain_shift"] = {"score": 0.4, "threshold": 1.2, "alarm": False, "cells": 7}
    (session / "differential.json").write_text(json.dumps(doc))
    page = TestClient(create_app(session)).get("/").text
    assert "no alarm" in page and "DOMAIN SHIFT" not in page


def test_cli_serves_the_station_and_prints_a_token_for_the_network(builtin_session, tmp_path):
    import socket
    import time

    import httpx

    session = copy_session(builtin_session, tmp_path / "s")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "wbcedge", "review", str(session), "--host", "0.0.0.0",
                             "--port", str(port), "--no-browser"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        token_line = proc.stdout.readline()
        assert token_line.startswith("access token: ")
        token = token_line.split()[2]
        assert f"?token={token}" in proc.stdout.readline()
        base = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                httpx.get(base + "/api/differential")
                break
            except httpx.TransportError:
                time.sleep(0.05)
        assert httpx.get(base + "/").status_code == 200
        body = {"label": "basophil", "reviewer": "A"}
        assert httpx.post(base + "/api/cells/1/label", json=body).status_code == 403
        r = httpx.post(base + "/api/cells/1/label", json=body, headers={"X-Wbcedge-Token": token})
        assert r.status_code == 200 and r.json()["cell"]["label"] == "basophil"
        history = httpx.get(base + "/api/cells/1").json()["history"]
        assert [(h["previous_label"], h["new_label"]) for h in history] == [(r.json()["cell"]["model_label"], "basophil")]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()


def test_the_station_works_with_tensorflow_blocked(builtin_session, tmp_path):
    from test_device_side import run_blocked

    session = copy_session(builtin_session, tmp_path / "s")
    res = run_blocked(f"""
        from fastapi.testclient import TestClient
        from wbcedge.device.review.app import create_app
        from wbcedge.device.review.export import export_reviewed
        import wbcedge.cli.review_cmd
        c = TestClient(create_app(r"{session}"))
        assert c.post("/api/cells/1/label", json={{"label": "monocyte", "reviewer": "A"}}).status_code == 200
        assert c.post("/api/signoff", json={{"reviewer": "A", "accept_remaining": True}}).status_code == 200
        export_reviewed([r"{session}"], r"{tmp_path / 'out'}")
        import sys
        assert not any(m.split('.')[0] in ('tensorflow', 'keras', 'sklearn') for m in sys.modules), 'leaked'
        print('ok')
    """, tmp_path)
    assert res.returncode == 0, res.stderr
    assert "ok" in res.stdout


def test_other_sites_cannot_post_changes(session):
    from wbcedge.device.review.app import LOOPBACK_HOSTS

    client = TestClient(create_app(session, allowed_hosts=LOOPBACK_HOSTS), base_url="http://127.0.0.1:8765")
    body = '{"label": "monocyte", "reviewer": "evil"}'
    for kind in ("text/plain", "application/x-www-form-urlencoded"):  # what a cross-site form can send
        assert client.post("/api/cells/1/label", content=body, headers={"Content-Type": kind}).status_code == 422
    rebound = TestClient(create_app(session, allowed_hosts=LOOPBACK_HOSTS), base_url="http://evil.example:8765")
    assert rebound.get("/api/cells").status_code == 400  # DNS rebinding: a foreign Host header
    assert ReviewStore(session).history() == []
    assert client.get("/api/cells").status_code == 200


def test_a_read_only_session_says_to_copy_it(session):
    import os

    from wbcedge.errors import OutputFolderError

    if os.geteuid() == 0:
        pytest.skip("root writes through read-only permissions")
    for p in (session, session / "cells.db"):
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        with pytest.raises(OutputFolderError, match="read-only"):
            ReviewStore(session)
    finally:
        session.chmod(0o755)
        (session / "cells.db").chmod(0o644)
