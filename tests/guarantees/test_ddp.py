"""Two processes under ``torchrun`` (gloo, CPU) against one process over the same global batch: identical
weights on both ranks, equal to one process within 1e-5; files from rank 0 only."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

from medmae.training.optim import learning_rate
from tests.helpers import TINY, run_torchrun

DDP_SCRIPT = """
import os, sys, torch
from medmae.training import finetune, pretrain
from medmae.training.session import RunRequest
rank = int(os.environ.get("RANK", 0))
output = sys.argv[2] if rank == 0 else sys.argv[3]  # rank 1 is pointed elsewhere: it must write nothing there
run = dict(task="demo", data_root=sys.argv[1], config_file=sys.argv[4],
           overrides=["data.batch_size=4", "train.epochs=2", "train.steps_per_epoch=2", *sys.argv[8:]])
if sys.argv[7] == "pretrain":
    model = pretrain.run(RunRequest(**run, output_dir=output + "/mae"))
else:
    mae = sys.argv[2] + "/mae/checkpoints/last.pt"
    model = finetune.run(RunRequest(**run, output_dir=output + "/unetr", pretrained=mae))
torch.save(model.state_dict(), os.path.join(sys.argv[5], f"{sys.argv[7]}_{sys.argv[6]}_rank{rank}.pt"))
"""


def launch(args: list[str], name: str) -> subprocess.CompletedProcess:
    """The worker script ``args`` under two-process torchrun (``ddp``) or as one process (``single``)."""
    if name == "ddp":
        return run_torchrun(args)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, *args], capture_output=True, encoding="utf-8", errors="replace", env=env, check=False
    )


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_over_the_same_global_batch(tmp_path, demo_root):
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)
    for stage in ("pretrain", "finetune"):  # one process group per command, as on the command line
        for name in ("ddp", "single"):
            args = [
                str(script),
                str(demo_root),
                str(tmp_path / f"{name}_run"),
                str(tmp_path / f"{name}_rank1_folder"),
                TINY,
                str(tmp_path),
                name,
                stage,
            ]
            run = launch(args, name)
            assert run.returncode == 0, run.stderr[-3000:]
    rank0, rank1, single = (
        torch.load(tmp_path / f"pretrain_{n}.pt") for n in ("ddp_rank0", "ddp_rank1", "single_rank0")
    )
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    # Same samples, crops and masks; only the order of float32 sums differs (gloo averages two half-batch
    # gradients, one process sums the whole batch): round-off of about 1e-7 relative, which four AdamW
    # steps of at most lr = 7.8e-4 each keep far below 1e-5.
    assert max((rank0[k] - single[k]).abs().max().item() for k in rank0) < 1e-5
    assert not (tmp_path / "ddp_rank1_folder").exists()  # only rank 0 writes
    assert len(pd.read_csv(tmp_path / "ddp_run" / "mae" / "metrics.csv")) == 2
    # Fine-tuning UNETR from those weights: the first epoch's loss (same samples, same crops) agrees to
    # round-off. The weights agree only to Adam's bound: Adam's first updates are close to lr x sign(g), so
    # an element whose gradient is at round-off level (common in the ReLU / InstanceNorm conv decoder)
    # can step either way, up to 2 x the sum of the learning rates apart. Validation is sharded over the
    # ranks and gathered: both ranks agree on the score, and so on which checkpoint is best.
    rank0, rank1, single = (
        torch.load(tmp_path / f"finetune_{n}.pt") for n in ("ddp_rank0", "ddp_rank1", "single_rank0")
    )
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    rates = sum(learning_rate(step, total_steps=4, warmup_steps=2, peak=0.05 * 4 / 256) for step in range(4))
    assert max((rank0[k] - single[k]).abs().max().item() for k in rank0) <= 2 * rates
    ddp, one = (pd.read_csv(tmp_path / f"{name}_run" / "unetr" / "metrics.csv") for name in ("ddp", "single"))
    assert ddp["loss"][0] == pytest.approx(one["loss"][0], rel=1e-5)
    assert ddp["val_mean_dsc"].tolist() == pytest.approx(one["val_mean_dsc"].tolist(), abs=0.02)


@pytest.mark.slow
def test_two_process_ddp_pretraining_matches_one_process_with_the_monai_sampler(tmp_path, demo_root):
    """The fallback chain (MONAI transforms in loader processes) seeds each item alike, so it agrees too."""
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)
    for name in ("ddp", "single"):
        args = [
            str(script),
            str(demo_root),
            str(tmp_path / f"{name}_run"),
            str(tmp_path / "elsewhere"),
            TINY,
            str(tmp_path),
            name,
            "pretrain",
            "data.sampler=monai",
        ]
        run = launch(args, name)
        assert run.returncode == 0, run.stderr[-3000:]
    rank0, single = (torch.load(tmp_path / f"pretrain_{n}.pt") for n in ("ddp_rank0", "single_rank0"))
    assert max((rank0[k] - single[k]).abs().max().item() for k in rank0) < 1e-5
