"""Self-describing checkpoints, written atomically and read without unpickling code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

import medmae
from medmae.errors import UserError
from medmae.files import atomic_open

FORMAT = "medmae-checkpoint-1"


class CheckpointError(UserError, ValueError):
    """A checkpoint file that cannot be used; the message names the file and the problem."""


def model_checkpoint(model: nn.Module, **extra: Any) -> dict[str, Any]:
    """The payload for ``model``: its registry ``config`` (name and geometry), weights and medmae's version."""
    return {"format": FORMAT, "medmae_version": medmae.__version__, "config": dict(model.config),
            "state_dict": model.state_dict(), **extra}


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> Path:
    """Write ``payload`` to ``path`` atomically: a temporary file in the same folder, fsync, rename."""
    with atomic_open(path, "wb") as handle:
        torch.save(payload, handle)
    return Path(path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a medmae checkpoint onto the CPU with ``weights_only=True`` (no code is ever unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or unsafe files
        raise CheckpointError(f"{path}: not a readable weights-only checkpoint ({error})") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a medmae checkpoint (no format tag {FORMAT!r})")
    return payload
