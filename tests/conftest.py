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
    return shared("msd_hippocampus")


def shared(name: str) -> Path:
    """A folder of ../shared/data, or a skip saying it is absent."""
    root = SHARED_DATA / name
    if not root.is_dir():
        pytest.skip(f"real data {root} not found (../shared/data is only present on the team's machines)")
    return root


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """A small synthetic demo set (6 cases, BTCV layout), written once per test session."""
    from medmae.data.synthetic import write_demo_dataset

    return write_demo_dataset(tmp_path_factory.mktemp("demo"), cases=6, validation=1, seed=0)
