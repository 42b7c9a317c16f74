"""One process or many under ``torchrun``: the same command, the global batch split over the ranks."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from medmae.devices import pick_device


@dataclass(frozen=True)
class Context:
    """Where this process runs: its rank among ``world`` processes and its device."""

    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Only the main process (rank 0) writes files and shows progress bars."""
        return self.rank == 0


def setup(device_choice: str, timeout_min: float = 60.0, threads: int | None = None) -> Context:
    """Join the process group that ``torchrun`` describes (``WORLD_SIZE`` > 1: NCCL on GPUs, gloo on CPUs).
    A collective or connect that waits longer than ``timeout_min`` fails, so ``torchrun`` can restart.
    ``threads``: CPU threads (:func:`~medmae.devices.use_cpu_threads`)."""
    world, rank, local_rank = (
        int(os.environ.get(k, d)) for k, d in (("WORLD_SIZE", 1), ("RANK", 0), ("LOCAL_RANK", 0))
    )
    device = pick_device(device_choice, local_rank, threads)
    if world > 1 and not dist.is_initialized():
        # rank 0 writes checkpoints and figures while the others wait: allow slow disks before the watchdog fires
        timeout = timedelta(minutes=timeout_min)
        backend = "nccl" if device.type == "cuda" else "gloo"
        bound = {"device_id": device} if device.type == "cuda" else {}  # NCCL binds its communicator to the GPU
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            store = attempt_store(world, timeout)
            dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout, **bound)
        else:
            dist.init_process_group(backend, timeout=timeout, **bound)
    return Context(rank, world, device)


def attempt_store(world: int, timeout: timedelta) -> dist.Store:
    """The store of ``torchrun``'s agent, with this restart attempt's keys apart from earlier attempts'.
    The agent keeps one store for all attempts (torch 2.13), so a restarted group would otherwise read the
    dead group's addresses and wait in gloo's or NCCL's connect for ever."""
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False, timeout=timeout
    )
    return dist.PrefixStore(f"medmae/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_mean(value: torch.Tensor, ctx: Context) -> torch.Tensor:
    """The mean of ``value`` over the processes (itself in one process)."""
    if ctx.world > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= ctx.world
    return value


def gather(items: list, ctx: Context) -> list:
    """Every process's ``items`` concatenated in rank order, on every process (``items`` itself in one)."""
    if ctx.world == 1:
        return items
    parts: list = [None] * ctx.world
    dist.all_gather_object(parts, items)
    return [item for part in parts for item in part]


def barrier(ctx: Context) -> None:
    if ctx.world > 1:
        dist.barrier()
