"""The review station: a technologist verifies, relabels and signs off a counting session.

    store.py      the `reviews` audit rows and the sign-off in the session's cells.db
    agreement.py  model against reviewer: per class and Cohen's kappa (plain Python)
    app.py        the FastAPI app (Jinja2 page + JSON API), also used live by `wbcedge run --serve`
    live.py       the latest frame, boxes, running counts and focus of a session being counted
    export.py     reviewed cells as a class-folder tree + data manifest, for `wbcedge adapt`

Never TensorFlow. The web app needs the `web` extra (fastapi, uvicorn, jinja2); `require_web()`
says how to install it; the store, export and agreement need only the base install.
"""

from __future__ import annotations

from wbcedge.errors import MissingDependencyError

WEB_EXTRA_HINT = "pip install 'wbcedge[web]'"


def require_web() -> None:
    """Raise MissingDependencyError naming the pip command when the web extra is not installed."""
    import importlib.util

    missing = [m for m in ("fastapi", "uvicorn", "jinja2") if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingDependencyError(f"the review station needs the web extra ({', '.join(missing)} not installed): "
                                     f"{WEB_EXTRA_HINT}")
