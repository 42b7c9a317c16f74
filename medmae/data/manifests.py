"""Which cases a task has and how they split into train, validation and test parts.

Where the cases come from, first found wins: ``--manifest FILE``; ``dataset_0.json`` or ``dataset.json``
at the data root (MONAI datalist, MSD or nnU-Net v2 format); the stored ``data_manifests/<task>.json``; for
ChestX-ray14 the official list files (see :mod:`medmae.data.chestxray`).

Splits: ``datalist`` (the parts a datalist names: its ``test`` list if labelled, else its ``validation``
list is the test part, as MONAI's BTCV ``dataset_0.json`` is used); ``fold0`` ... ``fold4`` (5 folds by
sorted case id, shuffled with seed 0; fold k is the test part); or a named split of the stored manifest
(``monai_dataset_0``, ``transunet``, ``holdout40``). Where a split has no validation part, it is carved
from train with the task's seeded rule; the test part is never used to pick a checkpoint. Any split with
``_cv0`` ... ``_cv4`` appended is a cross-validation fold of its train and validation cases (its test part
kept out), for ``medmae finetune --folds``.
"""

from __future__ import annotations

import glob
import json
import os
import random
import re
from pathlib import Path
from typing import Any

from medmae import resource_dir
from medmae.data.cases import Case, Split, case_id
from medmae.data.chestxray import chestxray_split
from medmae.data.layout import DATALISTS, check_layout, found_instead, inside, layout_help, resolve_data_root
from medmae.data.nnunet import is_nnunet, read_nnunet
from medmae.data.readers import IMAGE_SUFFIXES, is_dicom_series
from medmae.errors import DataError, UserError
from medmae.tasks import TaskSpec

FOLDS = 5
FOLD_SEED = 0
CV_SUFFIX = "_cv"  # <split>_cv<k>: cross-validation fold k of a split's train and validation cases
MANIFEST_HINT = (
    "pass --manifest FILE naming the cases you have (a MONAI datalist: "
    '{"training": [{"image": ..., "label": ...}, ...]}, paths relative to the data root), or save it here as '
    "dataset_0.json"
)


def read_datalist(path: Path, root: Path) -> dict[str, list[Case]]:
    """A MONAI datalist / MSD ``dataset.json``: the labelled entries of ``training``, ``validation`` and
    ``test``, and under ``unlabelled`` every entry without a label (an image path, or a dict with no
    ``label``; once, however many parts name it). An nnU-Net v2 ``dataset.json`` is read from its folders
    (:func:`medmae.data.nnunet.read_nnunet`). A UTF-8 byte-order mark is accepted."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(path, f"unreadable JSON manifest ({error})") from error
    if is_nnunet(raw):
        return read_nnunet(path, raw, root)
    if not isinstance(raw, dict) or not isinstance(raw.get("training"), list):
        raise DataError(
            path,
            'a manifest needs a \'training\' list of {"image": ..., "label": ...} entries (MSD, MONAI), or '
            "'channel_names' and 'file_ending' (nnU-Net v2)",
        )
    parts = {"training": [], "validation": [], "test": [], "unlabelled": []}
    seen = {}
    listed = set()
    for key in ("training", "validation", "test"):
        entries = raw.get(key) or []
        if not isinstance(entries, list):
            raise DataError(path, f"'{key}' must be a list")
        for k, entry in enumerate(entries):
            where = f"{path} [{key}][{k}]"
            if isinstance(entry, str):
                entry = {"image": entry}
            if not isinstance(entry, dict) or "image" not in entry:
                raise DataError(where, "an entry needs an 'image' (and a 'label' to be trained or scored on)")
            image = inside(root, entry["image"], where)
            label = inside(root, entry["label"], where) if "label" in entry else None
            case = Case(case_id(image), image, label)
            if seen.get(case.id, case) != case:
                raise DataError(path, f"case id {case.id} names two different files")
            if (key, case.id) in listed:
                raise DataError(where, f"case {case.id} is listed twice in '{key}'")
            seen[case.id] = case
            part = key if label else "unlabelled"
            if (part, case.id) not in listed:  # an unlabelled image named in two parts is used once
                parts[part].append(case)
            listed |= {(key, case.id), (part, case.id)}
    if not any(parts.values()):
        raise DataError(path, "lists no cases: 'training' (and every other list) is empty")
    return parts


NO_MANIFEST = {"default_split": "fold0"}


def stored_manifest(task: TaskSpec) -> dict[str, Any]:
    """The task's stored manifest (default split, named splits, perhaps a case list): ``manifest`` beside
    the task file, else in medmae's ``data_manifests/``; a task without one splits by ``fold0``."""
    if task.manifest is None:
        return NO_MANIFEST
    beside, shipped = task.path.parent / task.manifest, resource_dir("data_manifests") / task.manifest
    path = beside if beside.is_file() else shipped
    if not path.is_file():
        raise UserError(f"task {task.name}: its manifest {task.manifest} is neither at {beside} nor at {shipped}")
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(path, f"unreadable manifest ({error})") from error


def carve(cases: list[Case], fraction: float, seed: int) -> tuple[list[Case], list[Case]]:
    """(train, validation): ``round(fraction * n)`` cases (at least 1, none when n < 2), drawn by a
    seeded shuffle of the cases sorted by id."""
    ordered = sorted(cases, key=lambda c: c.id)
    if len(ordered) < 2:
        return ordered, []
    random.Random(seed).shuffle(ordered)
    n_val = max(1, round(fraction * len(ordered)))
    validation = sorted(ordered[:n_val], key=lambda c: c.id)
    return sorted(ordered[n_val:], key=lambda c: c.id), validation


def fold_split(cases: list[Case], fold: int) -> tuple[list[Case], list[Case]]:
    """(rest, test) for fold ``fold`` of 5 by sorted case id shuffled with seed 0."""
    ordered = sorted(cases, key=lambda c: c.id)
    random.Random(FOLD_SEED).shuffle(ordered)
    test = [c for k, c in enumerate(ordered) if k % FOLDS == fold]
    return sorted(set(ordered) - set(test), key=lambda c: c.id), sorted(test, key=lambda c: c.id)


def cross_validation(split: Split, fold: int) -> Split:
    """Cross-validation fold ``fold`` of ``split`` (named ``<split>_cv<fold>``): its train and validation cases
    pooled and cut into 5 folds by sorted case id shuffled with seed 0, fold ``fold`` the validation part and
    the other four the train part; the test part stays out of every fold (as nnU-Net's ``imagesTs``)."""
    pool = sorted({c.id: c for c in [*split.train, *split.validation]}.values(), key=lambda c: c.id)
    if len(pool) < FOLDS:
        raise UserError(f"split {split.name}: {len(pool)} training and validation cases cannot make {FOLDS} folds")
    train, validation = fold_split(pool, fold)
    name = f"{split.name}{CV_SUFFIX}{fold}"
    return Split(name, split.source, train, validation, split.test, split.unlabelled, split.notes)


def load_split(
    task: TaskSpec, data_root: str | Path | None, manifest: str | Path | None = None, split: str | None = None
) -> Split:
    """The cases of ``task`` at ``data_root`` in the train, validation and test parts of ``split``; a name
    ``<split>_cv<k>`` gives cross-validation fold ``k`` of ``<split>`` (:func:`cross_validation`)."""
    folded = re.fullmatch(rf"(.+){CV_SUFFIX}([0-{FOLDS - 1}])", split or "")
    if folded:
        return cross_validation(load_split(task, data_root, manifest, folded.group(1)), int(folded.group(2)))
    root = resolve_data_root(task, data_root)
    if task.layout == "chestxray14":
        if manifest is not None:
            raise UserError(
                f"--manifest is not used by task {task.name}: its cases come from the official list "
                "files at the data root (edit train_val_list.txt and test_list.txt to change them)"
            )
        return chestxray_split(task, root, split)
    if manifest is None:
        check_layout(task, root)
    stored = stored_manifest(task)
    source, parts = _case_source(task, root, manifest, stored)
    labelled = parts["training"] + parts["validation"] + parts["test"]
    pool = sorted({c.id: c for c in labelled}.values(), key=lambda c: c.id)
    has_parts = bool(parts.get("validation") or parts.get("test"))
    name = split or ("datalist" if has_parts else stored["default_split"])
    validation: list[Case] | None = None
    notes: list[str] = []
    if name == "datalist":
        if not has_parts:
            raise UserError(f"split 'datalist': {source} names no validation or test cases; use fold0 ... fold4")
        train = parts["training"]
        test = parts["test"] or parts["validation"]
        validation = parts["validation"] if parts["test"] and parts["validation"] else None
    elif re.fullmatch(r"fold[0-9]+", name) and int(name[4:]) < FOLDS:
        train, test = fold_split(pool, int(name[4:]))
    elif name in stored.get("splits", {}):
        train, test = (_by_id(pool, stored["splits"][name][part], source, name) for part in ("train", "test"))
    else:
        known = ["datalist"] * has_parts + [f"fold{k}" for k in range(FOLDS)] + list(stored.get("splits", {}))
        raise UserError(f"unknown split {name!r} for task {task.name}; choose one of {', '.join(known)}")
    if validation is None:
        train, validation = carve(train, task.validation_fraction, task.validation_seed)
        if not validation:
            notes.append("no validation part: too few training cases to carve one")
    result = Split(name, source, train, validation, test, parts["unlabelled"], notes)
    result.note_overlaps()
    return result


def _case_source(
    task: TaskSpec, root: Path, manifest: str | Path | None, stored: dict[str, Any]
) -> tuple[str, dict[str, list[Case]]]:
    if manifest is not None:
        path = Path(manifest)
        if not path.is_file():
            raise DataError(path, "manifest file not found")
        return str(path), read_datalist(path, root)
    for name in DATALISTS:
        if (root / name).is_file():
            return str(root / name), read_datalist(root / name, root)
    if "cases" in stored:
        return f"data_manifests/{task.manifest}", _stored_cases(task, root, stored)
    raise DataError(
        root,
        f"no {' or '.join(DATALISTS)} here, and task {task.name} lists its cases only "
        f"through it: {MANIFEST_HINT}.\n{layout_help(task)}\n{found_instead(root)}",
    )


def _stored_cases(task: TaskSpec, root: Path, stored: dict[str, Any]) -> dict[str, list[Case]]:
    """The cases the stored manifest lists (all as training cases); where some of their images are not at
    ``root``, a :class:`DataError` that says where the list came from and suggests ``--manifest``."""
    cases = [
        Case(e["id"], inside(root, e["image"], task.manifest), inside(root, e["label"], task.manifest))
        for e in stored["cases"]
    ]
    missing = [case.image.relative_to(root).as_posix() for case in cases if not case.image.exists()]
    if missing:
        raise DataError(
            root,
            f"no {' or '.join(DATALISTS)} here, so task {task.name}'s cases come from its stored list "
            f"data_manifests/{task.manifest}, and {len(missing)} of its {len(cases)} images are not here "
            f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}): {MANIFEST_HINT}",
        )
    return {"training": cases, "validation": [], "test": [], "unlabelled": []}


def _by_id(pool: list[Case], ids: list[str], source: str, split: str) -> list[Case]:
    by_id = {c.id: c for c in pool}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise UserError(
            f"split {split!r} needs cases missing from {source}: {', '.join(missing[:10])}"
            + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        )
    return [by_id[i] for i in ids]


IMAGES_SPLIT = "images"


def images_split(task: TaskSpec, sources: list[str]) -> Split:
    """Unlabelled images for pretraining without a manifest: every image under the folders (searched
    recursively) or glob patterns ``sources``, each once. A seeded share (the task's validation fraction
    and seed) is the validation part, held out from training for the reconstruction check; the rest is the
    train part. A case's id is its path below the images' common folder, without the suffix."""
    found = sorted({path.resolve() for source in sources for path in find_images(source, task.spatial_dims)})
    if not found:
        suffixes = ", ".join(IMAGE_SUFFIXES[task.spatial_dims])
        raise UserError(f"--images {' '.join(sources)}: no images found ({suffixes} files or DICOM series folders)")
    base = Path(os.path.commonpath(found)) if len(found) > 1 else found[0].parent
    cases = [Case(_relative_id(path, base), path) for path in found]
    train, held_out = carve(cases, task.validation_fraction, task.validation_seed)
    notes = [] if held_out else ["one image only: no held-out share; the reconstruction figure shows a trained image"]
    return Split(IMAGES_SPLIT, f"--images {' '.join(sources)}", train, held_out, [], [], notes)


def _relative_id(path: Path, base: Path) -> str:
    """``path`` below ``base`` without its suffix (``patient1/ct``), or its bare id when it is ``base``."""
    relative = path.relative_to(base) if path != base else Path(path.name)
    return relative.with_name(case_id(relative)).as_posix()


def find_images(source: str, spatial_dims: int) -> list[Path]:
    """The image files and DICOM series folders that ``source`` names: an image file, a folder (searched
    recursively; hidden entries skipped) or a glob pattern (``**`` reaches any depth)."""
    path = Path(source).expanduser()
    if glob.has_magic(source):
        matches = [Path(match) for match in glob.glob(str(path), recursive=True)]
        if not matches:
            raise UserError(f"--images {source}: the pattern matches nothing")
        return [image for match in matches for image in find_images(str(match), spatial_dims)]
    if path.is_dir():
        return _images_below(path, spatial_dims)
    if not path.exists():
        raise DataError(path, "no such file or folder")
    return [path] if path.name.lower().endswith(IMAGE_SUFFIXES[spatial_dims]) else []


def _images_below(folder: Path, spatial_dims: int) -> list[Path]:
    images = []
    for where, folders, files in os.walk(folder):
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        shown = [name for name in files if not name.startswith(".")]
        ours = [name for name in shown if name.lower().endswith(IMAGE_SUFFIXES[spatial_dims])]
        images += [Path(where) / name for name in sorted(ours)]
        if spatial_dims == 3 and shown and not ours and is_dicom_series(Path(where)):
            images.append(Path(where))
    return images
