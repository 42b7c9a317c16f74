"""``medmae evaluate``: predict a split's test or validation part with a fine-tuned checkpoint, then score it
on the original grid as ``medmae score`` does (AUC per finding for classification)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from torch.utils.data import DataLoader

from medmae.config import from_dict
from medmae.data.cases import Case, identities
from medmae.data.loaders import CaseDataset
from medmae.data.manifests import load_split
from medmae.errors import UserError
from medmae.evaluation.reports import write_classification_report
from medmae.evaluation.scoring import check_pairs, refuse, write_report
from medmae.files import output_folder, removed_on_error
from medmae.inference.classify import classify
from medmae.inference.ensemble import chosen_postprocessing, with_folds
from medmae.inference.predict import load_averaged, predict_volumes
from medmae.tasks import TaskSpec, load_task

PARTS = {"test": "test", "val": "validation"}
log = logging.getLogger("medmae")


def seen_cases(
    payload: dict, task: TaskSpec, data_root, manifest, split_name: str, part: str, cases: list[Case]
) -> tuple[dict[str, str], list[str]]:
    """Why each of ``cases`` is no test of the checkpoint, by case id, and notes on cases that only share an
    id with one it has seen. Seen: it fine-tuned on the case, picked its weights on it, or its encoder was
    pretrained on the image (the last two for the test part only: the validation part is there to pick
    weights on, and pretraining uses it by design), whatever the split is called. A case is its images:
    every one of its files has the identity (:func:`~medmae.data.cases.file_identity`) of a recorded one.
    Where the checkpoint recorded no identities (older ones), a case is its id, and one without its record
    of cases is compared with the training and validation parts of its split as they are now."""
    record, files = payload.get("cases"), payload.get("case_files")
    trained = payload.get("split", {}).get("split", split_name)
    if record is None and trained != split_name:
        old = load_split(task, data_root, manifest, trained)
        record = {"train": [c.id for c in old.train], "validation": [c.id for c in old.validation]}
    used = {"train": f"fine-tuned on (split {trained})", "validation": f"picked the weights on (split {trained})"}
    if part == "val":
        del used["validation"]
    ids = {where: set((record or {}).get(where, ())) for where in used}
    known = {where: set(files[where]) for where in used} if files is not None else None
    pretrained = (payload.get("pretrained_on") or {}) if part == "test" else {}
    pretraining = set(pretrained.get("files") or ())
    seen, notes = {}, []
    for case in cases:
        mine = set(identities(case)) if known is not None or pretraining else set()
        for where, why in used.items():
            by_id = case.id in ids[where]
            if (mine and mine <= known[where]) if known is not None else by_id:
                seen.setdefault(case.id, why)
            elif by_id:
                notes.append(f"{case.id} has the id of a case the checkpoint {why.split(' (')[0]}, but other images")
        if mine and mine <= pretraining:
            seen.setdefault(case.id, f"its encoder has seen the image ({pretrained.get('source')})")
    return seen, notes


def unchecked_pretraining(payload: dict) -> str | None:
    """A note when the checkpoint's encoder came from a checkpoint that did not record what it had seen."""
    pretrained, source = payload.get("pretrained_on"), payload.get("pretrained")
    if pretrained is None and source and not str(source).startswith("imagenet:"):
        pretrained = {"source": source, "files": None}  # fine-tuned before the record existed
    if pretrained and pretrained.get("files") is None:
        return (
            f"the encoder's pretraining images are not recorded ({pretrained.get('source')} predates the record): "
            "whether the evaluated images were among them is not checked"
        )
    return None


def refuse_seen(
    payload: dict,
    task: TaskSpec,
    data_root,
    manifest,
    split,
    part: str,
    cases: list[Case],
    checkpoint: str,
    allow: bool,
) -> list[str]:
    """Refuse to score cases the checkpoint has seen (:func:`seen_cases`), naming them and why; with
    ``allow``, warn instead. Returns the notes for the report (what was allowed, what could not be checked)."""
    seen, notes = seen_cases(payload, task, data_root, manifest, split.name, part, cases)
    notes += [note for note in [unchecked_pretraining(payload)] if note]
    if seen:
        shown = "; ".join(f"{case}: {why}" for case, why in list(seen.items())[:10])
        more = f"; and {len(seen) - 10} more" if len(seen) > 10 else ""
        problem = f"{len(seen)} of the {len(cases)} {PARTS[part]} cases of split {split.name} were seen by {checkpoint}"
        if not allow:
            raise UserError(
                f"{problem}: {shown}{more}. Evaluate on cases the model has not seen, or pass --allow-seen-cases"
            )
        log.warning("WARNING: %s; their scores are not a test of the model", problem)
        notes.append(f"seen cases scored (--allow-seen-cases), not a test of the model: {shown}{more}")
    return notes


def stored(task: TaskSpec, run_config: dict, named: TaskSpec, data_root: str | None, cases: list) -> Path | None:
    """The preprocessed store (the checkpoint's ``data.store``) where it holds every case as its files are
    now (:func:`medmae.data.store.holding`; evaluate reads each case once, so it builds none), said in the log."""
    from medmae.data.layout import resolve_data_root
    from medmae.data.store import holding, store_off, store_root

    setting = run_config.get("data", {}).get("store", "auto")
    if store_off(setting) or task.spatial_dims != 3:
        return None
    folder = holding(task, cases, store_root(setting, resolve_data_root(named, data_root)))
    if folder is not None:
        log.info("reading the %d preprocessed cases from the store %s", len(cases), folder)
    return folder


def evaluate(
    checkpoint: str | list[str],
    task_name: str,
    data_root: str | None,
    manifest: str | None,
    split_name: str | None,
    part: str,
    output_dir: str | None,
    progress: bool = True,
    allow_seen: bool = False,
    mirror: bool = False,
) -> tuple[pd.DataFrame | float, list[str], list[Path]]:
    """Predict the ``part`` (``test`` or ``val``) of the split and score it. Returns the summary (the macro
    AUC for classification), the notes and the files written. Cases that the checkpoint fine-tuned or
    picked its weights on, or whose images its encoder was pretrained on (:func:`seen_cases`), are refused,
    or with ``allow_seen`` warned about and named in the notes; the default output folder is
    ``evaluate_<part>`` for the checkpoint's split, ``evaluate_<split>_<part>`` for another. Several
    checkpoints are scored as their ensemble (each one's seen cases refused), ``mirror`` averages over the
    flips of every axis (:mod:`medmae.inference.ensemble`); a cross-validation folder stands for its folds'
    ``best.pt`` and holds the default output folder (else the first checkpoint's run folder does)."""
    given = [checkpoint] if isinstance(checkpoint, str) else list(checkpoint)
    checkpoints = with_folds(given)
    model, payloads, task, device = load_averaged(checkpoints, mirror=mirror)
    payload, checkpoint = payloads[0], checkpoints[0]
    run_folder = Path(given[0]) if Path(given[0]).is_dir() else Path(checkpoint).resolve().parent.parent
    named = load_task(task_name)  # the task file: its manifest lies beside it (the checkpoint's copy does not)
    if named.name != task.name:
        raise UserError(f"{checkpoint}: trained on task {task.name}, not {task_name}")
    split = load_split(named, data_root, manifest, split_name)
    cases = getattr(split, PARTS[part])
    if not cases:
        raise UserError(f"task {task.name}: the {PARTS[part]} part of this split is empty")
    trained = payload.get("split", {}).get("split", split.name)
    notes = [
        note
        for member, path in zip(payloads, checkpoints)
        for note in refuse_seen(member, named, data_root, manifest, split, part, cases, path, allow_seen)
    ]
    notes = list(dict.fromkeys(notes))  # members' identical notes once
    if len(checkpoints) > 1 or mirror:
        notes.append(f"ensemble of {len(checkpoints)} checkpoints ({', '.join(checkpoints)}), mirroring {mirror}")
    folder = f"evaluate_{part}" if trained == split.name else f"evaluate_{split.name}_{part}"
    folder += (f"_ensemble{len(checkpoints)}" if len(checkpoints) > 1 else "") + ("_mirrored" if mirror else "")
    output = output_folder(output_dir or run_folder / folder)
    with removed_on_error(output):
        if task.is_classification:
            cfg = from_dict(payload["run_config"], checkpoint)
            loader = DataLoader(CaseDataset(task, cases, "validation"), batch_size=cfg.data.batch_size)
            probabilities, targets, ids = classify(model, loader, task, cfg.train.precision, device)
            table, mean, undefined = write_classification_report(
                output, ids, probabilities, targets, task.findings, notes
            )
            note = f"macro AUC over {int(table['defined'].sum())} findings; undefined: {', '.join(undefined) or 'none'}"
            return (
                mean,
                [note, *notes],
                [output / "per_image.csv", output / "per_finding.csv", output / "figures" / "roc.png"],
            )
        store = stored(task, payload["run_config"], named, data_root, cases)
        cut = chosen_postprocessing(given)
        predictions = predict_volumes(
            model,
            task,
            payload["run_config"],
            cases,
            output / "predictions",
            device,
            progress,
            store=store,
            largest_component=cut,
        )
        notes += [f"postprocessing chosen on validation: largest component of {', '.join(cut)}"] if cut else []
        pairs = {case.id: (predictions[case.id], case.label) for case in cases}
        images = {case.id: case.image for case in cases}
        refuse(task, check_pairs(task, pairs, images))
        notes = [f"task {task.name}: {len(pairs)} cases of the {PARTS[part]} part, checkpoint {checkpoint}", *notes]
        return write_report(task, pairs, images, output, progress=progress, notes=notes)
