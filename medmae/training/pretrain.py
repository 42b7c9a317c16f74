"""MAE pretraining (ViT or sparse convolutional): ``medmae pretrain --task T`` -> ``run(request)``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from medmae.checkpoint import load_weights
from medmae.config import Config
from medmae.data.cases import inputs_record, merged_record
from medmae.data.crops import CachedCrops
from medmae.data.loaders import CaseDataset, train_loader
from medmae.data.manifests import IMAGES_SPLIT
from medmae.errors import UserError
from medmae.evaluation.figures import save_reconstruction_figure
from medmae.models.registry import family_of_arch
from medmae.seeds import item_seed
from medmae.tasks import TaskSpec
from medmae.training.distributed import Context
from medmae.training.loop import Job, effective_batch, effective_lr, fit, plain
from medmae.training.optim import build_optimizer
from medmae.training.session import RunRequest, Setup, running, start
from medmae.training.stored import stored_cases

log = logging.getLogger("medmae")
FIGURE_SAMPLES = 4


def build_mae(cfg: Config, task: TaskSpec) -> nn.Module:
    """The MAE of ``model.arch``'s family (:mod:`medmae.models.families`) for the task's dimensionality,
    channels and ROI, sized by ``model.size``."""
    geometry = {"img_size": task.roi, "in_channels": task.in_channels}
    try:
        return family_of_arch(cfg.model.arch).mae(cfg.model, task.spatial_dims, geometry)
    except ValueError as error:  # a patch or ratio the ROI cannot take
        raise UserError(f"task {task.name}, ROI {task.roi}: {error}") from error


def mae_loss(model: nn.Module, batch: dict[str, Any], device: torch.device) -> torch.Tensor:
    """The MAE loss of one batch (``image`` ``[B, C, *S]``), each sample's mask from its ``sample_seed``.
    ``model`` is the MAE, or the MAE wrapped for DDP or compilation."""
    images = plain(batch["image"]).to(device, non_blocking=True)
    seeds = torch.as_tensor(batch["sample_seed"]).to(device, non_blocking=True)
    return model(images, seeds=seeds, loss_only=True)[0]


@torch.no_grad()
def save_figure(model: nn.Module, images: torch.Tensor, path, title: str) -> float:
    """Hidden input, reconstruction and original of fixed samples with fixed masks; returns their loss."""
    model.eval()
    loss, pred, mask = model(images, seeds=torch.arange(len(images), device=images.device))
    shown = model.reconstruct(images, pred, mask)
    save_reconstruction_figure(
        path, images, {"masked input": shown["masked"], "reconstruction": shown["composite"]}, title=title
    )
    model.train()
    return loss.item()


def run(request: RunRequest) -> nn.Module:
    """Pretrain an MAE on the task's images (train, validation and unlabelled parts; never the test part).
    With ``--images``, the held-out share (the validation part) is not trained on: the reconstruction
    figure and its loss show those images."""
    with running(start("pretrain", request)) as s:
        cfg, task, ctx = s.cfg, s.task, s.ctx
        held_out = s.split.validation if s.split.name == IMAGES_SPLIT else []
        shown_ids = {c.id for c in held_out}
        every = {c.id: c for c in [*s.split.train, *s.split.validation, *s.split.unlabelled]}
        cases = sorted((c for c in every.values() if c.id not in shown_ids), key=lambda c: c.id)
        crops = cfg.data.crops_per_volume if task.spatial_dims == 3 else 1
        store, kept = stored_cases(s, [*cases, *held_out], image_only=True)
        cases, held_out = ([c for c in part if c.id in kept] for part in (cases, held_out))
        lazy = task.spatial_dims == 3 and cfg.data.sampler == "monai"  # the cached sampler reads every case first
        dataset = CaseDataset(task, cases, "pretrain", crops, cfg.data.skip_bad_cases, check_first=lazy, store=store)
        shown = CaseDataset(task, held_out, "pretrain", samples=crops, store=store) if held_out else dataset
        loader = _loader(cfg, task, dataset, crops, ctx)
        model = build_mae(cfg, task)
        if s.resume_from is not None:
            load_weights(model, s.resume_from["state_dict"], s.resume_from["loaded_from"])
        model.to(ctx.device)
        batch = effective_batch(cfg, crops)
        lr = effective_lr(cfg, crops)
        what = f"{model.config['name']} on {len(dataset)} images of task {task.name}"
        if held_out:
            what += f" ({len(held_out)} more held out for the reconstruction figure)"
        rate = f"learning rate {lr:.3g} (base {cfg.optim.base_lr:.3g} x {batch} / 256)"
        log.info(
            "pretraining %s: effective batch %d, %s, %d processes, device %s", what, batch, rate, ctx.world, ctx.device
        )
        optimizer = build_optimizer(model, lr, cfg.optim.weight_decay, cfg.optim.betas)
        job = Job(
            loss=lambda m, batch: mae_loss(m, batch, ctx.device),
            end_of_epoch=_figures(s, model, figure_batch(shown, cfg, crops) if ctx.is_main else None),
            describe={"stage": "pretrain", "task": task.record, "split": s.split_record},
            samples_per_item=crops,
        )
        if ctx.is_main:  # evaluate refuses to score these images; a resumed run's weights saw the earlier ones too
            before = s.resume_from.get("pretrained_on", {"files": None}) if s.resume_from is not None else None
            job.describe["pretrained_on"] = merged_record(before, inputs_record(dataset.cases))
        fit(cfg, ctx, s.run, model, optimizer, loader, job, s.resume_from)
        return model


def _figures(s: Setup, model: nn.Module, images: torch.Tensor | None) -> Callable[[int, bool], dict[str, float]]:
    """The end of a pretraining epoch: on the main process, every ``train.figure_every`` epochs and at the
    end, the reconstruction figure of ``images`` ``[n, C, *roi]`` and its loss."""
    images = plain(images).to(s.ctx.device) if images is not None else None  # no MetaTensor in compiled regions

    def end_of_epoch(epoch: int, last: bool) -> dict[str, float]:
        if not s.ctx.is_main or not (last or epoch % s.cfg.train.figure_every == 0):
            return {}
        path = s.run.figures / f"reconstruction_epoch{epoch:04d}.png"
        return {"figure_loss": save_figure(model, images, path, f"{s.task.name}, epoch {epoch}")}

    return end_of_epoch


def _loader(cfg: Config, task: TaskSpec, dataset: CaseDataset, crops: int, ctx: Context):
    """MONAI's per-sample chain in loader processes, or (``data.sampler=cached``, 3D) crops drawn in
    batches with seeded starts and flips, from volumes on the training device or from the store
    (``data.crops_from``, :class:`~medmae.data.crops.CachedCrops`)."""
    if cfg.data.sampler == "monai" or task.spatial_dims != 3:
        if not cfg.data.flips:
            raise UserError("data.flips=false needs the cached 3D crop sampler (data.sampler=cached, a 3D task)")
        return train_loader(dataset, cfg.data.batch_size, ctx.rank, ctx.world, cfg.train.seed, cfg.data.num_workers)
    return CachedCrops(
        CaseDataset(task, dataset.cases, "inference", store=dataset.store),
        task.roi,
        cfg.data.batch_size,
        crops,
        ctx.rank,
        ctx.world,
        cfg.train.seed,
        ctx.device,
        progress=ctx.is_main,
        flips=cfg.data.flips,
        dtype=getattr(torch, cfg.data.cache_dtype),
        crops_from=cfg.data.crops_from,
        num_workers=cfg.data.num_workers,
    )


def figure_batch(dataset: CaseDataset, cfg: Config, crops: int) -> torch.Tensor:
    """``[min(4, n), C, *roi]``: one fixed crop of each of the first cases, the same in every figure."""
    images = []
    for index in range(min(FIGURE_SAMPLES, len(dataset))):
        dataset.transform.set_random_state(seed=item_seed(cfg.train.seed, -1, index))
        item = dataset[index]
        images.append(torch.as_tensor((item[0] if isinstance(item, list) else item)["image"]))
    return torch.stack(images)
