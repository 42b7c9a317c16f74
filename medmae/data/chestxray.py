"""ChestX-ray14: the label table, the official list files, and a validation part carved by patient."""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd

from medmae.data.cases import Case, Split
from medmae.data.layout import found_instead, layout_help
from medmae.errors import DataError, UserError
from medmae.tasks import TaskSpec

TABLE_NAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
LISTS = {"train_val": "train_val_list.txt", "test": "test_list.txt"}
NO_FINDING = "No Finding"


def find_label_table(root: Path) -> Path:
    """The label table at the data root, plain or gzipped (the 2020 revision first)."""
    for name in TABLE_NAMES:
        for candidate in (root / name, root / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise DataError(root, f"no label table ({' or '.join(TABLE_NAMES)}, optionally .gz)\n{found_instead(root)}")


def read_label_table(path: Path, findings: tuple[str, ...]) -> pd.DataFrame:
    """One row per image (index ``Image Index``): ``patient`` and a 0/1 column per finding.

    ``Finding Labels`` is ``|``-separated; ``No Finding`` gives all zeros; an unknown finding is an error.
    """
    try:
        table = pd.read_csv(path, usecols=["Image Index", "Finding Labels", "Patient ID"], dtype=str)
    except (OSError, ValueError, EOFError) as error:
        raise DataError(path, f"unreadable label table ({error})") from error
    names = table["Finding Labels"].str.split("|")
    unknown = sorted(set(names.explode()) - set(findings) - {NO_FINDING})
    if unknown:
        raise DataError(path, f"unknown findings {unknown}; this task knows {', '.join(findings)}")
    if table["Image Index"].duplicated().any():
        raise DataError(
            path, f"duplicate image rows, e.g. {table['Image Index'][table['Image Index'].duplicated()].iloc[0]}"
        )
    out = pd.DataFrame({"patient": table["Patient ID"].to_numpy()}, index=table["Image Index"].to_numpy())
    for finding in findings:
        out[finding] = names.apply(lambda labels, f=finding: int(f in labels)).to_numpy()
    return out


def read_list(path: Path) -> list[str]:
    """Image names, one per line; a name listed twice is an error."""
    if not path.is_file():
        raise DataError(path, "official list file not found")
    try:
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except UnicodeDecodeError as error:
        raise DataError(path, f"not a text file ({error})") from error
    repeated = sorted({n for n in names if names.count(n) > 1}) if len(set(names)) < len(names) else []
    if repeated:
        raise DataError(path, f"images listed more than once: {', '.join(repeated[:5])}")
    return names


def carve_by_patient(cases: list[Case], fraction: float, seed: int) -> tuple[list[Case], list[Case]]:
    """(train, validation): whole patients, shuffled by ``seed``, until ``round(fraction * n)`` images."""
    patients = sorted({c.patient for c in cases})
    random.Random(seed).shuffle(patients)
    wanted = round(fraction * len(cases))
    chosen = set()
    count = 0
    per_patient = pd.Series([c.patient for c in cases]).value_counts()
    for patient in patients:
        if count >= wanted:
            break
        chosen.add(patient)
        count += int(per_patient[patient])
    return [c for c in cases if c.patient not in chosen], [c for c in cases if c.patient in chosen]


def chestxray_split(task: TaskSpec, root: Path, split: str | None) -> Split:
    """The ``official`` split: ``test_list.txt`` is the test part, validation is carved from
    ``train_val_list.txt`` by patient ID (never by image)."""
    if split not in (None, "official"):
        raise UserError(f"unknown split {split!r} for task {task.name}; choose official")
    if not (root / "images").is_dir():
        raise DataError(root, f"no images/ folder\n{layout_help(task)}\n{found_instead(root)}")
    table_path = find_label_table(root)
    table = read_label_table(table_path, task.findings)
    parts = {}
    for part, name in LISTS.items():
        names = read_list(root / name)
        missing = [n for n in names if n not in table.index]
        if missing:
            raise DataError(root / name, f"{len(missing)} images have no row in {table_path.name}, e.g. {missing[0]}")
        rows = table.loc[names]
        parts[part] = [
            Case(
                n.rsplit(".", 1)[0],
                root / "images" / n,
                targets=tuple(int(v) for v in row[list(task.findings)]),
                patient=str(row["patient"]),
            )
            for n, row in rows.iterrows()
        ]
    train, validation = carve_by_patient(parts["train_val"], task.validation_fraction, task.validation_seed)
    result = Split(
        "official", f"{LISTS['train_val']}, {LISTS['test']} and {table_path.name}", train, validation, parts["test"]
    )
    result.note_overlaps()
    shared = {c.patient for c in parts["test"]} & {c.patient for c in parts["train_val"]}
    if shared:
        result.notes.append(f"{len(shared)} patients appear in both the official train_val and test lists")
    return result
