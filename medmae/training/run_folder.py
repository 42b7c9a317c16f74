"""A run folder: ``config.yaml``, ``metrics.csv``, ``checkpoints/{last,previous,best}.pt``, ``figures/``,
TensorBoard events when tensorboard is installed. Only the main process writes."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from medmae.checkpoint import CheckpointError, load_checkpoint, move_checkpoint, require, save_checkpoint
from medmae.errors import UserError
from medmae.evaluation.reports import write_csv
from medmae.files import remove_added, snapshot

log = logging.getLogger("medmae")
RESUME_KEYS = ("stage", "run_config", "progress", "optimizer", "scaler", "rng")


class RunFolder:
    """Where a run writes. ``write`` is False on every process but the main one: then nothing is written."""

    def __init__(self, root: str | Path, write: bool) -> None:
        self.root = Path(root)
        self.write = write
        self.checkpoints = self.root / "checkpoints"
        self.figures = self.root / "figures"
        self._board = None
        self.before = set()
        self.unusable = []

    def prepare(self, resume: bool) -> None:
        """Refuse to overwrite a folder that holds a checkpoint unless resuming (a run killed before its
        first checkpoint left only its config: it starts again); create the folders."""
        if not resume and (self.root / "config.yaml").exists():
            if any(self.checkpoints.glob("*.pt")):
                raise UserError(
                    f"{self.root}: already holds a run; pass --resume to continue it or choose another --output-dir"
                )
            log.info("%s: holds no checkpoint (a run stopped before its first one); starting again", self.root)
        self.before = snapshot(self.root)
        if self.write:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            for folder in (self.root, self.checkpoints, self.figures):
                for stale in folder.glob(".*.tmp"):  # a write cut short by a crash: never a whole file
                    log.info("removing %s, left by an interrupted write", stale)
                    stale.unlink(missing_ok=True)

    def latest(self) -> dict[str, Any] | None:
        """The newest sound checkpoint (``last.pt``, else ``previous.pt``; a truncated or corrupt one is
        reported and passed over), its path under ``loaded_from``, or None when there is none. Raises
        :class:`UserError` when every one is unusable."""
        problems = []
        for name in ("last.pt", "previous.pt"):
            path = self.checkpoints / name
            if not path.exists():
                continue
            try:
                payload = require(
                    load_checkpoint(path),
                    RESUME_KEYS,
                    path,
                    "resuming needs a checkpoint of this run folder (checkpoints/last.pt or previous.pt, not best.pt)",
                )
            except CheckpointError as error:
                log.warning("passing over %s", error)
                problems.append(str(error))
                self.unusable.append(path)
                continue
            log.info("resuming from %s", path)
            return {**payload, "loaded_from": str(path)}
        if problems:
            raise UserError(
                "no usable checkpoint to resume from: "
                + "; ".join(problems)
                + ". Move the checkpoints folder away to start the run again"
            )
        return None

    def set_aside(self, paths: list[Path]) -> None:
        """Rename unusable checkpoints to ``<name>.corrupt`` (kept for a look), so that the next save does
        not rotate a corrupt ``last.pt`` over a sound ``previous.pt``."""
        for path in paths if self.write else []:
            if path.exists():
                move_checkpoint(path, path.with_name(path.name + ".corrupt"))
                log.warning("set aside %s as %s.corrupt", path, path.name)

    def save(self, payload: dict[str, Any], best: bool = False) -> None:
        """Write ``best.pt`` (without optimiser state) when ``best``; then ``last.pt`` becomes ``previous.pt``
        and the payload is written atomically as ``last.pt``, each with its ``.sha256``."""
        if not self.write:
            return
        if best:  # first: a crash before last.pt is written then never leaves a best.pt older than the record
            save_checkpoint(
                {k: v for k, v in payload.items() if k not in ("optimizer", "scaler")}, self.checkpoints / "best.pt"
            )
        last = self.checkpoints / "last.pt"
        if last.exists():
            move_checkpoint(last, self.checkpoints / "previous.pt")
        save_checkpoint(payload, last)

    def log_epoch(self, rows: list[dict[str, Any]]) -> None:
        """Rewrite ``metrics.csv`` with ``rows`` (one per epoch) and send the newest row to TensorBoard."""
        if not self.write:
            return
        write_csv(pd.DataFrame(rows), self.root / "metrics.csv")
        board = self.board()
        if board is not None:
            for key, value in rows[-1].items():
                if key not in ("epoch", "step") and isinstance(value, (int, float)):
                    board.add_scalar(key, value, rows[-1]["step"])
            board.flush()

    def history(self, epochs: int) -> list[dict[str, Any]]:
        """The rows of ``metrics.csv`` up to ``epochs`` (a resumed run drops rows written after its checkpoint)."""
        path = self.root / "metrics.csv"
        if not path.exists():
            return []
        table = pd.read_csv(path)
        return table[table["epoch"] <= epochs].to_dict("records")

    def board(self):
        """A TensorBoard writer, or None when tensorboard is not installed (said once, with the fix)."""
        if self._board is None and self.write:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.info("note: no TensorBoard logs (tensorboard is not installed: pip install 'medmae[tensorboard]')")
                self._board = False
            else:
                self._board = SummaryWriter(str(self.root / "tensorboard"))
        return self._board or None

    def discard_if_unsaved(self) -> None:
        """After a failure before any checkpoint: remove what this run added (the whole folder when it made
        it), so a run stopped by bad data leaves nothing behind and the same command works once it is fixed."""
        if not self.write or any(self.checkpoints.glob("*.pt")):
            return
        self.close()
        remove_added(self.root, self.before)

    def close(self) -> None:
        if self._board:
            self._board.close()
            self._board = False


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
