"""nnU-Net v2 raw datasets read as they are: ``dataset.json`` with ``channel_names``, ``labels``,
``numTraining`` and ``file_ending``; ``imagesTr/<case>_0000<ending>`` (one file per channel: ``_0000``,
``_0001``, ...), ``labelsTr/<case><ending>`` and, if present, ``imagesTs/`` (unlabelled). Case ids carry no
channel suffix, so that predictions are named as nnU-Net's and pair with ``labelsTr``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from medmae.data.cases import Case
from medmae.errors import DataError

CHANNEL_DIGITS = 4


def is_nnunet(raw: Any) -> bool:
    """Whether a parsed ``dataset.json`` is nnU-Net v2's (it names channels and a file ending)."""
    return isinstance(raw, dict) and "channel_names" in raw and "file_ending" in raw


def channel_count(raw: dict[str, Any], path: Path) -> int:
    """The number of channels ``channel_names`` declares; its keys must be 0, 1, ... in some order."""
    names = raw["channel_names"]
    keys = sorted(str(key) for key in names) if isinstance(names, dict) else []
    if not keys or keys != [str(k) for k in range(len(keys))]:
        raise DataError(path, f"'channel_names' must map 0, 1, ... to channel names, not {names!r}")
    return len(keys)


def channel_groups(folder: Path, ending: str, channels: int) -> dict[str, tuple[Path, ...]]:
    """Case id -> its channel files in order, for the files of ``folder`` named ``<case>_<NNNN><ending>``
    (hidden files ignored); a file named otherwise, or a case without all ``channels`` files, is a
    :class:`DataError` naming it."""
    pattern = re.compile(rf"^(.+)_(\d{{{CHANNEL_DIGITS}}}){re.escape(ending)}$")
    found: dict[str, dict[int, Path]] = {}
    for path in sorted(p for p in folder.iterdir() if not p.name.startswith(".")):
        match = pattern.match(path.name)
        if not match:
            raise DataError(path, f"not named <case>_<4-digit channel>{ending}, as nnU-Net's {folder.name}/ needs")
        found.setdefault(match.group(1), {})[int(match.group(2))] = path
    for case, files in found.items():
        if sorted(files) != list(range(channels)):
            expected = ", ".join(f"{case}_{k:04d}{ending}" for k in range(channels))
            raise DataError(folder, f"case {case} has channel files {sorted(files)}; expected {expected}")
    return {case: tuple(files[k] for k in range(channels)) for case, files in sorted(found.items())}


def read_nnunet(path: Path, raw: dict[str, Any], root: Path) -> dict[str, list[Case]]:
    """The cases of the nnU-Net dataset whose ``dataset.json`` is ``path``: every labelled case of
    ``imagesTr`` under ``training`` (nnU-Net keeps its splits outside the raw dataset), ``imagesTs`` under
    ``unlabelled``."""
    ending, channels = raw["file_ending"], channel_count(raw, path)
    if not isinstance(ending, str) or not ending.startswith("."):
        raise DataError(path, f"'file_ending' must be a suffix such as '.nii.gz', not {ending!r}")
    if not (root / "imagesTr").is_dir():
        raise DataError(root, "an nnU-Net dataset needs an imagesTr/ folder")
    training = []
    for case, files in channel_groups(root / "imagesTr", ending, channels).items():
        label = root / "labelsTr" / f"{case}{ending}"
        if not label.is_file():
            raise DataError(label, f"missing: the label of training case {case} ({files[0].name})")
        training.append(Case(case, files[0], label, more_channels=files[1:]))
    if raw.get("numTraining") not in (None, len(training)):
        raise DataError(path, f"'numTraining' says {raw['numTraining']}, imagesTr/ holds {len(training)} cases")
    unlabelled = []
    if (root / "imagesTs").is_dir():
        for case, files in channel_groups(root / "imagesTs", ending, channels).items():
            unlabelled.append(Case(case, files[0], more_channels=files[1:]))
    return {"training": training, "validation": [], "test": [], "unlabelled": unlabelled}
