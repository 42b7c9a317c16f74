"""Predictions of a fine-tuned checkpoint for any files (``medmae predict``): label maps on each input's own
grid for 3D tasks, probabilities per finding for 2D classification; nothing is written beside the input."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from medmae.checkpoint import CheckpointError, load_checkpoint, require
from medmae.config import from_dict
from medmae.data.cases import Case, case_id
from medmae.data.check import read_errors
from medmae.data.loaders import CaseDataset
from medmae.data.nnunet import channel_of, group_channels
from medmae.data.readers import IMAGE_SUFFIXES, image_entries, is_dicom_series, read_channels
from medmae.data.writers import label_map_suffix, write_label_map, write_probabilities
from medmae.devices import pick_device
from medmae.errors import DataError, UserError
from medmae.evaluation.postprocessing import keep_largest
from medmae.evaluation.reports import notes_path, write_csv
from medmae.evaluation.scoring import shown
from medmae.files import output_folder, removed_on_error
from medmae.inference.classify import classify
from medmae.inference.ensemble import AveragedModel, check_members, chosen_postprocessing, mirror_flips, with_folds
from medmae.inference.segment import background_outside, segment, to_label_map, to_original_grid
from medmae.models.registry import rebuild_model
from medmae.tasks import TaskSpec, task_from_record


def predict_volumes(
    model: nn.Module,
    task: TaskSpec,
    run_config: dict,
    cases: list[Case],
    output: Path,
    device: torch.device,
    progress: bool = True,
    save_probabilities: bool = False,
    store: Path | None = None,
    largest_component: Sequence[str] = (),
) -> dict[str, Path]:
    """Segment each case's image and write ``<output>/<case id><suffix>`` on the image's own grid, in the
    image's format (:func:`medmae.data.writers.label_map_suffix`); with ``save_probabilities`` also
    ``<case id>.npz``, the class probabilities ``[K, *S]`` on that grid. With a ``store`` folder holding every
    case (:func:`medmae.data.store.holding`), the preprocessed images are read from it. Each class of
    ``largest_component`` is cut to its largest connected component (a cross-validation's chosen
    postprocessing, :mod:`medmae.evaluation.postprocessing`); saved probabilities are not changed."""
    cfg = from_dict(run_config, "checkpoint")
    dataset = CaseDataset(task, cases, "inference", store=store)
    written = {}
    for index, case in enumerate(tqdm(cases, desc="predicting", unit="case", disable=not progress)):
        item = dataset[index]  # a file that cannot be read raises a DataError naming it
        probabilities = segment(model, task, item["image"], cfg.infer, cfg.train.precision, device)
        on_grid = background_outside(task, to_original_grid(dataset.inverse, item, probabilities))
        labels = keep_largest(to_label_map(task, on_grid).numpy(), task, largest_component)
        written[case.id] = write_label_map(labels, case.image, output / label_map_name(case))
        if save_probabilities:
            write_probabilities(on_grid.numpy(), task.class_names, output / f"{case.id}.npz")
    return written


def label_map_name(case: Case) -> str:
    """``<case id>`` with the suffix of the input's format (see :func:`label_map_suffix`)."""
    return case.id + label_map_suffix(case.image)


def load_finetuned(checkpoint: str, device_choice: str = "auto") -> tuple[nn.Module, dict, TaskSpec, torch.device]:
    """The fine-tuned model of ``checkpoint`` (eval mode, on the chosen device), its payload, the task it
    was trained on and the device."""
    model, payloads, task, device = load_averaged([checkpoint], device_choice)
    return model, payloads[0], task, device


def load_averaged(
    checkpoints: list[str], device_choice: str = "auto", mirror: bool = False
) -> tuple[nn.Module, list[dict], TaskSpec, torch.device]:
    """The model that predicts for ``checkpoints`` (eval mode, on the chosen device): one fine-tuned model,
    or, for several checkpoints of one task (:func:`~medmae.inference.ensemble.check_members`; a
    cross-validation folder stands for its folds' ``best.pt``) or with ``mirror``, their
    :class:`~medmae.inference.ensemble.AveragedModel`; with every payload, the task and the device. Every
    checkpoint is read and checked before any model is built."""
    checkpoints = with_folds(checkpoints)
    payloads = [finetuned_payload(path) for path in checkpoints]
    check_members(payloads, checkpoints)
    task = task_from_record(payloads[0]["task"], str(checkpoints[0]))
    if mirror and task.is_classification:
        raise UserError(f"--mirror averages segmentations over flips; task {task.name} classifies images")
    device = pick_device(device_choice)
    members = [rebuild_model(payload, path).eval().to(device) for payload, path in zip(payloads, checkpoints)]
    if len(members) == 1 and not mirror:
        return members[0], payloads, task, device
    sigmoid = bool(task.regions) or task.is_classification
    flips = mirror_flips(task.spatial_dims, task.lateral) if mirror else [()]
    return AveragedModel(members, sigmoid, flips).eval(), payloads, task, device


def finetuned_payload(checkpoint: str | Path) -> dict:
    """The payload of a checkpoint from ``medmae finetune`` that holds the task and run config it was
    trained with; else :class:`CheckpointError` naming it."""
    payload = load_checkpoint(checkpoint)
    if payload.get("stage") != "finetune":
        raise CheckpointError(
            f"{checkpoint}: a {payload.get('stage', 'foreign')} checkpoint; evaluate and predict need "
            "one from medmae finetune (checkpoints/best.pt)"
        )
    why = "evaluate and predict need the task and run config it was trained with"
    return require(payload, ("task", "run_config"), checkpoint, why)


def input_files(source: Path, task: TaskSpec) -> tuple[list[Path], list[Path]]:
    """The images to predict, and the entries of a folder that are skipped as not images: ``source``
    itself (a file, or a DICOM series folder for 3D tasks), or the images of the folder ``source``
    (:func:`medmae.data.readers.image_entries`)."""
    if source.is_file():
        return [source], []
    if not source.is_dir():
        raise DataError(source, "no such file or folder")
    files, others = image_entries(source, task.spatial_dims)
    if not files and task.spatial_dims == 3 and is_dicom_series(source):
        return [source], []
    if not files:
        series = " or DICOM series" if task.spatial_dims == 3 else ""
        raise DataError(source, f"holds no {' or '.join(IMAGE_SUFFIXES[task.spatial_dims])} files{series}")
    return files, others


def input_cases(files: list[Path], channels: int) -> list[Case]:
    """One case per file, named by :func:`case_id`; or, where every file is named as nnU-Net's
    ``<case>_<NNNN><suffix>`` (and either the task has several channels or every number is ``0000``), one
    case per ``<case>`` with its channel files in order, a missing or repeated channel named. Two files of
    one case id are refused, naming both."""
    named = {path: channel_of(case_id(path)) for path in files}
    single = channels == 1 and any(parts and parts[1] for parts in named.values())  # "scan_2019": not a channel
    if files and all(named.values()) and not single:
        groups = group_channels(named, channels, files[0].parent)
        return [Case(case, paths[0], more_channels=paths[1:]) for case, paths in groups.items()]
    cases: dict[str, Case] = {}
    for path in files:
        if (case := case_id(path)) in cases:
            raise UserError(
                f"{cases[case].image} and {path}: two files of case {case}; predictions would overwrite each other"
            )
        cases[case] = Case(case, path)
    return list(cases.values())


def predict(
    checkpoint: str | list[str],
    source: str,
    output_dir: str,
    progress: bool = True,
    inside_input: bool = False,
    save_probabilities: bool = False,
    overwrite: bool = False,
    mirror: bool = False,
) -> list[Path]:
    """Predictions for a file or a folder of files: label maps (same grid and orientation, in the input's
    format; with ``save_probabilities`` also the probabilities, see :func:`predict_volumes`) for 3D tasks,
    ``probabilities.csv`` for 2D classification. Every input is read and checked before anything is written;
    the output folder may lie inside the input folder only with ``inside_input``, an input file is never
    overwritten, and earlier predictions only with ``overwrite``. A failure leaves nothing new in the output
    folder. Several checkpoints predict as their ensemble, and ``mirror`` averages over the flips of every
    axis (:mod:`medmae.inference.ensemble`); saved probabilities are the averaged ones."""
    given = [checkpoint] if isinstance(checkpoint, str) else list(checkpoint)
    checkpoints = with_folds(given)
    model, payloads, task, device = load_averaged(checkpoints, mirror=mirror)
    payload, checkpoint = payloads[0], ", ".join(checkpoints)
    source_path, output = Path(source).resolve(), output_folder(output_dir).resolve()
    files, skipped = input_files(source_path, task)
    if skipped:
        names = shown([p.name for p in skipped], limit=5)
        print(f"note: {len(skipped)} entries of {source_path} are not images and are skipped: {names}")
    folder = source_path if source_path.is_dir() else source_path.parent
    if not inside_input and (output == folder or folder in output.parents):
        raise UserError(
            f"--output-dir {output} lies inside the input folder {folder}; choose a folder outside it "
            "(or pass --allow-output-inside-input)"
        )
    cases = input_cases(files, task.in_channels)
    targets = output_files(task, cases, output, save_probabilities)
    clash = sorted(str(t) for t in targets if t in files or (folder in t.parents and t.exists()))
    if clash:
        raise UserError(
            f"{clash[0]}: a file of the input folder would be overwritten by a prediction; choose another --output-dir"
        )
    stale = earlier_predictions(task, cases, targets, output, overwrite)
    refuse_unreadable(task, cases, progress)
    for path in stale:
        path.unlink()
    with removed_on_error(output):
        if task.is_classification:
            cfg = from_dict(payload["run_config"], checkpoint)
            loader = DataLoader(
                CaseDataset(task, cases, "inference"), batch_size=cfg.data.batch_size, collate_fn=_without_labels
            )
            probabilities, _, ids = classify(model, loader, task, cfg.train.precision, device)
            table = pd.DataFrame(probabilities, columns=list(task.findings))
            table.insert(0, "image_id", ids)
            table.insert(1, "file", [str(c.image) for c in cases])
            written = write_csv(table, output / "probabilities.csv", [f"checkpoint {checkpoint}; sigmoid per finding"])
            return [written, notes_path(written)]
        config = payload["run_config"]
        cut = chosen_postprocessing(given)
        written = predict_volumes(model, task, config, cases, output, device, progress, save_probabilities, None, cut)
        return list(written.values())


def output_files(task: TaskSpec, cases: list[Case], output: Path, save_probabilities: bool) -> set[Path]:
    """The files a prediction of ``cases`` writes into ``output``."""
    if task.is_classification:
        return {output / "probabilities.csv", notes_path(output / "probabilities.csv")}
    maps = {output / label_map_name(c) for c in cases}
    return maps | ({output / f"{c.id}.npz" for c in cases} if save_probabilities else set())


def earlier_predictions(
    task: TaskSpec, cases: list[Case], targets: set[Path], output: Path, overwrite: bool
) -> list[Path]:
    """Refuse to replace files of an earlier prediction in ``output`` unless ``overwrite`` (then say which);
    returns that prediction's probability files which this one does not write, to be removed (they would
    disagree with the new label maps)."""
    probabilities = set() if task.is_classification else {output / f"{c.id}.npz" for c in cases}
    replaced = sorted(t.name for t in targets | probabilities if t.exists())
    if replaced and not overwrite:
        raise UserError(
            f"{output}: already holds {len(replaced)} of the files this prediction writes "
            f"({shown(replaced, limit=5)}); pass --overwrite to replace them, or choose another --output-dir"
        )
    if replaced:
        print(f"note: replacing {len(replaced)} files in {output}: {shown(replaced, limit=5)}")
    return sorted(p for p in probabilities - targets if p.exists())


def refuse_unreadable(task: TaskSpec, cases: list[Case], progress: bool = True) -> None:
    """Read every case's image as the model would and raise :class:`UserError` listing each that cannot be used."""
    problems = []
    for case in tqdm(cases, desc="checking inputs", unit="case", disable=not progress or len(cases) < 2):
        try:
            problems += read_errors(task, read_channels(case.image_files))
        except DataError as error:
            problems.append(str(error))
    if problems:
        raise UserError(f"{len(problems)} problem(s) in the input, nothing predicted:\n  " + "\n  ".join(problems))


def _without_labels(items: list[dict]) -> dict:
    """Collate images and ids of unlabelled items (no targets to stack)."""
    return {
        "image": torch.stack([torch.as_tensor(i["image"]) for i in items]),
        "label": np.zeros((len(items), 0)),
        "case_id": [i["case_id"] for i in items],
    }
