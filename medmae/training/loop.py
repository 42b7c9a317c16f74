"""The training loop shared by pretraining and fine-tuning: warm-up and cosine per iteration, gradient
accumulation and clipping, autocast (bf16; fp16 with a scaler), DDP, checkpoints every N epochs, resume."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from medmae.checkpoint import model_checkpoint
from medmae.config import Config
from medmae.devices import autocast, autocast_dtype
from medmae.errors import UserError, raise_if_stopped
from medmae.models.compilation import RECOMPILE_LIMIT, compile_regions, release_regions
from medmae.models.encoder import set_activation_checkpointing
from medmae.training.distributed import Context, all_mean, barrier
from medmae.training.optim import encoder_ramp, learning_rate, load_optimizer_state, set_learning_rate
from medmae.training.run_folder import RunFolder, restore_rng, rng_state

log = logging.getLogger("medmae")


class NonFiniteLoss(UserError):
    """Training diverged; the message says where and what to change."""


@dataclass
class Progress:
    """Where a run stands: epochs and optimiser steps completed, the best validation score and its epoch."""

    epoch: int = 0
    step: int = 0
    best: float | None = None
    best_epoch: int | None = None


@dataclass
class Job:
    """What differs between stages: the loss of one batch, the work at the end of an epoch (validation,
    figures) returning extra metrics, and the payload fields that describe the run in every checkpoint."""

    loss: Callable[[nn.Module, Any], torch.Tensor]
    end_of_epoch: Callable[[int, bool], dict[str, float]]
    describe: dict[str, Any]
    samples_per_item: int = 1
    score_name: str | None = None  # validation metric that picks best.pt (higher is better)


def _batches(loader, epoch: int, steps: int) -> Iterator[Any]:
    """``steps`` batches for ``epoch``, passing over the data as often as needed (each pass seeded apart)."""
    passes = 0
    while True:
        loader.sampler.set_pass(epoch * 1000 + passes)
        for batch in loader:
            yield batch
            steps -= 1
            if steps == 0:
                return
        passes += 1


def fit(
    cfg: Config,
    ctx: Context,
    run: RunFolder,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader,
    job: Job,
    resume_from: dict[str, Any] | None = None,
) -> Progress:
    """Train ``model`` for ``cfg.train.epochs`` epochs; returns the final :class:`Progress`. The model
    leaves eager whatever happens (``train.compile`` compiles its regions in place for the run only)."""
    try:
        return _fit(cfg, ctx, run, model, optimizer, loader, job, resume_from)
    finally:
        release_regions(model)


def _fit(
    cfg: Config,
    ctx: Context,
    run: RunFolder,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader,
    job: Job,
    resume_from: dict[str, Any] | None,
) -> Progress:
    steps = _steps_per_epoch(cfg, loader)
    float16 = autocast_dtype(cfg.train.precision, ctx.device) == torch.float16
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=float16)
    progress, rows = _restored(cfg, ctx, run, optimizer, scaler, resume_from)
    trained = _wrapped(cfg, ctx, model)
    total = cfg.train.epochs * steps
    warmup = round(cfg.optim.warmup_epochs * steps)
    peak = effective_lr(cfg, job.samples_per_item)
    schedule = functools.partial(
        learning_rate, total_steps=total, warmup_steps=warmup, peak=peak, minimum=cfg.optim.min_lr
    )
    encoder_scale = functools.partial(encoder_ramp, warmup_steps=round(cfg.optim.encoder_warmup_epochs * steps))
    advice = CPU_ADVICE if ctx.device.type == "cpu" and ctx.is_main else ""
    heartbeat = Heartbeat(total, progress.step, enabled=ctx.is_main and not sys.stderr.isatty(), advice=advice)
    for epoch in range(progress.epoch, cfg.train.epochs):
        if stopped_early(cfg, progress):  # a resumed run that had already stopped
            break
        model.train()
        started = time.perf_counter()
        batches = _batches(loader, epoch, steps * cfg.optim.accumulate)
        loss_sum, lr = train_epoch(
            cfg, ctx, trained, optimizer, scaler, batches, job, progress, steps, schedule, heartbeat, encoder_scale
        )
        epoch_loss = all_mean(loss_sum / steps, ctx).item()
        check_finite(torch.tensor(epoch_loss), epoch, progress.step)
        seconds = time.perf_counter() - started
        progress.epoch = epoch + 1
        last = progress.epoch == cfg.train.epochs
        samples = steps * cfg.optim.accumulate * cfg.data.batch_size * job.samples_per_item
        row = {"epoch": progress.epoch, "step": progress.step, "loss": epoch_loss, "lr": lr}
        row |= {"samples_per_s": samples / seconds, "seconds": seconds, **job.end_of_epoch(progress.epoch, last)}
        improved = _update_best(progress, row, job, last)
        stop = stopped_early(cfg, progress)
        rows.append(row)
        run.log_epoch(rows)
        if improved or last or stop or progress.epoch % cfg.train.checkpoint_every == 0:
            run.save(payload(cfg, model, optimizer, scaler, progress, job), best=improved)
        shown = ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch" and isinstance(v, float))
        log.info("epoch %d/%d: %s", progress.epoch, cfg.train.epochs, shown)
        barrier(ctx)
        if stop:
            log.info(
                "stopped early at epoch %d: no better %s in %d validations since epoch %d",
                progress.epoch,
                job.score_name,
                cfg.train.patience,
                progress.best_epoch,
            )
            break
    return progress


def stopped_early(cfg: Config, progress: Progress) -> bool:
    """True once ``train.patience`` validations (every ``train.val_every`` epochs) have passed without a
    better score than the best one, at epoch ``progress.best_epoch``."""
    if cfg.train.patience is None or progress.best_epoch is None:
        return False
    return progress.epoch - progress.best_epoch >= cfg.train.patience * cfg.train.val_every


def _steps_per_epoch(cfg: Config, loader) -> int:
    """Optimiser steps per epoch: ``train.steps_per_epoch``, else one pass over the loader."""
    steps = cfg.train.steps_per_epoch or len(loader) // cfg.optim.accumulate
    if steps == 0:
        raise UserError(
            f"an epoch holds fewer than optim.accumulate={cfg.optim.accumulate} batches; lower it or data.batch_size"
        )
    return steps


def _restored(
    cfg: Config,
    ctx: Context,
    run: RunFolder,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    resume_from: dict[str, Any] | None,
) -> tuple[Progress, list[dict[str, Any]]]:
    """Where a run starts: from scratch, or the progress, optimiser, scaler and RNG state of the checkpoint it
    resumes and the rows of ``metrics.csv`` up to it."""
    if resume_from is None:
        return Progress(), []
    progress = Progress(**resume_from["progress"])
    load_optimizer_state(optimizer, resume_from["optimizer"])
    scaler.load_state_dict(resume_from["scaler"])
    restore_rng(resume_from["rng"])
    if ctx.world > 1:  # the checkpoint holds rank 0's RNG; give each process its own stream again
        torch.manual_seed(cfg.train.seed + ctx.rank + progress.step)
    log.info("resumed at epoch %d, step %d", progress.epoch, progress.step)
    return progress, run.history(progress.epoch)


def _wrapped(cfg: Config, ctx: Context, model: nn.Module) -> nn.Module:
    """``model`` as trained: with activation checkpointing set, in DDP over several processes, and with
    ``train.compile`` its regions compiled on the first step (:func:`compile_regions`; checkpoints save the
    raw model)."""
    set_activation_checkpointing(model, cfg.train.activation_checkpointing)
    trained = DistributedDataParallel(model) if ctx.world > 1 else model
    if not cfg.train.compile:
        return trained
    torch._dynamo.reset()  # graphs and guards of an earlier run in this process (a sweep) do not carry over
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    return compile_regions(trained, cfg.train.compile_mode)


def _update_best(progress: Progress, row: dict[str, Any], job: Job, last: bool) -> bool:
    """Record a better validation score in ``progress``; True when this epoch's model is the new ``best.pt``
    (the last epoch's, when the run never validated)."""
    if job.score_name is None:
        return False
    score = row.get(job.score_name, math.nan)
    if not math.isnan(score) and (progress.best is None or score > progress.best):
        progress.best = score
        progress.best_epoch = progress.epoch
        return True
    if last and progress.best is None:  # never validated: the last model
        progress.best_epoch = progress.epoch
        return True
    return False


def plain(x: Any) -> torch.Tensor:
    """A MONAI MetaTensor as a plain tensor (no metadata tracking in the training step)."""
    return torch.as_tensor(x).as_subclass(torch.Tensor)


LONG_CPU_RUN_S = 2 * 3600
CPU_ADVICE = (
    "for a CPU train a tiny model: --config configs/test/tiny.yaml (a smoke run) or the CPU recipes of "
    "docs/how-to/msd_hippocampus.md#on-a-cpu"
)


class Heartbeat:
    """Progress for logs that are not a terminal (``nohup``, batch schedulers), where no progress bar shows:
    at most one line per ``every`` seconds with the step, loss, rate and the time the run has left, beside
    the logging's time stamp. With ``advice`` (a run on the CPU), a run that will take more than two hours
    says so once, after 3 steps, with the advice."""

    def __init__(
        self, total_steps: int, first_step: int, every: float = 60.0, enabled: bool = True, advice: str = ""
    ) -> None:
        self.total, self.first, self.every, self.enabled, self.advice = total_steps, first_step, every, enabled, advice
        self.started = self.last = time.monotonic()

    def pace(self, step: int) -> tuple[float, float] | None:
        """(steps per second, seconds left) after ``step``; warns once about a long CPU run (see above)."""
        now = time.monotonic()
        if step <= self.first or now <= self.started:
            return None
        rate = (step - self.first) / (now - self.started)
        left = (self.total - step) / rate
        if self.advice and step - self.first >= 3 and left > LONG_CPU_RUN_S:
            log.warning("this run needs about %s more at %.3g steps/s; %s", span(left), rate, self.advice)
            self.advice = ""
        return rate, left

    def beat(self, step: int, where: str, loss: float, lr: float) -> None:
        """The progress line, if enabled and ``every`` seconds have passed since the last one."""
        paced = self.pace(step)
        if paced is None or not self.enabled or time.monotonic() - self.last < self.every:
            return
        self.last = time.monotonic()
        shown = f"loss {loss:.4g}, lr {lr:.3g}, {paced[0]:.3g} steps/s, about {span(paced[1])} left"
        log.info("%s of %d: %s", where, self.total, shown)


def span(seconds: float) -> str:
    """A duration as people read it: ``45s``, ``12m05s``, ``3h07m``."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def train_epoch(
    cfg: Config,
    ctx: Context,
    trained: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    batches: Iterator[Any],
    job: Job,
    progress: Progress,
    steps: int,
    schedule: Callable[[int], float],
    heartbeat: Heartbeat | None = None,
    encoder_scale: Callable[[int], float] = lambda step: 1.0,
) -> tuple[torch.Tensor, float]:
    """Epoch ``progress.epoch``: ``steps`` optimiser steps of ``optim.accumulate`` micro-batches each, with
    a progress bar (on a terminal) or ``heartbeat`` lines (in a log); returns the summed loss (on the
    device, not synchronised) and the last learning rate. ``encoder_scale(step)`` scales the encoder groups'
    rate (:func:`~medmae.training.optim.encoder_ramp`)."""
    accumulate = cfg.optim.accumulate
    loss_sum = torch.zeros((), device=ctx.device)
    lr = 0.0
    description = f"epoch {progress.epoch + 1}/{cfg.train.epochs}"
    bar = tqdm(total=steps, desc=description, unit="step", disable=not ctx.is_main or None, leave=False)
    heartbeat = heartbeat or Heartbeat(cfg.train.epochs * steps, progress.step, enabled=False)
    for _ in range(steps):
        raise_if_stopped()  # a SIGTERM whose exception a finaliser swallowed still stops the run
        lr = schedule(progress.step)
        set_learning_rate(optimizer, lr, encoder_scale(progress.step))
        for micro in range(accumulate):
            sync = contextlib.nullcontext() if micro == accumulate - 1 or ctx.world == 1 else trained.no_sync()
            with sync:
                with autocast(cfg.train.precision, ctx.device):
                    loss = job.loss(trained, next(batches)) / accumulate
                scaler.scale(loss).backward()
            loss_sum += loss.detach()
        if cfg.optim.clip_grad is not None:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(trained.parameters(), cfg.optim.clip_grad)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        progress.step += 1
        bar.update()
        if heartbeat.advice:  # a run on the CPU: its pace is known after a few steps
            heartbeat.pace(progress.step)
        if progress.step % cfg.train.log_every == 0:  # the only host-device synchronisation of the loop
            check_finite(all_mean(loss.detach() * accumulate, ctx), progress.epoch, progress.step)
            bar.set_postfix(loss=f"{loss.item() * accumulate:.4f}", lr=f"{lr:.3g}")
            heartbeat.beat(progress.step, f"{description}, step {progress.step}", loss.item() * accumulate, lr)
    bar.close()
    return loss_sum, lr


def effective_lr(cfg: Config, samples_per_item: int) -> float:
    """``base_lr x effective batch / 256``; the effective batch counts every crop of every accumulated step."""
    return cfg.optim.base_lr * effective_batch(cfg, samples_per_item) / 256


def effective_batch(cfg: Config, samples_per_item: int) -> int:
    return cfg.data.batch_size * samples_per_item * cfg.optim.accumulate


def check_finite(loss: torch.Tensor, epoch: int, step: int) -> None:
    if not torch.isfinite(loss).all():
        raise NonFiniteLoss(
            f"the loss became {loss.item()} in epoch {epoch + 1} by step {step}; nothing was saved after "
            "the last checkpoint. Start a new run (another --output-dir, or --pretrained with the last "
            "checkpoint) with a lower optim.base_lr, optim.clip_grad set (e.g. 1.0), or "
            "train.precision=bf16 or fp32 instead of fp16"
        )


def payload(
    cfg: Config,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    progress: Progress,
    job: Job,
) -> dict[str, Any]:
    """A self-describing checkpoint: model name and geometry, weights, task, resolved config, version,
    epoch and step, optimiser, scaler and RNG state."""
    return model_checkpoint(
        model,
        run_config=cfg.to_dict(),
        progress=vars(progress).copy(),
        epoch=progress.epoch,
        step=progress.step,
        optimizer=optimizer.state_dict(),
        scaler=scaler.state_dict(),
        rng=rng_state(),
        **job.describe,
    )
