"""``medmae evaluate``: predict a split's test or validation part with a fine-tuned checkpoint, then score it
on the original grid as ``medmae score`` does (AUC per finding for classification)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from torch.utils.data import DataLoader

from medmae.config import from_dict
from medmae.data.cases import Case
from medmae.data.loaders import CaseDataset
from medmae.data.manifests import load_split
from medmae.errors import UserError
from medmae.evaluation.reports import write_classification_report
from medmae.evaluation.scoring import check_pairs, refuse, write_report
from medmae.files import output_folder, removed_on_error
from medmae.inference.classify import classify
from medmae.inference.predict import load_finetuned, predict_volumes
from medmae.tasks import TaskSpec, load_task

PARTS = {"test": "test", "val": "validation"}
log = logging.getLogger("medmae")


def seen_cases(payload: dict, task: TaskSpec, data_root, manifest, trained_split: str, cases: list[Case]) -> list[str]:
    """The ids of ``cases`` that the checkpoint trained or picked its weights on: its record of them
    (``cases``), else (an older checkpoint) the training and validation parts of ``trained_split`` now."""
    record = payload.get("cases")
    if record is None:
        trained = load_split(task, data_root, manifest, trained_split)
        record = {"train": [c.id for c in trained.train], "validation": [c.id for c in trained.validation]}
    used = set(record["train"]) | set(record["validation"])
    return sorted(case.id for case in cases if case.id in used)


def evaluate(
    checkpoint: str,
    task_name: str,
    data_root: str | None,
    manifest: str | None,
    split_name: str | None,
    part: str,
    output_dir: str | None,
    progress: bool = True,
    allow_seen: bool = False,
) -> tuple[pd.DataFrame | float, list[str], list[Path]]:
    """Predict the ``part`` (``test`` or ``val``) of the split and score it. Returns the summary (the macro
    AUC for classification), the notes and the files written. Cases that the checkpoint trained or picked
    its weights on (in another split than its own) are refused, or with ``allow_seen`` warned about; the
    default output folder is ``evaluate_<part>`` for the checkpoint's split, ``evaluate_<split>_<part>``
    for another."""
    model, payload, task, device = load_finetuned(checkpoint)
    named = load_task(task_name)  # the task file: its manifest lies beside it (the checkpoint's copy does not)
    if named.name != task.name:
        raise UserError(f"{checkpoint}: trained on task {task.name}, not {task_name}")
    split = load_split(named, data_root, manifest, split_name)
    cases = getattr(split, PARTS[part])
    if not cases:
        raise UserError(f"task {task.name}: the {PARTS[part]} part of this split is empty")
    trained = payload.get("split", {}).get("split", split.name)
    seen = seen_cases(payload, named, data_root, manifest, trained, cases) if trained != split.name else []
    if seen:
        problem = (
            f"{len(seen)} of the {len(cases)} {PARTS[part]} cases of split {split.name} were in the training or "
            f"validation part of split {trained}, which {checkpoint} was trained on: {', '.join(seen[:10])}"
        )
        if not allow_seen:
            raise UserError(f"{problem}; evaluate on --split {trained}, or pass --allow-seen-cases")
        log.warning("WARNING: %s; their scores are not a test of the model", problem)
    folder = f"evaluate_{part}" if trained == split.name else f"evaluate_{split.name}_{part}"
    output = output_folder(output_dir or Path(checkpoint).resolve().parent.parent / folder)
    with removed_on_error(output):
        if task.is_classification:
            cfg = from_dict(payload["run_config"], checkpoint)
            loader = DataLoader(CaseDataset(task, cases, "validation"), batch_size=cfg.data.batch_size)
            probabilities, targets, ids = classify(model, loader, task, cfg.train.precision, device)
            table, mean, undefined = write_classification_report(output, ids, probabilities, targets, task.findings)
            note = f"macro AUC over {int(table['defined'].sum())} findings; undefined: {', '.join(undefined) or 'none'}"
            return mean, [note], [output / "per_image.csv", output / "per_finding.csv", output / "figures" / "roc.png"]
        predictions = predict_volumes(
            model, task, payload["run_config"], cases, output / "predictions", device, progress
        )
        pairs = {case.id: (predictions[case.id], case.label) for case in cases}
        images = {case.id: case.image for case in cases}
        refuse(task, check_pairs(task, pairs, images))
        notes = [f"task {task.name}: {len(pairs)} cases of the {PARTS[part]} part, checkpoint {checkpoint}"]
        return write_report(task, pairs, images, output, progress=progress, notes=notes)
