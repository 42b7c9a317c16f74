"""Where tensors compute and in which precision: the device choice and autocast, shared by training and
inference."""

from __future__ import annotations

import contextlib

import torch

from medmae.errors import UserError


def pick_device(choice: str, local_rank: int = 0) -> torch.device:
    """``auto``: the local GPU when there is one, else the CPU. On a GPU, cuDNN benchmarking is switched on
    (fixed-size crops and windows: the fastest convolution algorithms are picked once per shape)."""
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UserError("train.device=cuda, but torch sees no GPU")
        index = gpu_index(local_rank, torch.cuda.device_count())
        torch.cuda.set_device(index)
        torch.backends.cudnn.benchmark = True
        return torch.device("cuda", index)
    return torch.device("cpu")


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
