"""One JSON fallback for the whole package: paths, NumPy arrays and scalars, sets and tuples."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def to_jsonable(obj: Any) -> Any:
    """`json.dumps(..., default=to_jsonable)`: what the json module cannot write by itself."""
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
