"""Shared fixtures: seeded torch, and the real data in ../shared/data (skipped when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.helpers import demo_run, shared

# One CPU thread count for the whole session and its subprocesses, whatever the load when each run starts
# (medmae picks fewer threads on a busy machine): runs compared bitwise must compute with the same count.
os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))


@pytest.fixture(scope="session", autouse=True)
def _store_folder(tmp_path_factory) -> None:
    """Preprocessed stores go into one folder of the session (and its subprocesses), not into data roots."""
    os.environ["MEDMAE_STORE"] = str(tmp_path_factory.mktemp("stores"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def hippocampus_root() -> Path:
    return shared("msd_hippocampus")


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """A small synthetic demo set (6 cases, BTCV layout), written once per test session."""
    from medmae.data.synthetic import write_demo_dataset

    return write_demo_dataset(tmp_path_factory.mktemp("demo"), cases=6, validation=1, seed=0)


@pytest.fixture(scope="session")
def demo_checkpoint(demo_root, tmp_path_factory) -> Path:
    """A tiny UNETR fine-tuned on the demo set for one step: a real ``best.pt`` for evaluate and predict."""
    from medmae.cli import main

    output = tmp_path_factory.mktemp("demo_unetr") / "unetr"
    one_step = ["train.epochs=1", "optim.warmup_epochs=0", "train.steps_per_epoch=1"]
    assert main(demo_run("finetune", demo_root, output, *(flag for key in one_step for flag in ("--set", key)))) == 0
    return output / "checkpoints" / "best.pt"
