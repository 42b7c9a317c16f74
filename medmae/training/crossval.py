"""Cross-validation (``medmae finetune --folds``): one fine-tuning run per fold of the split's train and
validation cases (:func:`medmae.data.manifests.cross_validation`), each scored on its own validation fold,
and a summary over the folds. The parent folder holds ``fold_<k>/`` (a run folder, with the fold's
validation predictions and scores in ``validation/``) and ``crossval/`` (``per_case.csv`` over every fold,
``summary.csv``, ``postprocessing.json``: the classes cut to their largest component, chosen on the folds'
validation cases); ``predict`` and ``evaluate`` take the parent folder as the ensemble of its folds and
apply that postprocessing.

A fold whose ``validation/finished.json`` (written after its scores) names its split is done and skipped
(one naming another split is refused); any other fold runs with ``--resume`` semantics, so a
cross-validation killed in fold 3 goes on at fold 3, from its newest checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path

import pandas as pd

from medmae.data.manifests import CV_SUFFIX, FOLDS, load_split
from medmae.errors import DataError, UserError
from medmae.evaluation.postprocessing import KEY, choose_postprocessing, write_decision
from medmae.evaluation.reports import summarise, write_csv
from medmae.evaluation.scoring import read_pair
from medmae.files import write_text
from medmae.inference.ensemble import FINISHED, SCORES, fold_folder
from medmae.inference.evaluate import evaluate
from medmae.inference.predict import label_map_name
from medmae.tasks import TaskSpec, load_task
from medmae.training import finetune
from medmae.training.session import RunRequest, output_dir

log = logging.getLogger("medmae")


def run_folds(request: RunRequest, folds: list[int]) -> Path:
    """Fine-tune ``folds`` of the request's split one after the other into ``<output>/fold_<k>``, score each
    on its validation fold, and summarise every finished fold into ``<output>/crossval/``. Returns the
    parent folder. A fold is finished when ``validation/finished.json`` (written last) names its split."""
    task = load_task(request.task)
    if task.is_classification or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("--folds: cross-validation runs segmentation tasks in one process (not under torchrun)")
    base = load_split(task, request.data_root, request.manifest, request.split).name
    parent = output_dir(request, "finetune")
    for fold in folds:
        folder, split = fold_folder(parent, fold), f"{base}{CV_SUFFIX}{fold}"
        done = finished_split(folder)
        if done is not None:
            if done != split:
                raise UserError(f"{folder}: fold {fold} of split {done}, not {split}; use another --output-dir")
            log.info("fold %d: done before (%s); skipped", fold, folder / FINISHED)
            continue
        log.info("fold %d of %d: fine-tuning on split %s into %s", fold, FOLDS, split, folder)
        finetune.run(replace(request, split=split, output_dir=str(folder), resume=True))
        best = folder / "checkpoints" / "best.pt"
        evaluate(str(best), request.task, request.data_root, request.manifest, split, "val", str(folder / "validation"))
        write_text(folder / FINISHED, json.dumps({"split": split, "checkpoint": str(best)}) + "\n")
    summarise_folds(parent, task)
    decide_postprocessing(parent, task, request, base)
    return parent


def finished_split(folder: Path) -> str | None:
    """The split a finished fold's run folder was trained and scored on, or None while it is not finished."""
    try:
        return json.loads((folder / FINISHED).read_text(encoding="utf-8"))["split"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(folder / FINISHED, f"unreadable fold record ({error})") from error


def finished_folds(parent: Path) -> list[int]:
    return [fold for fold in range(FOLDS) if (fold_folder(parent, fold) / FINISHED).is_file()]


def summarise_folds(parent: Path, task: TaskSpec) -> list[Path]:
    """``crossval/per_case.csv`` (every finished fold's validation scores, with a ``fold`` column) and
    ``crossval/summary.csv`` (per class over all folds' cases) in ``parent``."""
    folds = finished_folds(parent)
    tables = [pd.read_csv(fold_folder(parent, k) / SCORES, comment="#").assign(fold=k) for k in folds]
    per_case = pd.concat(tables, ignore_index=True)
    notes = [f"cross-validation of task {task.name}: folds {folds}, each scored on its own validation fold"]
    written = [write_csv(per_case, parent / "crossval" / "per_case.csv", notes)]
    written.append(write_csv(summarise(per_case, task), parent / "crossval" / "summary.csv", notes))
    return written


def decide_postprocessing(parent: Path, task: TaskSpec, request: RunRequest, base: str) -> Path:
    """``crossval/postprocessing.json``: the classes whose validation DSC over every finished fold rises when
    only their largest component is kept (:func:`~medmae.evaluation.postprocessing.choose_postprocessing`,
    on the folds' single-model predictions); none for tasks of overlapping regions."""
    if task.regions:
        decision = {KEY: [], "note": "overlapping regions: no postprocessing"}
    else:
        decision = choose_postprocessing(task, validation_pairs(parent, task, request, base))
    log.info(
        "postprocessing chosen on %s validation cases: largest component of %s",
        decision.get("cases"),
        decision[KEY] or "no class",
    )
    return write_decision(decision, parent / "crossval" / "postprocessing.json")


def validation_pairs(parent: Path, task: TaskSpec, request: RunRequest, base: str):
    """Each finished fold's validation cases as (predicted, reference) label maps, one at a time."""
    for fold in finished_folds(parent):
        split = load_split(task, request.data_root, request.manifest, f"{base}{CV_SUFFIX}{fold}")
        for case in split.validation:
            predicted = fold_folder(parent, fold) / "validation" / "predictions" / label_map_name(case)
            yield read_pair(task, case.id, predicted, case.label)[:2]
