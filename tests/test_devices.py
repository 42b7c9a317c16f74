"""Devices and precision: ``auto`` picks the GPU only when there is one, autocast follows the precision, and
CPU work gets no more threads than the cores other processes leave free."""

from __future__ import annotations

import pytest
import torch

from medmae import devices
from medmae.devices import autocast, autocast_dtype, cpu_threads, gpu_index, pick_device, use_cpu_threads
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


@pytest.mark.parametrize(
    "cores, load, processes, threads",
    [
        (2, 0.0, 1, 2),  # a quiet machine: every core
        (2, 0.9, 1, 2),  # less than one core's worth of others
        (2, 1.0, 1, 1),  # one core held by another process
        (2, 5.0, 1, 1),  # the new user's load of 4-6: one thread, never none
        (16, 3.5, 1, 13),
        (16, 0.0, 4, 4),  # torchrun, 4 processes on the node: a share each
        (16, 10.0, 4, 1),
        (64, 100.0, 1, 1),
    ],
)
def test_cpu_threads_are_the_free_cores_never_more_than_there_are_nor_fewer_than_one(cores, load, processes, threads):
    assert cpu_threads(cores, load, processes) == threads


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_train_threads_wins_then_omp_num_threads_then_the_load(monkeypatch, restore_threads):
    monkeypatch.setattr(devices, "available_cores", lambda: 2)
    monkeypatch.setattr(devices, "others_load", lambda: 4.2)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert use_cpu_threads(3) == 3 and torch.get_num_threads() == 3
    assert use_cpu_threads() == 2 and torch.get_num_threads() == 2
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert use_cpu_threads() == 1 and torch.get_num_threads() == 1
    assert pick_device("cpu") == torch.device("cpu") and torch.get_num_threads() == 1


def test_the_load_of_others_leaves_out_this_process_and_counts_its_share_of_the_machine(monkeypatch):
    monkeypatch.setattr(devices.os, "getloadavg", lambda: (6.0, 5.0, 4.0))
    monkeypatch.setattr(devices.time, "process_time", lambda: 120.0)  # 2 cores busy for the last minute
    monkeypatch.setattr(devices.time, "monotonic", lambda: devices._STARTED + 60.0)
    monkeypatch.setattr(devices.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(devices, "available_cores", lambda: 2)
    assert devices.others_load() == pytest.approx(4.0)
    monkeypatch.setattr(devices.os, "cpu_count", lambda: 8)  # allowed 2 of the machine's 8 cores
    assert devices.others_load() == pytest.approx(1.0)


def test_a_cgroup_cpu_quota_caps_the_cores(monkeypatch):
    monkeypatch.setattr(devices, "cgroup_cpu_quota", lambda: 1.5)
    assert devices.available_cores() == min(2, len(devices.os.sched_getaffinity(0)))
    monkeypatch.setattr(devices, "cgroup_cpu_quota", lambda: None)
    assert devices.available_cores() == len(devices.os.sched_getaffinity(0))


def test_the_load_rule_never_gives_more_threads_than_physical_cores(monkeypatch, restore_threads):
    """Hyper-threads: 8 logical CPUs on 4 cores give torch's default of 4, as without the rule."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(devices, "available_cores", lambda: 8)
    monkeypatch.setattr(devices, "PHYSICAL_CORES", 4)
    monkeypatch.setattr(devices, "others_load", lambda: 0.0)
    assert use_cpu_threads() == 4
