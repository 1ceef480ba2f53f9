"""How fast the review station is on this machine: opening a 5,000-cell session, and one relabel.

    PYTHONPATH=. python benchmarks/review_bench.py [--cells 5000] [--relabels 200] [--screenshots docs/img]

Targets (issue 16): the page of a 5,000-cell session opens in under 1 s; a relabel round trip
(POST /api/cells/{id}/label over HTTP, including the recomputed differential) under 50 ms.
Measures, against a real uvicorn server on 127.0.0.1:
  * api_cells_first_page_ms: GET / plus the first GET /api/cells page (500 cells), server and client
  * browser_open_ms: Chromium (the OS package, driven by Playwright) from navigation until the first
    cell is selected and the differential is filled; browser_all_cells_ms until every cell is listed
    (crops are lazy-loaded, so only the visible ones are fetched); page_open_ms and
    page_all_cells_ms are the same moments by the page's own clock (performance.now(), from the
    start of navigation, without Playwright's overhead)
  * relabel_ms: median and 95th percentile of POST label round trips (httpx, keep-alive)
Writes the figures as JSON to stdout (and --json PATH); --screenshots DIR saves PNGs of the page.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from review_support import ServerThread, chromium_path, count_builtin_session, generated_session

from wbcedge.device.review.app import create_app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=5000)
    ap.add_argument("--relabels", type=int, default=200)
    ap.add_argument("--screenshots", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    import httpx

    out: dict = {"cells": args.cells}
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        session = generated_session(Path(tmp) / "big", args.cells)
        out["generate_s"] = round(time.perf_counter() - t, 2)
        with ServerThread(create_app(session)) as server, httpx.Client(base_url=server.url) as client:
            client.get("/")  # warm up imports and templates
            times = []
            for _ in range(5):
                t = time.perf_counter()
                client.get("/").raise_for_status()
                client.get("/api/cells?offset=0&limit=500").raise_for_status()
                client.get("/api/differential").raise_for_status()
                times.append((time.perf_counter() - t) * 1000)
            out["api_open_ms_median"] = round(statistics.median(times), 1)
            labels = ["neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil", "unidentified", "artefact"]
            times = []
            for i in range(args.relabels):
                t = time.perf_counter()
                r = client.post(f"/api/cells/{1 + (i * 37) % args.cells}/label",
                                json={"label": labels[i % len(labels)], "reviewer": "bench"})
                r.raise_for_status()
                times.append((time.perf_counter() - t) * 1000)
            times.sort()
            out["relabel_ms_median"] = round(statistics.median(times), 1)
            out["relabel_ms_p95"] = round(times[int(0.95 * (len(times) - 1))], 1)
            out["relabel_ms_max"] = round(times[-1], 1)
            out.update(_browser(server.url, args.cells))
        if args.screenshots:
            _screenshots(Path(tmp) / "builtin", args.screenshots)
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


def _browser(url: str, n: int) -> dict:
    exe = chromium_path()
    if exe is None:
        return {"browser": "skipped: no chromium (apt-get install chromium)"}
    from playwright.sync_api import sync_playwright

    res = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True)
        opens, alls, in_page, in_page_all = [], [], [], []
        for _ in range(3):
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            t = time.perf_counter()
            page.goto(url, wait_until="commit")
            page.wait_for_selector("figure.cell.sel")
            page.wait_for_selector("#differential tbody tr")
            opens.append((time.perf_counter() - t) * 1000)
            page.wait_for_function(f"document.querySelectorAll('figure.cell').length === {n}", timeout=60000)
            alls.append((time.perf_counter() - t) * 1000)
            in_page.append(page.evaluate("Math.max(WBC.firstCellsMs, WBC.differentialMs)"))  # from the start of navigation, by the page's clock
            in_page_all.append(page.evaluate("WBC.allCellsMs"))
            page.close()
        browser.close()
    res["browser_open_ms_median"] = round(statistics.median(opens), 1)
    res["browser_all_cells_ms_median"] = round(statistics.median(alls), 1)
    res["page_open_ms_median"] = round(statistics.median(in_page), 1)
    res["page_all_cells_ms_median"] = round(statistics.median(in_page_all), 1)
    res["browser"] = exe
    return res


def _screenshots(where: Path, out_dir: Path) -> None:
    """PNGs of the page on the built-in frames: on open, after relabelling, and a cell enlarged on its frame."""
    exe = chromium_path()
    if exe is None:
        return
    from playwright.sync_api import sync_playwright

    out_dir.mkdir(parents=True, exist_ok=True)
    session = count_builtin_session(where)
    with ServerThread(create_app(session)) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True)
        page = browser.new_page(viewport={"width": 1200, "height": 1000})
        page.goto(server.url)
        page.wait_for_selector("figure.cell.sel")
        page.fill("#reviewer", "A. Tech")
        page.locator("body").click(position={"x": 5, "y": 300})
        page.wait_for_function("Array.from(document.images).every(i => i.complete)")
        page.screenshot(path=str(out_dir / "review-open.png"))
        for key in ("Enter", "l", "e"):  # on the built-in frames: accept, a lymphocyte, an eosinophil
            page.keyboard.press(key)
            page.wait_for_timeout(300)
        page.screenshot(path=str(out_dir / "review-relabelled.png"))
        page.keyboard.press("ArrowLeft")
        page.keyboard.press(" ")
        page.wait_for_function("document.getElementById('zoom-img').complete")
        page.wait_for_timeout(300)
        page.screenshot(path=str(out_dir / "review-enlarged.png"))
        browser.close()
    # `wbcedge run --serve` on the built-in frames: the page with the (last) live frame once counting ended
    import socket

    from wbcedge.device.session import CountOptions, count_cells

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = count_cells(CountOptions(out=where.parent / "live", serve=True, port=port))
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=exe, headless=True)
            page = browser.new_page(viewport={"width": 1200, "height": 1000})
            page.goto(result.server.url)
            page.wait_for_function("document.getElementById('live-state').textContent.includes('ended')")
            page.wait_for_function("document.getElementById('live-frame').complete")
            page.wait_for_timeout(500)
            page.screenshot(path=str(out_dir / "review-live.png"))
            browser.close()
    finally:
        result.server.stop()


if __name__ == "__main__":
    main()
