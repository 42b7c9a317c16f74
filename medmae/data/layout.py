"""Where a task's data is: the data root (``--data-root`` or ``$MEDMAE_DATA/<task>``), paths inside it, and
errors that say what layout was expected and what was found instead."""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath
from typing import Any

from medmae.errors import DataError, UserError
from medmae.tasks import TaskSpec

DATALISTS = ("dataset_0.json", "dataset.json")
ENV_DATA = "MEDMAE_DATA"


GENERIC_TREES = {
    "btcv": "DATA_ROOT/\n  dataset_0.json or dataset.json\n  imagesTr/ ...",
    "msd": "DATA_ROOT/\n  dataset.json\n  imagesTr/ ...\n  labelsTr/ ...",
    "nnunet": "DATA_ROOT/\n  dataset.json\n  imagesTr/<case>_0000<file_ending> ...\n  labelsTr/<case><file_ending> ...",
}


def layout_help(task: TaskSpec) -> str:
    """Where the task's data comes from and how its data root looks (the task file's ``source``, else the
    layout's general form)."""
    tree = task.source_tree or GENERIC_TREES.get(task.layout, "")
    return (f"Download: {task.source_url}\n" if task.source_url else "") + f"Expected layout ({task.layout}):\n{tree}"


def resolve_data_root(task: TaskSpec, data_root: str | Path | None) -> Path:
    """``--data-root``, else ``$MEDMAE_DATA/<task>``; the folder must exist."""
    if data_root is None:
        if not os.environ.get(ENV_DATA):
            raise UserError(
                f"no data root for task {task.name}: pass --data-root DIR or set {ENV_DATA} "
                f"(then ${ENV_DATA}/{task.name} is used).\n{layout_help(task)}"
            )
        data_root = Path(os.environ[ENV_DATA]) / task.name
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise DataError(root, f"no such data folder for task {task.name}.\n{layout_help(task)}")
    return root


def found_instead(root: Path, limit: int = 10) -> str:
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
    shown = ", ".join(entries[:limit]) + (f", ... ({len(entries)} entries)" if len(entries) > limit else "")
    return f"Found instead in {root}: {shown or 'nothing (the folder is empty)'}"


def inside(root: Path, relative: Any, where: str) -> Path:
    """``root / relative``, refusing absolute paths and ``..`` that leave the data root."""
    if not isinstance(relative, str) or not relative:
        raise DataError(where, f"expected a relative path string, got {relative!r}")
    pure = PurePosixPath(relative.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or re.match(r"^[A-Za-z]:", relative):
        raise DataError(where, f"path {relative!r} must be relative to the data root and stay inside it")
    return root.joinpath(*[part for part in pure.parts if part != "."])


LAYOUT_MARKERS = {"btcv": ("imagesTr", *DATALISTS), "msd": ("dataset.json",), "nnunet": ("dataset.json",)}


def check_layout(task: TaskSpec, root: Path) -> None:
    """Refuse a data root that does not look like the task's layout, saying what it expected and found."""
    markers = LAYOUT_MARKERS.get(task.layout, ())
    if markers and not any((root / marker).exists() for marker in markers):
        raise DataError(
            root,
            f"does not look like the {task.name} data (none of {', '.join(markers)} here)."
            f"\n{layout_help(task)}\n{found_instead(root)}",
        )
