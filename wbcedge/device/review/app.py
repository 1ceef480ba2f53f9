"""The review station's web app: one Jinja2 page, its script, and the JSON API it calls.

    GET  /                         the page (differential on top, cells grouped by class)
    GET  /api/cells?offset=&limit= cells, grouped by the model's label, least confident first
    GET  /api/cells/{id}           one cell and its audit rows
    POST /api/cells/{id}/label     {"label", "reviewer", "comment"?}: append a review row
    POST /api/signoff              {"reviewer", "accept_remaining"?}: freeze and rewrite the report
    GET  /api/differential         reviewed and model differential, agreement, progress, sign-off
    GET  /crops/{id}.jpg           the cell's crop; /frames/{id}.jpg its frame with the box drawn
    GET  /api/live, /live/frame.jpg   during `wbcedge run --serve` only

With a token (`--host 0.0.0.0`), every POST needs it: header `X-Wbcedge-Token` or `?token=`.
Errors come back as {"detail": "..."}: 422 bad label/reviewer, 404 unknown cell, 409 signed
off (or still counting), 403 wrong token.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import cv2
from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel

from wbcedge.device.review.store import ARTEFACT, REVIEW_LABELS, ReviewStore, SignedOffError, UnknownCellError
from wbcedge.errors import InputDataError, WbcedgeError

HERE = Path(__file__).resolve().parent
TOKEN_HEADER = "X-Wbcedge-Token"
KEYS = {"neutrophil": "n", "lymphocyte": "l", "monocyte": "m", "eosinophil": "e", "basophil": "b",
        "unidentified": "u", ARTEFACT: "x"}
"""The keyboard: one key per label a reviewer can give (Enter or `a` accepts the model's label)."""
PAGE_SIZE_MAX = 2000


class LabelBody(BaseModel):
    label: str
    reviewer: str = ""
    comment: str = ""


class SignoffBody(BaseModel):
    reviewer: str = ""
    accept_remaining: bool = False


LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "[::1]", "::1"]


def create_app(session_dir: Path | str, token: str | None = None, live: Any = None,
               allowed_hosts: list[str] | None = None) -> FastAPI:
    """The review app for one session folder; `live` (a `live.LiveFeed`) adds the capture view.

    `allowed_hosts` (the CLI passes LOOPBACK_HOSTS when there is no token) refuses requests whose
    Host header names another site, so a web page cannot reach the station by DNS rebinding; the
    API takes JSON bodies only, so another site's form cannot post a change either.
    """
    store = ReviewStore(session_dir)
    app = FastAPI(title="wbcedge review", docs_url=None, redoc_url=None, openapi_url=None)
    if allowed_hosts:
        from starlette.middleware.trustedhost import TrustedHostMiddleware
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.state.store, app.state.token, app.state.live = store, token, live

    @app.exception_handler(WbcedgeError)
    async def _wbcedge_error(request: Request, exc: WbcedgeError) -> JSONResponse:
        status = 409 if isinstance(exc, SignedOffError) else 404 if isinstance(exc, UnknownCellError) \
            else 422 if isinstance(exc, InputDataError) else 400
        return JSONResponse({"detail": str(exc)}, status_code=status)

    def check_token(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get(TOKEN_HEADER) or request.query_params.get("token") or ""
        if not secrets.compare_digest(given.encode(), token.encode()):
            raise _Forbidden()

    @app.exception_handler(_Forbidden)
    async def _forbidden(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": "this station needs its access token for changes: open the address "
                                       "printed when `wbcedge review` started (it ends in ?token=...)"},
                            status_code=403)

    @app.get("/", response_class=HTMLResponse)
    def page(request: Request) -> HTMLResponse:
        meta = store.meta()
        return templates.TemplateResponse(request, "review.html", {
            "session": store.session_dir.name, "labels": REVIEW_LABELS, "keys": KEYS,
            "shift": _domain_shift(store.session_dir, meta), "live": live is not None,
            "source": meta.get("source", ""), "needs_token": token is not None})

    @app.get("/api/cells")
    def cells(offset: int = 0, limit: int = 500) -> dict[str, Any]:
        if offset < 0 or not 1 <= limit <= PAGE_SIZE_MAX:
            raise InputDataError(f"offset must be >= 0 and limit within 1..{PAGE_SIZE_MAX}")
        rows = store.cells(offset, limit)
        total = store.count()
        return {"total": total, "offset": offset, "limit": limit, "cells": rows}

    @app.get("/api/cells/{cell_id}")
    def cell(cell_id: int) -> dict[str, Any]:
        return {"cell": store.cell(cell_id), "history": store.history(cell_id)}

    @app.post("/api/cells/{cell_id}/label", dependencies=[Depends(check_token)])
    def relabel(cell_id: int, body: LabelBody) -> dict[str, Any]:
        cell = store.set_label(cell_id, body.label, body.reviewer, body.comment)
        return {"cell": cell, "summary": store.summary()}

    @app.post("/api/signoff", dependencies=[Depends(check_token)])
    def signoff(body: SignoffBody) -> dict[str, Any]:
        if live is not None and live.running:
            raise SignedOffError("the session is still counting: sign off once the run has ended "
                                 "(wbcedge review SESSION)")
        return store.sign_off(body.reviewer, body.accept_remaining)

    @app.get("/api/differential")
    def summary() -> dict[str, Any]:
        return store.summary()

    @app.get("/crops/{cell_id}.jpg")
    def crop(cell_id: int) -> Response:
        path = store.crop_path(cell_id)
        if path is None:
            return JSONResponse({"detail": f"cell {cell_id} has no crop on disk"}, status_code=404)
        return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/frames/{cell_id}.jpg")
    def frame(cell_id: int) -> Response:
        c = store.cell(cell_id)
        path = _frame_file(store.meta().get("source"), c["frame_name"], store.session_dir)
        image = cv2.imread(str(path)) if path else None
        if image is None:
            return JSONResponse({"detail": "the frame is not available on this machine (only the crop was kept)"},
                                status_code=404)
        x0, y0, x1, y1 = c["box"]
        thick = max(2, image.shape[1] // 320)
        cv2.rectangle(image, (x0, y0), (x1, y1), (0, 255, 255), thick)
        _, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])
        return Response(data.tobytes(), media_type="image/jpeg")

    if live is not None:
        @app.get("/api/live")
        def live_state() -> dict[str, Any]:
            return live.state()

        @app.get("/live/frame.jpg")
        def live_frame() -> Response:
            data = live.jpeg()
            if data is None:
                return JSONResponse({"detail": "no frame yet"}, status_code=404)
            return Response(data, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    return app


class _Forbidden(Exception):
    pass


def new_token() -> str:
    return secrets.token_urlsafe(16)


def is_loopback(host: str) -> bool:
    """127.0.0.1, ::1 or localhost: only this machine can connect, so no token is needed."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _frame_file(source: Any, frame_name: str, session_dir: Path) -> Path | None:
    """The frame a cell came from, when the session's source was an image or a folder still on this disk.

    A relative source is tried from here and from the folder `wbcedge run` ran in (runs/<session>/../..).
    """
    if not source or not isinstance(source, str):
        return None
    for src in (Path(source), session_dir.resolve().parent.parent / source):
        if src.is_dir() and (src / frame_name).is_file():
            return src / frame_name
        if src.is_file() and src.name == frame_name:
            return src
        if src.is_absolute():
            break
    return None


def _domain_shift(session_dir: Path, meta: dict[str, Any]) -> Any:
    """The shift check's result when the session has one (differential.json or meta `domain_shift`)."""
    try:
        doc = json.loads((session_dir / "differential.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        doc = {}
    for found in (doc.get("domain_shift"), (doc.get("meta") or {}).get("domain_shift"),
                  (doc.get("differential") or {}).get("domain_shift"), meta.get("domain_shift")):
        if found:
            return found
    return None
