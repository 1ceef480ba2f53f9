"""Provenance: file hashes and the versions of the packages that made a file.

Every run folder, bundle, benchmark and report records where it came from with these
helpers; nothing else in the package hashes a file or reads package versions.
"""

from __future__ import annotations

import hashlib
import platform
from pathlib import Path

PROVENANCE_PACKAGES = ("wbcedge", "tensorflow", "tensorflow-cpu", "keras", "numpy", "opencv-python-headless",
                       "ai-edge-litert", "onnxruntime", "onnx", "tf2onnx")


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB chunks (model files and manifests alike)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def package_versions(names: tuple[str, ...] = PROVENANCE_PACKAGES, with_platform: bool = True) -> dict[str, str]:
    """Installed versions of `names` (missing ones left out), with Python and the platform unless told not to."""
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": platform.platform()} if with_platform else {}
    for name in names:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out
