"""Where tensors compute and in which precision: the device choice, the CPU thread count and autocast, shared
by training and inference."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from pathlib import Path

import torch

from medmae.errors import UserError

log = logging.getLogger("medmae")
_STARTED = time.monotonic()  # about when this process started: its own share of the load is measured from here
_LOGGED: set[int] = set()  # the thread counts already announced in this process
PHYSICAL_CORES = torch.get_num_threads()  # torch's own default: physical cores, not hyper-threads


def pick_device(choice: str, local_rank: int = 0, threads: int | None = None) -> torch.device:
    """``auto``: the local GPU when there is one, else the CPU. On a GPU, cuDNN benchmarking is switched on
    (fixed-size crops and windows: the fastest convolution algorithms are picked once per shape); on the CPU,
    torch's thread count is set by :func:`use_cpu_threads` (``threads``: ``train.threads``)."""
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UserError("train.device=cuda, but torch sees no GPU")
        index = gpu_index(local_rank, torch.cuda.device_count())
        torch.cuda.set_device(index)
        torch.backends.cudnn.benchmark = True
        return torch.device("cuda", index)
    use_cpu_threads(threads)
    return torch.device("cpu")


def cpu_threads(cores: int, load: float, processes: int = 1) -> int:
    """Intra-op threads for each of ``processes`` processes on ``cores`` cores that other processes load
    with ``load`` runnable tasks: the cores they leave free (whole cores), shared out, at least 1.

    Every parallel kernel waits at its end for its slowest thread; a thread that waits for a core another
    process holds stalls the whole step, and the idle threads spin meanwhile. So threads never outnumber
    the free cores: 2 cores and load 0.8 give 2, load 1 or more gives 1.
    """
    free = cores - math.floor(max(load, 0.0))
    return max(1, free // max(processes, 1))


def available_cores() -> int:
    """The cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota (containers)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return max(1, min(cores, math.ceil(quota))) if quota else cores


def cgroup_cpu_quota() -> float | None:
    """CPUs allowed by this process's cgroup v2 ``cpu.max`` (``"200000 100000"`` -> 2.0); None without one."""
    try:
        group = Path("/proc/self/cgroup").read_text().strip().rpartition("::")[2]
        quota, period = (Path("/sys/fs/cgroup") / group.lstrip("/") / "cpu.max").read_text().split()
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def others_load() -> float:
    """Runnable tasks of other processes on this process's cores: the 1-minute load average less this
    process's own CPU use (averaged since it started, at least over a minute), scaled to the share of the
    machine's CPUs it may use; 0 where the system gives no load average."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0
    own = time.process_time() / max(time.monotonic() - _STARTED, 60.0)
    share = available_cores() / (os.cpu_count() or 1)
    return max(0.0, load - own) * min(share, 1.0)


def omp_threads() -> int | None:
    """The thread count ``OMP_NUM_THREADS`` sets (its first level: ``"4,2"`` -> 4), or None when unset or not
    a positive number."""
    first = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(first) if first.isdigit() and int(first) > 0 else None


def use_cpu_threads(requested: int | None = None) -> int:
    """Set torch's intra-op thread count for CPU work and return it: ``requested`` (``train.threads``) when
    given, else ``OMP_NUM_THREADS`` when set, else :func:`cpu_threads` of the available cores (never more
    than torch's default, the physical cores: a second hyper-thread per core slows convolutions), the load
    of other processes and torchrun's ``LOCAL_WORLD_SIZE``. Logged once per count."""
    if requested is not None:
        threads, why = requested, "train.threads"
    elif omp_threads() is not None:
        threads, why = omp_threads(), "OMP_NUM_THREADS"
    else:
        cores, load = min(available_cores(), PHYSICAL_CORES), others_load()
        threads = cpu_threads(cores, load, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        why = f"{cores} cores available, 1-minute load {load:.1f} from other processes"
    torch.set_num_threads(threads)
    if threads not in _LOGGED:
        _LOGGED.add(threads)
        log.info("CPU: %d intra-op thread%s (%s)", threads, "" if threads == 1 else "s", why)
    return threads


def gpu_index(local_rank: int, visible: int) -> int:
    """The GPU of local process ``local_rank`` when it sees ``visible`` GPUs: its own when every process
    sees them all (``torchrun``), the only one when the launcher gives each process a single GPU (SLURM's
    ``--gpus-per-task``, a ``CUDA_VISIBLE_DEVICES`` per rank). Raises UserError for any other count."""
    if local_rank < visible:
        return local_rank
    if visible == 1:
        return 0
    raise UserError(
        f"LOCAL_RANK={local_rank}, but this process sees {visible} GPUs: give each process all the node's "
        "GPUs or exactly one (CUDA_VISIBLE_DEVICES)"
    )


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """``auto``: bf16 on GPU, none (fp32) on CPU."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    dtype = autocast_dtype(precision, device)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
