"""MAE pretraining: ``medmae pretrain --task T`` -> ``run(request)``."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import nn

from medmae.config import Config
from medmae.data.fast import CachedCrops
from medmae.data.loaders import CaseDataset, item_seed, train_loader
from medmae.engine.checkpoint import load_weights
from medmae.engine.common import RunRequest, start
from medmae.engine.distributed import Context, teardown
from medmae.engine.loop import Job, effective_batch, effective_lr, fit, plain
from medmae.engine.optim import build_optimizer
from medmae.errors import UserError
from medmae.evaluation.figures import save_reconstruction_figure
from medmae.models import create_model
from medmae.models.masking import masking_noise
from medmae.tasks import TaskSpec

log = logging.getLogger("medmae")
FIGURE_SAMPLES = 4
PATCH = 16  # every registry model uses 16-voxel patches


def build_mae(cfg: Config, task: TaskSpec) -> nn.Module:
    """The registry MAE for the task's dimensionality, channels and ROI, sized by ``model.size``."""
    extra: dict[str, Any] = {}
    if cfg.model.decoder_width is not None:
        extra |= {"decoder_width": cfg.model.decoder_width, "decoder_heads": max(1, cfg.model.decoder_width // 32)}
    if cfg.model.decoder_depth is not None:
        extra["decoder_depth"] = cfg.model.decoder_depth
    try:
        return create_model(
            f"mae_vit_{cfg.model.size}_patch16_{task.spatial_dims}d",
            img_size=task.roi,
            in_channels=task.in_channels,
            mask_ratio=cfg.model.mask_ratio,
            norm_pix_loss=cfg.model.norm_pix_loss,
            mask_strategy=cfg.model.mask_strategy,
            encoder_mode=cfg.model.encoder_mode,
            drop_path_rate=cfg.model.drop_path,
            **extra,
        )
    except ValueError as error:  # a ratio the mask strategy cannot give on this patch grid
        raise UserError(f"task {task.name}, ROI {task.roi}: {error}") from error


def mask_noise(
    seeds: torch.Tensor | list[int] | range,
    grid: tuple[int, ...],
    device: torch.device,
    strategy: str = "random",
    mask_ratio: float = 0.75,
) -> torch.Tensor:
    """``[B, N]`` noise on ``device`` that decides the masks of ``strategy``, each row a function of its
    sample's seed only (see ``SeededItems`` and :func:`masking_noise`)."""
    return masking_noise(strategy, torch.as_tensor(seeds).to(device, non_blocking=True), grid, mask_ratio)


def mae_loss(
    model: nn.Module, batch: dict[str, Any], device: torch.device, strategy: str = "random", mask_ratio: float = 0.75
) -> torch.Tensor:
    """The MAE loss of one batch (``image`` ``[B, C, *S]``), masks from each sample's seed."""
    images = plain(batch["image"]).to(device, non_blocking=True)
    grid = tuple(s // PATCH for s in images.shape[2:])
    loss, _, _ = model(images, noise=mask_noise(batch["sample_seed"], grid, device, strategy, mask_ratio))
    return loss


@torch.no_grad()
def save_figure(model: nn.Module, images: torch.Tensor, path, title: str) -> float:
    """Hidden input, reconstruction and original of fixed samples with fixed masks; returns their loss."""
    model.eval()
    noise = mask_noise(range(len(images)), model.encoder.grid, images.device, model.mask_strategy, model.mask_ratio)
    loss, pred, mask = model(images, noise=noise)
    shown = model.reconstruct(images, pred, mask)
    save_reconstruction_figure(
        path, images, {"masked input": shown["masked"], "reconstruction": shown["composite"]}, title=title
    )
    model.train()
    return loss.item()


def run(request: RunRequest) -> nn.Module:
    """Pretrain an MAE on the task's images (train, validation and unlabelled parts; never the test part)."""
    s = start("pretrain", request)
    cfg, task, ctx, run_folder = s.cfg, s.task, s.ctx, s.run
    try:
        cases = sorted(
            {c.id: c for c in s.split.train + s.split.validation + s.split.unlabelled}.values(), key=lambda c: c.id
        )
        crops = cfg.data.crops_per_volume if task.spatial_dims == 3 else 1
        dataset = CaseDataset(task, cases, "pretrain", samples=crops, skip_bad_cases=cfg.data.skip_bad_cases)
        loader = _loader(cfg, task, dataset, crops, ctx)
        model = build_mae(cfg, task)
        if s.resume_from is not None:
            load_weights(model, s.resume_from["state_dict"], s.resume_from["loaded_from"])
        model.to(ctx.device)
        log.info(
            "pretraining %s on %d images of task %s: effective batch %d, learning rate %.3g "
            "(base %.3g x %d / 256), %d processes, device %s",
            model.config["name"],
            len(dataset),
            task.name,
            effective_batch(cfg, crops),
            effective_lr(cfg, crops),
            cfg.optim.base_lr,
            effective_batch(cfg, crops),
            ctx.world,
            ctx.device,
        )
        optimizer = build_optimizer(model, effective_lr(cfg, crops), cfg.optim.weight_decay, cfg.optim.betas)
        figure_images = figure_batch(dataset, cfg, crops).to(ctx.device) if ctx.is_main else None

        def end_of_epoch(epoch: int, last: bool) -> dict[str, float]:
            if not ctx.is_main or not (last or epoch % cfg.train.figure_every == 0):
                return {}
            path = run_folder.figures / f"reconstruction_epoch{epoch:04d}.png"
            return {"figure_loss": save_figure(model, figure_images, path, f"{task.name}, epoch {epoch}")}

        masking = (cfg.model.mask_strategy, cfg.model.mask_ratio)
        job = Job(
            loss=lambda m, batch: mae_loss(m, batch, ctx.device, *masking),
            end_of_epoch=end_of_epoch,
            describe={"stage": "pretrain", "task": task.record, "split": s.split_record},
            samples_per_item=crops,
        )
        fit(cfg, ctx, run_folder, model, optimizer, loader, job, s.resume_from)
        return model
    except BaseException:
        run_folder.discard_if_unsaved()
        raise
    finally:
        run_folder.close()
        teardown()


def _loader(cfg: Config, task: TaskSpec, dataset: CaseDataset, crops: int, ctx: Context):
    """MONAI's per-sample chain in loader processes, or (``data.sampler=cached``, 3D) crops drawn in
    batches from volumes cached once, on the training device or memory-mapped from ``data.cache_dir``."""
    if cfg.data.sampler == "monai" or task.spatial_dims != 3:
        return train_loader(dataset, cfg.data.batch_size, ctx.rank, ctx.world, cfg.train.seed, cfg.data.num_workers)
    cached = CaseDataset(task, dataset.cases, "inference")
    writer = int(os.environ.get("LOCAL_RANK", "0")) == 0  # one process per node writes a disk cache; the others wait
    return CachedCrops(
        cached,
        task.roi,
        cfg.data.batch_size,
        crops,
        ctx.rank,
        ctx.world,
        cfg.train.seed,
        ctx.device,
        progress=ctx.is_main,
        cache_dir=cfg.data.cache_dir,
        write_cache=writer,
    )


def figure_batch(dataset: CaseDataset, cfg: Config, crops: int) -> torch.Tensor:
    """``[min(4, n), C, *roi]``: one fixed crop of each of the first cases, the same in every figure."""
    images = []
    for index in range(min(FIGURE_SAMPLES, len(dataset))):
        dataset.transform.set_random_state(seed=item_seed(cfg.train.seed, -1, index))
        item = dataset[index]
        images.append(torch.as_tensor((item[0] if isinstance(item, list) else item)["image"]))
    return torch.stack(images)
