"""Cross-validation (``medmae finetune --folds``): one fine-tuning run per fold of the split's train and
validation cases (:func:`medmae.data.manifests.cross_validation`), each scored on its own validation fold,
and a summary over the folds. The parent folder holds ``fold_<k>/`` (a run folder, with the fold's
validation predictions and scores in ``validation/``) and ``crossval/`` (``per_case.csv`` over every fold,
``summary.csv``, ``postprocessing.json``: the classes cut to their largest component, chosen on the folds'
validation cases); ``predict`` and ``evaluate`` take the parent folder as the ensemble of its folds and
apply that postprocessing.

A fold whose ``validation/per_case.csv`` exists is done and skipped; any other fold runs with ``--resume``
semantics, so a cross-validation killed in fold 3 goes on at fold 3, from its newest checkpoint.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pandas as pd

from medmae.data.manifests import CV_SUFFIX, FOLDS, load_split
from medmae.evaluation.postprocessing import KEY, choose_postprocessing, write_decision
from medmae.evaluation.reports import summarise, write_csv
from medmae.evaluation.scoring import read_pair
from medmae.inference.ensemble import SCORES, fold_folder
from medmae.inference.evaluate import evaluate
from medmae.inference.predict import label_map_name
from medmae.tasks import TaskSpec, load_task
from medmae.training import finetune
from medmae.training.session import RunRequest, output_dir

log = logging.getLogger("medmae")


def run_folds(request: RunRequest, folds: list[int]) -> Path:
    """Fine-tune ``folds`` of the request's split one after the other into ``<output>/fold_<k>``, score each
    on its validation fold, and summarise every finished fold into ``<output>/crossval/``. Returns the
    parent folder."""
    task = load_task(request.task)
    base = load_split(task, request.data_root, request.manifest, request.split).name
    parent = output_dir(request, "finetune")
    for fold in folds:
        folder = fold_folder(parent, fold)
        if (folder / SCORES).is_file():
            log.info("fold %d: done before (%s); skipped", fold, folder / SCORES)
            continue
        log.info("fold %d of %d: fine-tuning on split %s%s%d into %s", fold, FOLDS, base, CV_SUFFIX, fold, folder)
        split = f"{base}{CV_SUFFIX}{fold}"
        finetune.run(replace(request, split=split, output_dir=str(folder), resume=True))
        best = folder / "checkpoints" / "best.pt"
        evaluate(str(best), request.task, request.data_root, request.manifest, split, "val", str(folder / "validation"))
    summarise_folds(parent, task.name)
    decide_postprocessing(parent, task, request, base)
    return parent


def summarise_folds(parent: Path, task_name: str) -> list[Path]:
    """``crossval/per_case.csv`` (every finished fold's validation scores, with a ``fold`` column) and
    ``crossval/summary.csv`` (per class over all folds' cases) in ``parent``."""
    tables = []
    for fold in range(FOLDS):
        scores = fold_folder(parent, fold) / SCORES
        if scores.is_file():
            tables.append(pd.read_csv(scores, comment="#").assign(fold=fold))
    per_case = pd.concat(tables, ignore_index=True)
    folds = sorted(per_case["fold"].unique())
    notes = [f"cross-validation of task {task_name}: folds {folds}, each scored on its own validation fold"]
    written = [write_csv(per_case, parent / "crossval" / "per_case.csv", notes)]
    written.append(write_csv(summarise(per_case, load_task(task_name)), parent / "crossval" / "summary.csv", notes))
    return written


def decide_postprocessing(parent: Path, task: TaskSpec, request: RunRequest, base: str) -> Path:
    """``crossval/postprocessing.json``: the classes whose validation DSC over every finished fold rises when
    only their largest component is kept (:func:`~medmae.evaluation.postprocessing.choose_postprocessing`);
    none for tasks of overlapping regions."""
    pairs = []
    for fold in range(FOLDS):
        folder = fold_folder(parent, fold)
        if task.regions or not (folder / SCORES).is_file():
            continue
        split = load_split(task, request.data_root, request.manifest, f"{base}{CV_SUFFIX}{fold}")
        for case in split.validation:
            predicted = folder / "validation" / "predictions" / label_map_name(case)
            pairs.append(read_pair(task, case.id, predicted, case.label)[:2])
    if task.regions:
        decision = {KEY: [], "note": "overlapping regions: no postprocessing"}
    else:
        decision = choose_postprocessing(task, pairs)
    log.info(
        "postprocessing chosen on %d validation cases: largest component of %s", len(pairs), decision[KEY] or "no class"
    )
    return write_decision(decision, parent / "crossval" / "postprocessing.json")
