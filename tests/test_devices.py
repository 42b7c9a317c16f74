"""Devices and precision: ``auto`` picks the GPU only when there is one, and autocast follows the precision."""

from __future__ import annotations

import pytest
import torch

from medmae.devices import autocast, autocast_dtype, gpu_index, pick_device
from medmae.errors import UserError


def test_auto_and_cpu_choose_the_cpu_without_a_gpu_and_cuda_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
    assert pick_device("cpu") == torch.device("cpu")
    with pytest.raises(UserError, match="train.device=cuda, but torch sees no GPU"):
        pick_device("cuda")


@pytest.mark.parametrize(
    "precision, device, dtype",
    [
        ("auto", "cpu", None),
        ("auto", "cuda", torch.bfloat16),
        ("bf16", "cpu", torch.bfloat16),
        ("fp16", "cuda", torch.float16),
        ("fp32", "cuda", None),
    ],
)
def test_autocast_dtype_follows_the_precision_and_the_device(precision, device, dtype):
    assert autocast_dtype(precision, torch.device(device)) is dtype


def test_autocast_computes_in_bf16_only_when_asked():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast("bf16", torch.device("cpu")):
        assert (a @ b).dtype == torch.bfloat16
    with autocast("auto", torch.device("cpu")):
        assert (a @ b).dtype == torch.float32


@pytest.mark.parametrize(
    "local_rank, visible, index",
    [(0, 1, 0), (3, 8, 3), (3, 1, 0), (7, 8, 7)],  # torchrun: each rank sees all; SLURM per task: one each
)
def test_each_process_takes_its_own_gpu_under_any_launcher(local_rank, visible, index):
    assert gpu_index(local_rank, visible) == index


def test_a_gpu_count_that_fits_no_launcher_is_refused():
    with pytest.raises(UserError, match="LOCAL_RANK=3, but this process sees 2 GPUs"):
        gpu_index(3, 2)


def test_a_gpu_run_switches_on_cudnn_benchmarking_and_sets_the_launchers_gpu(monkeypatch):
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    assert pick_device("auto", local_rank=2) == torch.device("cuda", 0)
    assert chosen == [0] and torch.backends.cudnn.benchmark
