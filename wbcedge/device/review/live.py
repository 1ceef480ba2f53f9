"""`wbcedge run --serve`: the review station during capture, with the live frame.

`LiveFeed.update` is the session loop's `on_frame` hook: it keeps running counts and, at most
every `interval_s`, a JPEG of the frame (shrunk to `max_width`) with the located cells boxed,
and the frame's focus score against the profile's threshold. The app serves them at
/live/frame.jpg and /api/live (the page refreshes both once a second), so a microscope without
a screen can be driven from a laptop's browser. `BackgroundServer` runs uvicorn in a thread.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import cv2

from wbcedge.device.capture import focus_score

BOX_COLOURS = {"unidentified": (0, 200, 255)}   # BGR; classified cells are green


class LiveFeed:
    """The latest frame and the running counts of a session being counted (thread-safe)."""

    def __init__(self, focus_threshold: float | None = None, interval_s: float = 0.5, max_width: int = 960):
        self.focus_threshold = focus_threshold
        self.interval_s = interval_s
        self.max_width = max_width
        self.running = True
        self._lock = threading.Lock()
        self._jpeg: bytes | None = None
        self._last = 0.0
        self._frames = 0
        self._cells = 0
        self._counts: dict[str, int] = {}
        self._focus: float | None = None
        self._pending: tuple | None = None

    def update(self, frame, cells, counted) -> None:
        with self._lock:
            self._frames += 1
            self._cells += len(counted)
            for c in counted:
                self._counts[c.label] = self._counts.get(c.label, 0) + 1
        now = time.monotonic()
        if now - self._last < self.interval_s:
            self._pending = (frame.image, cells)  # shown at finish() if no later frame is drawn
            return
        self._last = now
        self._draw(frame.image, cells)

    def _draw(self, image, cells) -> None:
        self._pending = None
        focus = focus_score(image)
        scale = min(1.0, self.max_width / image.shape[1])
        view = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else image.copy()
        for c in cells:
            x0, y0, x1, y1 = (round(v * scale) for v in c.box.box)
            colour = BOX_COLOURS.get(c.label, (0, 200, 0))
            cv2.rectangle(view, (x0, y0), (x1, y1), colour, 2)
            cv2.putText(view, f"{c.label} {c.confidence:.2f}", (x0, max(12, y0 - 4)), cv2.FONT_HERSHEY_SIMPLEX,
                        0.5, colour, 1)
        ok, data = cv2.imencode(".jpg", view, [cv2.IMWRITE_JPEG_QUALITY, 80])
        with self._lock:
            self._focus = focus
            if ok:
                self._jpeg = data.tobytes()

    def finish(self) -> None:
        """The count has ended: show its last frame."""
        if self._pending is not None:
            self._draw(*self._pending)
        self.running = False

    def jpeg(self) -> bytes | None:
        with self._lock:
            return self._jpeg

    def state(self) -> dict[str, Any]:
        with self._lock:
            focus, threshold = self._focus, self.focus_threshold
            if focus is None:
                text = "not measured yet"
            elif threshold:
                text = f"{focus:.0f} ({'sharp' if focus >= threshold else 'BLURRED'}; threshold {threshold:.0f})"
            else:
                text = f"{focus:.0f} (no threshold: set focus_threshold in the camera profile)"
            return {"running": self.running, "frames": self._frames, "cells": self._cells,
                    "counts": dict(self._counts), "focus": focus, "focus_threshold": threshold,
                    "blurred": bool(threshold and focus is not None and focus < threshold), "focus_text": text}


class BackgroundServer:
    """uvicorn serving an app from a daemon thread (signals stay with the main thread's session loop)."""

    def __init__(self, app, host: str, port: int):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="wbcedge-review")

    def start(self, timeout_s: float = 20.0) -> BackgroundServer:
        from wbcedge.errors import WbcedgeError

        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                cfg = self.server.config
                raise WbcedgeError(f"the review station could not listen on {cfg.host}:{cfg.port} (in use?): "
                                        f"choose another --port")
            time.sleep(0.02)
        return self

    def wait(self) -> None:
        """Serve until Ctrl-C."""
        try:
            while self.thread.is_alive():
                self.thread.join(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def start_live_station(session_dir, host: str, port: int, focus_threshold: float | None = None,
                       on_message=lambda m: None) -> tuple[LiveFeed, BackgroundServer]:
    """The review app for a session being recorded, served in the background; returns its feed and server."""
    from wbcedge.device.review import require_web

    require_web()
    from wbcedge.device.review.app import LOOPBACK_HOSTS, create_app, is_loopback, new_token

    token = None if is_loopback(host) else new_token()
    feed = LiveFeed(focus_threshold)
    app = create_app(session_dir, token=token, live=feed, allowed_hosts=None if token else LOOPBACK_HOSTS)
    server = BackgroundServer(app, host, port).start()
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/" + (f"?token={token}" if token else "")
    if token:
        on_message(f"access token: {token}  (every change needs it)")
    on_message(f"live view and review station at {url}")
    server.url = url
    return feed, server
