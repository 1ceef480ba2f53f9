"""Sessions for the review tests and benchmark: one counted from the built-in frames, or a generated one."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import cv2

from wbcedge.device.records import Recorder

REPO = Path(__file__).resolve().parent.parent
PBC_SAMPLES = REPO / "wbcedge" / "samples" / "pbc"


def count_builtin_session(out: Path) -> Path:
    """`wbcedge run` on the built-in frames with the built-in bundle (the real pipeline), into `out`."""
    from wbcedge.device.session import CountOptions, count_cells

    count_cells(CountOptions(out=out))
    return out


def generated_session(out: Path, n_cells: int, seed: int = 0, cells_per_frame: int = 20) -> Path:
    """A session of n_cells recorded with the real Recorder, crops taken from the shipped PBC samples."""
    from wbcedge.labels import normalize_class

    crops = [(normalize_class(p.parent.name), cv2.imread(str(p))) for p in sorted(PBC_SAMPLES.glob("*/*.jpg"))]
    crops = [(label, cv2.resize(img, (96, 96))) for label, img in crops]
    rng = random.Random(seed)
    with Recorder(out) as rec:
        rec.set_meta("source", "generated")
        for i in range(n_cells):
            frame = i // cells_per_frame
            label, crop = rng.choice(crops)
            conf = rng.uniform(0.3, 1.0)
            rec.add_cell(frame, f"frame{frame:05d}.jpg", (10, 10, 106, 106), "unidentified" if conf < 0.5 else label,
                         conf, crop)
            if i % cells_per_frame == cells_per_frame - 1 or i == n_cells - 1:
                rec.commit_frame(frame, f"frame{frame:05d}.jpg")
    return out


def copy_session(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


class ServerThread:
    """A uvicorn server for an app in a background thread, on a free port of 127.0.0.1."""

    def __init__(self, app):
        import socket

        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = None

    def __enter__(self) -> ServerThread:
        import threading
        import time

        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the review server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def chromium_path() -> str | None:
    """The OS Chromium (apt-get install chromium); Playwright cannot download its own browser here."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None
