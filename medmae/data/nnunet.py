"""nnU-Net v2 raw datasets read as they are: ``dataset.json`` with ``channel_names``, ``labels``,
``numTraining`` and ``file_ending``; ``imagesTr/<case>_0000<ending>`` (one file per channel: ``_0000``,
``_0001``, ...), ``labelsTr/<case><ending>`` and, if present, ``imagesTs/`` (unlabelled); endings match in
any case (``.NII.GZ`` files for ``.nii.gz``). Case ids carry no channel suffix, so that predictions are named
as nnU-Net's and pair with ``labelsTr``. Any medmae data set
is written in that layout by :func:`export_nnunet` (``medmae data export-nnunet``)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from medmae.data.cases import Case, Split, case_id
from medmae.data.readers import integer_labels, on_image_axes, read_channels, read_image
from medmae.data.writers import nifti_like
from medmae.errors import DataError
from medmae.files import write_nifti, write_text
from medmae.tasks import TaskSpec

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


def channel_of(case: str) -> tuple[str, int] | None:
    """``"liver_7_0001"`` -> ``("liver_7", 1)``: the case and channel of an nnU-Net file's name (its suffix
    removed), or None when it carries no 4-digit channel number."""
    match = re.fullmatch(rf"(.+)_(\d{{{CHANNEL_DIGITS}}})", case)
    return (match.group(1), int(match.group(2))) if match else None


def group_channels(named: dict[Path, tuple[str, int]], channels: int, where: Path) -> dict[str, tuple[Path, ...]]:
    """Case -> its ``channels`` files in channel order, from each file's (case, channel); a channel given
    twice or missing is a :class:`DataError` naming the files."""
    found: dict[str, dict[int, Path]] = {}
    for path, (case, channel) in sorted(named.items()):
        if (other := found.setdefault(case, {}).get(channel)) is not None:
            raise DataError(where, f"{other.name} and {path.name} are both channel {channel} of case {case}")
        found[case][channel] = path
    for case, files in found.items():
        if sorted(files) != list(range(channels)):
            expected = ", ".join(f"{case}_{k:04d}" for k in range(channels))
            raise DataError(where, f"case {case} has channel files {sorted(files)}; expected {expected}")
    return {case: tuple(files[k] for k in range(channels)) for case, files in sorted(found.items())}


def channel_groups(folder: Path, ending: str, channels: int) -> dict[str, tuple[Path, ...]]:
    """Case id -> its channel files in order, for the files of ``folder`` named ``<case>_<NNNN><ending>``
    (hidden files ignored); a file named otherwise, or a case without all ``channels`` files, is a
    :class:`DataError` naming it."""
    named = {}
    for path in sorted(p for p in folder.iterdir() if not p.name.startswith(".")):
        parts = channel_of(path.name[: -len(ending)]) if has_ending(path.name, ending) else None
        if parts is None:
            raise DataError(path, f"not named <case>_<4-digit channel>{ending}, as nnU-Net's {folder.name}/ needs")
        named[path] = parts
    return group_channels(named, channels, folder)


def has_ending(name: str, ending: str) -> bool:
    """Whether the file name ``name`` ends in ``ending``, in any case (``.NII.GZ`` for ``.nii.gz``)."""
    return name.lower().endswith(ending.lower())


def ending_of(name: str) -> str:
    """A file name's image ending (``.nii.gz`` for ``a_0000.nii.gz``, what :func:`case_id` takes off), else its
    last suffix."""
    return name[len(case_id(Path(name))) :] or Path(name).suffix or name


def check_ending(path: Path, folder: Path, ending: str) -> None:
    """Refuse the ``file_ending`` of the ``dataset.json`` at ``path`` when none of ``folder``'s files ends
    in it, naming the endings they have."""
    names = sorted(p.name for p in folder.iterdir() if not p.name.startswith(".") and p.is_file())
    if names and not any(has_ending(name, ending) for name in names):
        found = sorted({ending_of(name) for name in names})
        fix = f"set it to {found[0]!r}" if len(found) == 1 else "rename the files or set it to their ending"
        raise DataError(
            path,
            f"'file_ending' is {ending!r}, while the files of {folder.name}/ end in {', '.join(found)} "
            f"({names[0]}, ...): {fix}",
        )


def read_nnunet(path: Path, raw: dict[str, Any], root: Path) -> dict[str, list[Case]]:
    """The cases of the nnU-Net dataset whose ``dataset.json`` is ``path``: every labelled case of
    ``imagesTr`` under ``training`` (nnU-Net keeps its splits outside the raw dataset), ``imagesTs`` under
    ``unlabelled``."""
    ending, channels = raw["file_ending"], channel_count(raw, path)
    if not isinstance(ending, str) or not ending.startswith("."):
        raise DataError(path, f"'file_ending' must be a suffix such as '.nii.gz', not {ending!r}")
    if not (root / "imagesTr").is_dir():
        raise DataError(root, "an nnU-Net dataset needs an imagesTr/ folder")
    check_ending(path, root / "imagesTr", ending)
    labels = {p.name.lower(): p for p in (root / "labelsTr").iterdir()} if (root / "labelsTr").is_dir() else {}
    training = []
    for case, files in channel_groups(root / "imagesTr", ending, channels).items():
        label = labels.get(f"{case}{ending}".lower(), root / "labelsTr" / f"{case}{ending}")
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


def export_nnunet(task: TaskSpec, split: Split, output: Path, progress: bool = True) -> Path:
    """Write ``split``'s cases as an nnU-Net v2 raw dataset at ``output``: every labelled case (train,
    validation and test parts) into ``imagesTr/<id>_<NNNN>.nii.gz`` (one file per channel, any input
    format read as medmae reads it) and ``labelsTr/<id>.nii.gz`` (in the image's orientation, as nnU-Net
    needs), unlabelled images into ``imagesTs/``, and
    a ``dataset.json`` with the task's channels and labels (regions as nnU-Net's region labels with their
    ``regions_class_order``, the ignore label as ``ignore``)."""
    labelled = sorted({c.id: c for c in split.train + split.validation + split.test}.values(), key=lambda c: c.id)
    for case in tqdm([*labelled, *split.unlabelled], desc="exporting", unit="case", disable=not progress or None):
        image = read_channels(case.image_files)
        folder = "imagesTr" if case.label is not None else "imagesTs"
        for channel, array in enumerate(image.array):
            name = f"{case.id}_{channel:0{CHANNEL_DIGITS}d}.nii.gz"
            source = case.image_files[min(channel, len(case.image_files) - 1)]  # one 4D file, or one per channel
            write_nifti(nifti_like(array, image.affine, source), output / folder / name)
        if case.label is not None:
            label = on_image_axes(read_image(case.label), image)
            labels = integer_labels(label)[0].astype(np.uint8)
            write_nifti(nifti_like(labels, label.affine, case.label), output / "labelsTr" / f"{case.id}.nii.gz")
    labels: dict[str, Any] = {name: value for value, name in enumerate(task.labels)}
    if task.regions:
        labels = {"background": 0, **{name: list(values) for name, values in task.regions.items()}}
    if task.ignore_label is not None:
        labels["ignore"] = task.ignore_label
    description = {
        "channel_names": {str(k): name for k, name in enumerate(task.channels)},
        "labels": labels,
        "numTraining": len(labelled),
        "file_ending": ".nii.gz",
        "name": task.name,
        "description": f"{task.title}; exported by medmae from {split.source} (split {split.name})",
    }
    if task.regions:
        description["regions_class_order"] = list(task.region_values)
    write_text(output / "dataset.json", json.dumps(description, indent=2) + "\n")
    return output
