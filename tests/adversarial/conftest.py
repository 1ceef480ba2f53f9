"""The adversarial suite's fixtures (builders live in adv_helpers.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture
def bundle_copy(tmp_path) -> Path:
    """A copy of the built-in bundle that a test may break."""
    from wbcedge.bundle import DEFAULT_BUNDLE

    dest = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, dest)
    return dest
