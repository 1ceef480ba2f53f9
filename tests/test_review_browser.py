"""The review station in a real browser: the OS Chromium driven by Playwright's Python API.

Skipped with a message where Chromium is not installed (`apt-get install chromium`) or the
web extra / Playwright is missing; `.ci/run` installs both.
"""

from __future__ import annotations

import sqlite3

import pytest
from review_support import ServerThread, chromium_path, count_builtin_session

pytest.importorskip("fastapi", reason="the web extra is not installed: pip install 'wbcedge[web]'")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the dev extra has it)")
CHROMIUM = chromium_path()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine: apt-get install -y chromium "
                                                         "(Playwright cannot download its own browser here)")


def test_keyboard_review_and_signoff_in_chromium(tmp_path):
    from wbcedge.device.review.app import create_app

    session = count_builtin_session(tmp_path / "session")
    with ServerThread(create_app(session)) as server, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page()
            page.set_default_timeout(90_000)  # a shared 2-core CI machine can starve the browser for a while
            page.goto(server.url)
            page.wait_for_selector("figure.cell.sel")
            n = page.locator("figure.cell").count()
            assert page.locator("#progress").inner_text() == f"reviewed 0 of {n}"
            first_ids = page.eval_on_selector_all("figure.cell", "els => els.slice(0, 3).map(e => +e.dataset.id)")
            models = page.eval_on_selector_all("figure.cell", "els => els.slice(0, 3).map(e => e.querySelector('.tag').textContent)")

            # no reviewer yet: a key does nothing but ask for a name
            page.keyboard.press("e")
            page.wait_for_function("document.getElementById('status').textContent.includes('enter your name')")
            page.fill("#reviewer", "A. Tech")
            page.locator("h1").click()  # leave the name field; keys go to the page again

            # up/down move by rows (each model group starts a row): down to the next group's first cell, and back
            sel = "() => +document.querySelector('figure.cell.sel').dataset.index"
            page.keyboard.press("ArrowDown")
            down = page.evaluate(sel)
            first_row = page.eval_on_selector_all("#cells .gallery:first-of-type figure", "els => els.length")
            assert down == first_row
            page.keyboard.press("ArrowUp")
            assert page.evaluate(sel) == 0

            eos_before = int(page.locator("#differential tr[data-type=eosinophil] .count").inner_text())
            # label, move back and forth, accept the model's label, call one an artefact
            done = 0
            for key in ("e", "ArrowLeft", "ArrowRight", "Enter", "x"):
                page.keyboard.press(key)
                if key in ("e", "Enter", "x"):
                    done += 1
                    page.wait_for_function(f"document.getElementById('progress').textContent === "
                                           f"'reviewed {done} of {n}'")
            page.wait_for_function(f"document.getElementById('progress').textContent === 'reviewed 3 of {n}'")
            tags = page.eval_on_selector_all("figure.cell", "els => els.slice(0, 3).map(e => e.querySelector('.tag').textContent)")
            assert tags == ["eosinophil", models[1], "artefact"]
            # the differential on the page was recomputed from the reviewed labels
            eos_after = int(page.locator("#differential tr[data-type=eosinophil] .count").inner_text())
            # (+1 for the first cell unless the model already said eosinophil, -1 when the third,
            # now an artefact, was one)
            assert eos_after == eos_before + (models[0] != "eosinophil") - (models[2] == "eosinophil")
            assert page.locator("#differential tr[data-type=artefact] .count").inner_text() == "1"

            # sign off, accepting the model's label for the cells not reviewed
            page.check("#accept-rest")
            page.click("#signoff")
            page.wait_for_selector("#signed:not([hidden])")
            assert "Signed off by A. Tech" in page.locator("#signed").inner_text()
            # a change after sign-off is refused, and says so
            page.keyboard.press("ArrowRight")
            page.keyboard.press("n")
            # (the status line already reads "signed off" from the sign-off itself: wait for the refusal)
            page.wait_for_function("document.getElementById('status').className === 'err'")
            refusal = page.locator("#status").inner_text()
            assert "signed off" in refusal and "frozen" in refusal
        finally:
            browser.close()

    db = sqlite3.connect(str(session / "cells.db"))
    audit = db.execute("SELECT cell_id, new_label, reviewer, comment FROM reviews ORDER BY id").fetchall()
    signoff = db.execute("SELECT reviewer FROM signoff").fetchall()
    db.close()
    assert audit[:3] == [(first_ids[0], "eosinophil", "A. Tech", ""), (first_ids[1], models[1], "A. Tech", ""),
                         (first_ids[2], "artefact", "A. Tech", "")]
    assert len(audit) == n and all(a[3] == "accepted at sign-off" for a in audit[3:])
    assert signoff == [("A. Tech",)]
    assert "Reviewed and signed off by <b>A. Tech</b>" in (session / "report.html").read_text()
