"""Provenance: file hashes and the versions of the packages that made a file.

Every run folder, bundle and report records where it came from with these helpers.
"""

from __future__ import annotations

import hashlib
import platform
from pathlib import Path


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def package_versions() -> dict:
    import importlib.metadata as md
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("wbcedge", "tensorflow", "tensorflow-cpu", "keras", "numpy", "opencv-python-headless",
                 "ai-edge-litert", "onnxruntime", "onnx", "tf2onnx"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out
