"""Self-describing checkpoints, written atomically with a SHA-256 beside them, and read without unpickling code.

Invariant: a ``<name>.sha256`` file, when present, always matches ``<name>``. It is removed before its
checkpoint changes and written only after the checkpoint is complete; a crash in between leaves a
checkpoint without a checksum (still read, it is whole: it appeared by rename), never a stale one.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

import medmae
from medmae.errors import UserError
from medmae.files import atomic_open, write_text

FORMAT = "medmae-checkpoint-1"
log = logging.getLogger("medmae")


class CheckpointError(UserError, ValueError):
    """A checkpoint file that cannot be used; the message names the file and the problem."""


def model_checkpoint(model: nn.Module, **extra: Any) -> dict[str, Any]:
    """The payload for ``model``: its registry ``config`` (name and geometry), weights and medmae's version."""
    return {
        "format": FORMAT,
        "medmae_version": medmae.__version__,
        "config": dict(model.config),
        "state_dict": model.state_dict(),
        **extra,
    }


def checksum_file(path: Path) -> Path:
    """Where the SHA-256 of checkpoint ``path`` is kept: ``<name>.sha256`` beside it."""
    return path.with_name(path.name + ".sha256")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> Path:
    """Write ``payload`` to ``path`` atomically (a temporary file in the same folder, fsync, rename), then
    its checksum file (``sha256sum -c`` reads it)."""
    path = Path(path)
    checksum_file(path).unlink(missing_ok=True)
    with atomic_open(path, "wb") as handle:
        try:
            torch.save(payload, handle)
        except RuntimeError:  # torch's zip writer reports a short write (full disk, size limit) as a RuntimeError;
            handle.write(b"\0")  # probe the temporary file: such a failure raises its OSError here
            handle.flush()
            raise
    write_text(checksum_file(path), f"{sha256(path)}  {path.name}\n")
    return path


def move_checkpoint(source: Path, target: Path) -> None:
    """Rename checkpoint ``source`` (and then its checksum) to ``target``, replacing ``target``."""
    checksum_file(target).unlink(missing_ok=True)
    source.replace(target)
    if checksum_file(source).exists():
        checksum_file(source).replace(checksum_file(target))


def verify_checksum(path: Path) -> None:
    """Raise :class:`CheckpointError` when ``path`` disagrees with its checksum file (absent: a note says
    that nothing was checked)."""
    try:
        expected = checksum_file(path).read_text().split()[0]
    except FileNotFoundError:
        log.warning("note: %s has no %s beside it: its integrity is not checked", path, checksum_file(path).name)
        return
    except (OSError, IndexError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{checksum_file(path)}: unreadable checksum file ({error})") from error
    found = sha256(path)
    if found != expected:
        raise CheckpointError(
            f"{path}: corrupt or changed after it was written (SHA-256 {found[:12]}..., "
            f"but {checksum_file(path).name} says {expected[:12]}...)"
        )


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a medmae checkpoint onto the CPU with ``weights_only=True`` (no code is ever unpickled), after
    checking it against its ``.sha256`` file when there is one."""
    path = checkpoint_file(path)
    return checked_payload(read_weights_only(path), path)


def checkpoint_file(path: str | Path) -> Path:
    """``path`` when it is a file; else :class:`CheckpointError` (for a run folder, naming its checkpoint)."""
    path = Path(path)
    if path.is_dir():
        inside = [p for p in (path / "checkpoints" / "best.pt", path / "best.pt", path / "last.pt") if p.is_file()]
        hint = f"; did you mean {inside[0]}?" if inside else ""
        raise CheckpointError(f"{path}: a folder, not a checkpoint file{hint}")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    return path


def read_weights_only(path: Path) -> Any:
    """What the file ``path`` holds, read onto the CPU with ``weights_only=True`` after checking it against its
    ``.sha256`` file when there is one; :class:`CheckpointError` for a corrupt file or one whose pickle would
    run code."""
    verify_checksum(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or unsafe files
        raise CheckpointError(f"{path}: {unreadable_reason(error)}") from error


def checked_payload(payload: Any, path: str | Path) -> dict[str, Any]:
    """``payload`` (read from ``path``) when it is a medmae checkpoint: the format tag, a model ``config``
    and a ``state_dict`` of tensors; else :class:`CheckpointError` naming ``path``."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a medmae checkpoint (no format tag {FORMAT!r})")
    state, config = payload.get("state_dict"), payload.get("config")
    if not (
        isinstance(config, dict)
        and isinstance(state, dict)
        and all(isinstance(v, torch.Tensor) for v in state.values())
    ):
        raise CheckpointError(f"{path}: a medmae checkpoint without a model 'config' and a 'state_dict' of tensors")
    return payload


def require(payload: dict[str, Any], keys: tuple[str, ...], path: str | Path, why: str) -> dict[str, Any]:
    """``payload`` when it holds every one of ``keys``, else :class:`CheckpointError` saying what ``why`` needs."""
    missing = [key for key in keys if key not in payload]
    if missing:
        raise CheckpointError(f"{path}: holds no {', '.join(missing)}; {why}")
    return payload


def unreadable_reason(error: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file: code in its pickle, or damage."""
    if isinstance(error, pickle.UnpicklingError) and "weights only" in str(error).lower():
        culprit = re.search(r"GLOBAL (\S+)", str(error))
        return (
            "refused: its pickle would call "
            + (culprit.group(1) if culprit else "code other than tensor loading")
            + ", and medmae never unpickles code (weights_only=True). Use checkpoints written by medmae"
        )
    return f"not a readable weights-only checkpoint: truncated or damaged ({type(error).__name__}: {error})"


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load ``state`` into ``model`` only when every key and shape agrees; otherwise raise
    :class:`CheckpointError` naming ``source`` and what disagrees, before any weight is touched."""
    wanted = model.state_dict()
    problems = [f"missing {key} {tuple(wanted[key].shape)}" for key in wanted if key not in state]
    problems += [f"unexpected {key}" for key in state if key not in wanted]
    problems += [
        f"{key}: checkpoint {tuple(state[key].shape)}, model {tuple(wanted[key].shape)}"
        for key in wanted
        if key in state and tuple(state[key].shape) != tuple(wanted[key].shape)
    ]
    if problems:
        shown = problems[:8] + ([f"... and {len(problems) - 8} more"] if len(problems) > 8 else [])
        raise CheckpointError(
            f"{source}: its weights do not fit {model.config.get('name', type(model).__name__)} "
            f"{dict(model.config)}: " + "; ".join(shown)
        )
    model.load_state_dict(state)
