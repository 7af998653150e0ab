"""Fixtures shared by the test modules."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The real Facades data, outside the repository (never copied into it).
FACADES_DIR = REPO_ROOT / ".." / "shared" / "data" / "facades"


@pytest.fixture(scope="session")
def facades_dir() -> Path:
    """Path of the real pix2pix Facades folder; skips the test when it is absent."""
    if not (FACADES_DIR / "train").is_dir():
        pytest.skip(f"real Facades data not found at {FACADES_DIR}")
    return FACADES_DIR


@pytest.fixture(scope="session")
def synthetic_small():
    """Eight 64×64 synthetic facades (photo → label map), cheap to build models and indexes on."""
    from compnn_index.data import open_dataset

    return open_dataset("synthetic", size=64, limit=8)
