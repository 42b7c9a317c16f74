"""Shared fixtures: seeded torch, and the real data in ../shared/data (skipped when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def hippocampus_root() -> Path:
    root = SHARED_DATA / "msd_hippocampus"
    if not (root / "dataset.json").is_file():
        pytest.skip(f"real hippocampus data not found at {root} (../shared/data is only present on the team's machines)")
    return root
