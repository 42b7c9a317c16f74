"""Fine-tuning: a segmentation model (ViT with the UNETR or light decoder, DynUNet or U-Net; DiceCE) or
the ViT classifier (BCE with logits) for 2D classification; ``medmae finetune --task T`` -> ``run(request)``."""

from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from medmae.config import Config
from medmae.data.cases import Case, identities, inputs_record, merged_record
from medmae.data.loaders import CaseDataset, train_loader
from medmae.errors import UserError
from medmae.evaluation.classification import macro_auc, per_finding_auc
from medmae.evaluation.metrics import dice_per_class
from medmae.inference.classify import classify
from medmae.inference.segment import ignored_voxels, predicted_masks, reference_masks, segment
from medmae.models.exchange import read_pretrained
from medmae.models.imagenet import imagenet_payload
from medmae.models.registry import Family, family_of_arch, family_of_name, rebuild_model
from medmae.models.weights import WeightTransferError, encoder_source
from medmae.tasks import TaskSpec
from medmae.training.distributed import Context, gather
from medmae.training.loop import Job, effective_batch, effective_lr, fit, plain
from medmae.training.losses import segmentation_loss
from medmae.training.optim import build_optimizer
from medmae.training.session import RunRequest, Setup, running, start
from medmae.training.stored import stored_cases

log = logging.getLogger("medmae")


def label_subset(cases: list[Case], fraction: float, seed: int) -> list[Case]:
    """A fixed seeded share of the labelled cases (at least one). Cases are shuffled once by ``seed`` and
    the first ``round(fraction * n)`` taken, so a smaller fraction is a subset of a larger one."""
    order = sorted(cases, key=lambda c: c.id)
    random.Random(seed).shuffle(order)
    return sorted(order[: max(1, round(fraction * len(order)))], key=lambda c: c.id)


def build_finetune_model(cfg: Config, task: TaskSpec, pretrained: str | None) -> nn.Module:
    """The model of ``model.arch``'s family (:mod:`medmae.models.families`): a segmenter (3D or 2D) or, for
    a classification task, the ViT classifier; from scratch or around the encoder of ``pretrained`` (a
    medmae checkpoint, ``imagenet:FILE``, an nnssl checkpoint or MONAI ViT weights; :mod:`medmae.models.exchange`)."""
    family = family_of_arch(cfg.model.arch)
    if task.is_classification and cfg.model.arch not in family.classifies:
        raise UserError(f"model.arch={cfg.model.arch} segments; classification tasks use the ViT classifier")
    outputs = len(task.class_names)
    geometry = {"img_size": task.roi, "in_channels": task.in_channels}
    if cfg.model.drop_path > 0 and not family.layer_decay:
        log.info(
            "model.drop_path=%g applies to ViT blocks only; model.arch=%s has none", cfg.model.drop_path, cfg.model.arch
        )
    if pretrained is None:
        return family.segmenter(cfg.model, task.spatial_dims, outputs, geometry, task.is_classification)
    if not family.pretrains:
        raise UserError(f"model.arch={cfg.model.arch} is trained from scratch only: it takes no --pretrained")
    payload = pretrained_payload(pretrained, task, family)
    try:
        model, report = family.from_pretrained(payload, cfg.model, outputs, geometry, task.is_classification)
    except (WeightTransferError, ValueError) as error:  # ValueError: an encoder the decoder cannot take
        raise WeightTransferError(f"{pretrained}: {error}") from error
    log.info("%s", report)
    model.pretrained_terms = payload.get("terms") or payload.get("pretrained_terms")  # kept in the checkpoint
    if cfg.model.tuning != "full" and "cls_token" in report.initialised:
        raise UserError(
            f"model.pool=cls with model.tuning={cfg.model.tuning}: {pretrained} has no cls token, so the "
            "head would read a frozen, untrained token; use model.pool=avg or model.tuning=full"
        )
    return model


IMAGENET = "imagenet:"


def pretrained_payload(path: str, task: TaskSpec, family: Family) -> dict[str, Any]:
    """The encoder payload of ``--pretrained`` (:func:`medmae.models.exchange.read_pretrained`: a medmae,
    nnssl or MONAI file, or ``imagenet:FILE``) for ``family``, with its notes logged and a warning where
    it was trained on other spacing, intensity or channels than the task's."""
    if path.startswith(IMAGENET):
        if family.name != "vit":
            raise UserError(f"{path}: ImageNet weights are ViT weights; use model.arch unetr or light")
        payload, notes = imagenet_payload(path.removeprefix(IMAGENET), task.spatial_dims)
    else:
        payload, notes = read_pretrained(path)
    for note in notes:
        log.info("%s", note)
    config = payload.get("config", {})
    held = family if path.startswith(IMAGENET) else family_of_name(config.get("name"))
    if held is not None and not held.pretrains:
        raise WeightTransferError(f"{path}: holds {config.get('name')}, a baseline with no pretrained encoder")
    if held is None:
        raise WeightTransferError(f"{path}: holds {config.get('name')}, which no medmae backbone family builds")
    if held is not family:
        raise WeightTransferError(
            f"{path}: holds a {held.name} encoder ({config.get('name')}); fine-tune it with --set "
            f"model.arch={' or '.join(held.archs)}"
        )
    if family.name == "vit":
        try:
            encoder_source(payload)
        except WeightTransferError as error:
            raise WeightTransferError(f"{path}: {error}") from error
    if config.get("spatial_dims") != task.spatial_dims:
        raise WeightTransferError(
            f"{path}: a {config.get('spatial_dims')}D encoder ({config.get('name')}); task "
            f"{task.name} is {task.spatial_dims}D"
        )
    for line in pretraining_differences(path, payload.get("task") or {}, task):
        log.warning("%s", line)
    return payload


def pretraining_differences(path: str, source: dict[str, Any], task: TaskSpec) -> list[str]:
    """One line for each of spacing, intensity and channels where the encoder's pretraining differs from
    ``task``, with what follows the checkpoint (``source`` may carry ``advice`` for each key)."""
    lines = []
    for key in ("spacing", "intensity", "channels"):
        if key in source and source[key] != task.record.get(key):
            advice = (source.get("advice") or {}).get(key)
            follow = f"; to follow the checkpoint: {advice}" if advice else ""
            lines.append(
                f"{path} was pretrained with {key} {source[key]}; task {task.name} uses {task.record.get(key)}{follow}"
            )
    return lines


def encoder_inputs(resume_from: dict[str, Any] | None, pretrained: str | None) -> dict[str, Any] | None:
    """What the encoder has seen, carried into the fine-tuned checkpoint: ``{"source", "cases", "files"}``
    (:func:`seen_by` of the ``--pretrained`` checkpoint; ``files`` None where it recorded none), a resumed
    run's own record, or None (from scratch, or ImageNet weights: no medical images)."""
    if resume_from is not None:
        pretrained = resume_from.get("pretrained")
        if "pretrained_on" in resume_from or pretrained is None or pretrained.startswith(IMAGENET):
            return resume_from.get("pretrained_on")
        return {"source": pretrained, "cases": None, "files": None}  # started before the record existed
    if pretrained is None or pretrained.startswith(IMAGENET):
        return None
    return {"source": pretrained, **seen_by(torch.load(pretrained, map_location="cpu", weights_only=True, mmap=True))}


def seen_by(payload: dict[str, Any]) -> dict[str, list[str] | None]:
    """The images a checkpoint's weights have seen (:func:`~medmae.data.cases.inputs_record`): an MAE's
    pretraining images; a fine-tuned model's training and validation cases and its encoder's images (a
    fine-tuned model can start another). ``files`` is None where the checkpoint predates the record."""
    if payload.get("stage") != "finetune":
        return payload.get("pretrained_on") or {"cases": None, "files": None}
    cases, files = payload.get("cases") or {}, payload.get("case_files")
    own = {
        "cases": [*cases.get("train", []), *cases.get("validation", [])],
        "files": None if files is None else [*files["train"], *files["validation"]],
    }
    return merged_record(own, payload.get("pretrained_on"))


def seen_record(s: Setup, trained: list[Case], pretrained: str | None) -> dict[str, Any]:
    """The checkpoint fields that say what the model has seen: ``cases`` (ids it trains and picks its weights
    on), ``case_files`` (their :func:`~medmae.data.cases.file_identity`) and ``pretrained_on`` (what its
    encoder has seen, :func:`encoder_inputs`); with a warning when that includes test cases of the split."""
    parts = {"train": trained, "validation": s.split.validation}
    record = {
        "cases": {part: [c.id for c in chosen] for part, chosen in parts.items()},
        "case_files": {part: inputs_record(chosen)["files"] for part, chosen in parts.items()},
        "pretrained_on": encoder_inputs(s.resume_from, pretrained),
    }
    encoder_files = set((record["pretrained_on"] or {}).get("files") or ())
    leaked = [c.id for c in s.split.test if encoder_files and (mine := set(identities(c))) and mine <= encoder_files]
    if leaked:
        log.warning(
            "WARNING: %d of the %d test cases of split %s were among the images the encoder has seen (%s), so "
            "evaluate will refuse to score them: start from an encoder that never saw them (pretraining with "
            "--data-root never uses the test part)",
            *(len(leaked), len(s.split.test), s.split.name, ", ".join(leaked[:10])),
        )
    return record


@torch.no_grad()
def validate_segmentation(
    model: nn.Module, task: TaskSpec, dataset: CaseDataset, cfg: Config, ctx: Context
) -> dict[str, float]:
    """Mean DSC over validation cases and scored classes, on the preprocessed grid (sliding windows), voxels
    under the ignore label left out. Each process takes every ``world``-th case; all of them return the
    same scores."""
    model.eval()
    scores = []
    shard = range(ctx.rank, len(dataset), ctx.world)
    for index in tqdm(shard, desc="validation", unit="case", leave=False, disable=not ctx.is_main or None):
        item = dataset[index]
        probabilities = segment(model, task, item["image"], cfg.infer, cfg.train.precision, ctx.device, on_device=True)
        label = torch.as_tensor(item["label"]).as_subclass(torch.Tensor)
        predicted = predicted_masks(task, probabilities).cpu() & ~ignored_voxels(task, label)
        scores.append(dice_per_class(predicted.numpy(), reference_masks(task, label).numpy()))
    model.train()
    table = np.array(gather(scores, ctx))
    per_class = {
        f"val_dsc_{name}": float(np.nanmean(table[:, k])) if not np.isnan(table[:, k]).all() else float("nan")
        for k, name in enumerate(task.scored_classes)
    }
    return {"val_mean_dsc": float(np.nanmean(list(per_class.values()))), **per_class}


def run(request: RunRequest) -> nn.Module:
    """Fine-tune on the task's labelled training cases; ``best.pt`` is picked on the validation part."""
    with running(start("finetune", request)) as s:
        cfg, task, ctx = s.cfg, s.task, s.ctx
        cases = label_subset(s.split.train, cfg.data.label_fraction, cfg.data.label_seed)
        crops = cfg.data.crops_per_volume if task.spatial_dims == 3 else 1
        store, kept = stored_cases(s, [*cases, *s.split.validation])
        cases, picking = ([c for c in part if c.id in kept] for part in (cases, s.split.validation))
        checked = task.spatial_dims == 3  # MONAI's chain reads lazily: bad 3D cases are named before the first step
        dataset = CaseDataset(task, cases, "train", crops, cfg.data.skip_bad_cases, check_first=checked, store=store)
        validation = None
        if picking:
            validation = CaseDataset(task, picking, "validation", check_first=checked, store=store)
        loader = train_loader(dataset, cfg.data.batch_size, ctx.rank, ctx.world, cfg.train.seed, cfg.data.num_workers)
        model = _model(cfg, task, s.resume_from, request.pretrained).to(ctx.device, memory_format=_layout(cfg, task))
        _set_tuning(model, cfg, task, ctx.world)
        _log_start(s, request, model, len(dataset), crops)
        depth = model.config.get("depth", 12)
        lr = effective_lr(cfg, crops)
        warmed = family_of_arch(cfg.model.arch).encoder_prefixes if cfg.optim.encoder_warmup_epochs else ()
        optimizer = build_optimizer(
            model, lr, cfg.optim.weight_decay, cfg.optim.betas, cfg.optim.layer_decay, depth, encoder=warmed
        )
        pretrained = s.resume_from.get("pretrained") if s.resume_from is not None else request.pretrained
        job = _job(cfg, task, model, validation, ctx, pretrained, s.split_record, crops)
        job.describe |= seen_record(s, dataset.cases, request.pretrained) if ctx.is_main else {}
        resumed_terms = (s.resume_from or {}).get("pretrained_terms")
        job.describe["pretrained_terms"] = getattr(model, "pretrained_terms", resumed_terms)
        fit(cfg, ctx, s.run, model, optimizer, loader, job, s.resume_from)
        return model


def _log_start(s: Setup, request: RunRequest, model: nn.Module, cases: int, crops: int) -> None:
    """Say what is fine-tuned, from what, on how much, with which derived batch and learning rate."""
    if request.pretrained:
        origin = "from " + request.pretrained
    else:
        origin = "resumed" if s.resume_from is not None else "from scratch"
    what = f"{model.config['name']} ({origin}) on {cases} of {len(s.split.train)} labelled training cases"
    cfg = s.cfg
    batch = effective_batch(cfg, crops)
    rate = f"learning rate {effective_lr(cfg, crops):.3g} (base {cfg.optim.base_lr:.3g} x {batch} / 256)"
    vit = family_of_arch(cfg.model.arch).layer_decay
    decay = f"layer decay {cfg.optim.layer_decay:g}" if vit else "no layer decay (not a ViT)"
    log.info(
        "fine-tuning %s of task %s: effective batch %d, %s, %s, %d processes, device %s",
        what,
        s.task.name,
        batch,
        rate,
        decay,
        s.ctx.world,
        s.ctx.device,
    )


def _model(cfg: Config, task: TaskSpec, resume_from: dict[str, Any] | None, pretrained: str | None) -> nn.Module:
    """A resumed run rebuilds its saved architecture (whatever encoder it started from); a new one is
    built from ``pretrained`` or from scratch."""
    if resume_from is None:
        return build_finetune_model(cfg, task, pretrained)
    family = family_of_name(resume_from["config"].get("name")) or family_of_arch(cfg.model.arch)
    return rebuild_model(resume_from, resume_from["loaded_from"], **family.rebuild_overrides(cfg.model))


def _set_tuning(model: nn.Module, cfg: Config, task: TaskSpec, world: int = 1) -> None:
    """Freeze what ``model.tuning`` leaves untrained (classifiers only) and say what trains. The probe's
    BatchNorm keeps per-process statistics under DDP (as the MAE paper's per-device BatchNorm)."""
    if cfg.model.tuning == "full":
        return
    if not task.is_classification:
        raise UserError(
            f"model.tuning={cfg.model.tuning} is for classification tasks; task {task.name} segments: "
            "fine-tune UNETR fully (model.tuning=full)"
        )
    if cfg.model.tuning == "linear" and cfg.data.batch_size // world < 2:
        raise UserError(
            f"model.tuning=linear: the probe's BatchNorm needs at least 2 images per process and step; "
            f"data.batch_size={cfg.data.batch_size} over {world} processes gives fewer"
        )
    try:
        trained = model.set_tuning(cfg.model.tuning, cfg.model.tuning_blocks)
    except ValueError as error:
        raise UserError(f"model.tuning_blocks={cfg.model.tuning_blocks}: {error}") from error
    groups = {
        ".".join(name.split(".")[:3]) if name.startswith("encoder.blocks.") else name.split(".")[0] for name in trained
    }
    log.info(
        "%s: training %d parameter tensors (%s), the rest frozen",
        cfg.model.tuning,
        len(trained),
        ", ".join(sorted(groups)),
    )


def _layout(cfg: Config, task: TaskSpec) -> torch.memory_format:
    """Channels-last 3D for UNETR's convolutions when ``train.channels_last`` is set."""
    use = cfg.train.channels_last and task.spatial_dims == 3 and not task.is_classification
    return torch.channels_last_3d if use else torch.preserve_format


def _job(
    cfg: Config,
    task: TaskSpec,
    model: nn.Module,
    validation: CaseDataset | None,
    ctx: Context,
    pretrained: str | None,
    split: dict[str, str],
    crops: int,
) -> Job:
    describe = {"stage": "finetune", "task": task.record, "pretrained": pretrained, "split": split}
    if validation is None:
        log.warning("no validation part: best.pt will be the model of the last epoch")
    if task.is_classification:
        criterion: nn.Module = nn.BCEWithLogitsLoss()
        shard = Subset(validation, range(ctx.rank, len(validation), ctx.world)) if validation else None
        val_loader = (
            DataLoader(shard, batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers) if shard else None
        )

        def validate() -> dict[str, float]:
            probabilities, targets, _ = classify(model, val_loader, task, cfg.train.precision, ctx.device)
            probabilities, targets = (np.concatenate(gather([a], ctx)) for a in (probabilities, targets))
            return {"val_macro_auc": macro_auc(per_finding_auc(probabilities, targets, task.findings))[0]}

        score = "val_macro_auc"
    else:
        criterion = segmentation_loss(task)

        def validate() -> dict[str, float]:
            return validate_segmentation(model, task, validation, cfg, ctx)

        score = "val_mean_dsc"

    def loss(trained: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        images = plain(batch["image"]).to(ctx.device, non_blocking=True, memory_format=_layout(cfg, task))
        return criterion(trained(images).float(), plain(batch["label"]).to(ctx.device, non_blocking=True))

    def end_of_epoch(epoch: int, last: bool) -> dict[str, float]:
        if validation is None or not (last or epoch % cfg.train.val_every == 0):
            return {}
        return validate()

    return Job(loss=loss, end_of_epoch=end_of_epoch, describe=describe, samples_per_item=crops, score_name=score)
