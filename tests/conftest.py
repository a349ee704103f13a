"""Shared fixtures: the real data folder beside the repo (tests skip with a reason when it is absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CURATE_SHARED_DATA", REPO.parent / "shared" / "data"))


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_collection_modifyitems(config, items):
    if not any("gpu" in item.keywords for item in items) or _cuda():
        return
    skip = pytest.mark.skip(reason="needs CUDA (no GPU on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (or $CURATE_SHARED_DATA); skips the test when the folder is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder not found at {SHARED_DATA} (set CURATE_SHARED_DATA)")
    return SHARED_DATA


def shared_file(rel: str) -> Path:
    """A file under the shared data folder, or skip with the reason."""
    p = SHARED_DATA / rel
    if not p.exists():
        pytest.skip(f"shared data file {p} not found")
    return p
