"""Shared fixtures: the repo's committed samples, and ../shared data when it is present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "wbcedge" / "samples"
DEFAULT_RUN = REPO / "training" / "runs" / "robust-edge-step1-wise"   # the built-in bundle's run


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def sample_manifest(tmp_path_factory) -> Path:
    """The committed PBC sample crops, indexed and split (1 test, 1 val, 2 train per class)."""
    from wbcedge import data

    records = data.index_folder(SAMPLES / "pbc").records
    data.split_records(records, seed=0, test_per_class=1, val_fraction=0.34)
    path = tmp_path_factory.mktemp("samples") / "manifest.csv"
    data.write_manifest(records, path)
    return path


@pytest.fixture(scope="session")
def default_run() -> Path:
    if not (DEFAULT_RUN / "model.keras").is_file():
        pytest.skip(f"the default run folder {DEFAULT_RUN.relative_to(REPO)} is not in this checkout")
    return DEFAULT_RUN
