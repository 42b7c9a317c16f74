"""What every training run does first and last: resolve the config, the task and its split, join the
processes, prepare the run folder and find the checkpoint to resume from (:func:`start`); then clean up
whatever way the run ends (:func:`running`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from medmae.config import Config, flatten, from_dict, load_config, save_config
from medmae.data.cases import Split
from medmae.data.layout import resolve_data_root
from medmae.data.manifests import IMAGES_SPLIT, images_split, load_split
from medmae.errors import UserError
from medmae.files import FolderLock, lock_folder, output_folder
from medmae.models.families import PATCH_SIZE
from medmae.models.registry import check_model_config, input_multiple
from medmae.tasks import TaskSpec, load_task, task_from_record
from medmae.training.distributed import Context, barrier, setup, teardown
from medmae.training.run_folder import RunFolder

log = logging.getLogger("medmae")
CHANGEABLE_ON_RESUME = ("train.dist_timeout_min", "train.epochs", "train.threads")  # keys a resumed run may change


@dataclass
class RunRequest:
    """The command-line arguments of ``medmae pretrain`` and ``medmae finetune``."""

    task: str
    data_root: str | None = None
    manifest: str | None = None
    split: str | None = None
    config_file: str | None = None
    overrides: list[str] = field(default_factory=list)
    output_dir: str | None = None
    resume: bool = False
    pretrained: str | None = None
    label_fraction: float | None = None
    images: list[str] | None = None  # pretraining on these folders or patterns instead of a data root


@dataclass
class Setup:
    cfg: Config
    task: TaskSpec
    split: Split
    ctx: Context
    run: RunFolder
    resume_from: dict[str, Any] | None
    split_record: dict[str, str]  # stored in checkpoints; a resumed run must use the same split
    lock: FolderLock | None = None  # the main process's hold on the run folder
    data_root: Path | None = None  # the --data-root as found (None for --images)


def output_dir(request: RunRequest, stage: str) -> Path:
    """Where a run of ``stage`` writes: ``--output-dir``, else ``runs/<task>_<stage>`` (never a file)."""
    return output_folder(request.output_dir or f"runs/{load_task(request.task).name}_{stage}")


def start(stage: str, request: RunRequest) -> Setup:
    """Resolve everything a run needs; on ``--resume`` the config comes from the newest checkpoint. The
    main process holds the run folder (:func:`~medmae.files.lock_folder`) from here until the run ends."""
    task = load_task(request.task)
    output = output_dir(request, stage)
    lock = lock_folder(output) if int(os.environ.get("RANK", "0")) == 0 else None
    try:
        return _start(stage, request, task, output, lock)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _start(stage: str, request: RunRequest, task: TaskSpec, output: Path, lock: FolderLock | None) -> Setup:
    probe = RunFolder(output, write=False)
    resume_from = probe.latest() if request.resume else None
    if resume_from is not None:
        if resume_from.get("stage") != stage:
            raise UserError(f"{output}: holds a {resume_from.get('stage')} run, not a {stage} run")
        cfg = from_dict(resume_from["run_config"], f"{output}/checkpoints")
        if request.config_file or request.overrides or request.label_fraction is not None:
            cfg = _resumed_config(cfg, _requested_config(stage, task, request), output)
    else:
        if request.resume:
            log.info("%s: no checkpoint to resume from; starting from the beginning", output)
        cfg = _requested_config(stage, task, request)
    check_model_config(cfg.model)
    task = with_roi(task, cfg.model.img_size, input_multiple(cfg.model))
    if resume_from is not None:
        _refuse_changed_task(resume_from.get("task"), task, output)
    ctx = setup(cfg.train.device, cfg.train.dist_timeout_min, cfg.train.threads)
    if ctx.device.type == "cpu":  # the count chosen is saved, so that --resume computes with it again
        cfg.train.threads = torch.get_num_threads()
    torch.manual_seed(cfg.train.seed + ctx.rank)
    data_root = None
    if request.images:  # before any folder is made
        split = images_split(task, request.images)
    else:
        split = load_split(task, request.data_root, request.manifest, request.split)
        data_root = resolve_data_root(task, request.data_root)
    run = RunFolder(output, write=ctx.is_main)
    split_record = {"task": task.name, "split": split.name}
    if split.name == IMAGES_SPLIT:  # resuming must see the same folders and patterns
        split_record["source"] = split.source
    if resume_from is not None and resume_from.get("split", split_record) != split_record:
        raise UserError(
            f"{output}: the run was trained on {resume_from['split']}, not {split_record}; "
            "resume with the same --task and --split"
        )
    run.prepare(resume=request.resume)
    run.set_aside(probe.unusable)
    barrier(ctx)  # every process has checked the folder before the main one writes into it
    for note in split.notes:
        log.info("note: %s", note)
    if ctx.is_main:
        try:
            save_config(cfg, output / "config.yaml")
        except BaseException:
            run.discard_if_unsaved()
            raise
    return Setup(cfg, task, split, ctx, run, resume_from, split_record, lock, data_root)


@contextmanager
def running(s: Setup) -> Iterator[Setup]:
    """The body of a run started by :func:`start`: a failure before the first checkpoint removes what the
    run added to its folder (so the same command works once the cause is fixed); however the run ends,
    its TensorBoard writer is closed, the run folder let go and the process group left."""
    try:
        yield s
    except BaseException:
        s.run.discard_if_unsaved()
        raise
    finally:
        try:
            s.run.close()
            if s.lock is not None:
                s.lock.release()
        finally:
            teardown()


def _requested_config(stage: str, task: TaskSpec, request: RunRequest) -> Config:
    cfg = load_config(stage, task.name, request.config_file, request.overrides)
    if request.label_fraction is not None:
        cfg.data.label_fraction = request.label_fraction
    return cfg


def _resumed_config(saved: Config, requested: Config, output: Path) -> Config:
    """The config a resumed run continues with: the saved one. Repeating the command line is fine; a
    changed value is refused, except for the keys of ``CHANGEABLE_ON_RESUME``, which take the requested one:
    ``train.epochs`` extends (or shortens) a finished or running schedule; ``train.threads`` left unset keeps
    the saved count (another count changes the float sums, so the run is no longer bitwise the same)."""
    before, after = flatten(saved.to_dict(), "saved"), flatten(requested.to_dict(), "requested")
    changed = [
        f"{key} {before[key]!r} -> {after[key]!r}"
        for key in before
        if before[key] != after[key] and key not in CHANGEABLE_ON_RESUME
    ]
    if changed:
        raise UserError(
            f"{output}: --resume continues with the saved config, but this command changes "
            f"{', '.join(changed)}; drop those changes or start a new run in another --output-dir"
        )
    if saved.train.epochs != requested.train.epochs:
        log.info(
            "train.epochs %d -> %d: the warm-up and cosine schedule are recomputed over %d epochs; from the "
            "resumed step the learning rate is that schedule's (after a longer plan, higher than where the "
            "shorter one had decayed to), reaching optim.min_lr at epoch %d; a run already past it ends at once",
            *(saved.train.epochs, requested.train.epochs, requested.train.epochs, requested.train.epochs),
        )
    if requested.train.threads is None:
        requested.train.threads = saved.train.threads
    return requested


IGNORED_ON_RESUME = ("path", "record", "title", "source_url", "source_tree", "mean_groups")  # change no training


def _refuse_changed_task(saved: dict[str, Any] | None, task: TaskSpec, output: Path) -> None:
    """Refuse to resume a run whose task has changed since it started (spacing, labels, intensity...),
    naming each changed key; compared as read (an explicit default equals an absent key), leaving out
    what trains nothing (the title, the source, the mean groups of reports)."""
    if saved is None:
        return
    before = task_from_record(saved, str(output / "checkpoints"))
    keys = [f.name for f in fields(TaskSpec) if f.name not in IGNORED_ON_RESUME]
    changed = [
        f"{key} {getattr(before, key)!r} -> {getattr(task, key)!r}"
        for key in keys
        if getattr(before, key) != getattr(task, key)
    ]
    if changed:
        raise UserError(
            f"{output}: --resume continues with the task the run started with, but task {task.name} has changed "
            f"since: {'; '.join(changed)}; restore the task file or start a new run in another --output-dir"
        )


def with_roi(task: TaskSpec, img_size: list[int] | None, multiple: int | list[int] = PATCH_SIZE) -> TaskSpec:
    """The task with ``model.img_size`` as its crop size (the ROI), when the config sets one; each size a
    multiple of the model's ``multiple`` (:func:`~medmae.models.registry.input_multiple`), one or per axis.
    The task's own ROI must be such a multiple too; a UserError names the ``--set`` that fits."""
    multiples = [multiple] * task.spatial_dims if isinstance(multiple, int) else list(multiple)
    if img_size is None:
        if any(s % m for s, m in zip(task.roi, multiples)):
            fitting = [-(-s // m) * m for s, m in zip(task.roi, multiples)]
            raise UserError(
                f"task {task.name}: its ROI {list(task.roi)} is no multiple of this model's {multiple}; "
                f"--set model.img_size={fitting}"
            )
        return task
    if len(img_size) != task.spatial_dims or any(s < m or s % m for s, m in zip(img_size, multiples)):
        raise UserError(
            f"model.img_size {img_size}: task {task.name} needs {task.spatial_dims} multiples of {multiple}"
        )
    return replace(task, roi=tuple(img_size), record={**task.record, "roi": list(img_size)})
