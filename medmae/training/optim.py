"""AdamW parameter groups (no decay on norms, biases, position embedding, tokens; layer-wise rate decay)
and the per-iteration schedule: linear warm-up, then cosine to ``min_lr``; optionally the encoder's rate
ramped over its own warm-up."""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from medmae.errors import UserError

NO_DECAY_NAMES = ("position_embeddings", "pos_embed", "cls_token", "mask_token")


def decays(name: str, param: nn.Parameter) -> bool:
    """Weight decay only on matrices and kernels: not on biases, norm scales, position embeddings or tokens."""
    return param.ndim > 1 and not name.endswith(NO_DECAY_NAMES)


def layer_id(name: str, depth: int) -> int:
    """Position of a parameter for layer decay: 0 for the patch embedding and tokens, k + 1 for encoder
    block k, ``depth + 1`` for everything after the encoder blocks (final norm, decoder, head)."""
    match = re.search(r"(?:^|\.)(?:vit|encoder)\.blocks\.(\d+)\.", name)
    if match:
        return int(match.group(1)) + 1
    if re.search(r"(?:^|\.)(?:vit|encoder)\.(?:patch_embedding|cls_token)", name):
        return 0
    return depth + 1


def param_groups(
    model: nn.Module, weight_decay: float, layer_decay: float = 1.0, depth: int = 12, encoder: tuple[str, ...] = ()
) -> list[dict]:
    """Groups for AdamW, each with the parameters' ``names``, ``lr_scale = layer_decay ** (depth + 1 -
    layer_id)`` and ``encoder`` (the name starts with one of the ``encoder`` prefixes; the encoder warm-up
    ramps these groups): one group per (layer, decay, encoder) with layer decay, else per (decay, encoder),
    so that the fused AdamW runs two kernels rather than one per layer when nothing is split."""
    groups: dict[tuple[int, bool, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer = layer_id(name, depth) if layer_decay != 1.0 else depth + 1
        decay = decays(name, param)
        in_encoder = name.startswith(encoder) if encoder else False
        group = groups.setdefault(
            (layer, decay, in_encoder),
            {
                "params": [],
                "names": [],
                "weight_decay": weight_decay if decay else 0.0,
                "lr_scale": layer_decay ** (depth + 1 - layer),
                "encoder": in_encoder,
            },
        )
        group["params"].append(param)
        group["names"].append(name)
    return [groups[key] for key in sorted(groups)]


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    layer_decay: float = 1.0,
    depth: int = 12,
    encoder: tuple[str, ...] = (),
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`, fused (one kernel over all parameters) on GPU and CPU."""
    fused = next(model.parameters()).device.type in ("cuda", "cpu")
    groups = param_groups(model, weight_decay, layer_decay, depth, encoder)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=fused or None)


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Load ``saved`` (a state dict of :func:`build_optimizer`'s optimizer) into ``optimizer``, matching the
    parameters by name, so a checkpoint whose groups split the parameters otherwise (one made before the
    two-group rule without layer decay) resumes with its moments. Raises UserError naming a parameter that
    has no saved state."""
    saved_ids = {n: i for g in saved["param_groups"] for n, i in zip(g.get("names", ()), g["params"], strict=True)}
    if not saved_ids:  # groups without names: only the same grouping can load
        optimizer.load_state_dict(saved)
        return
    current = optimizer.state_dict()
    state = {}
    for group in current["param_groups"]:
        for name, index in zip(group["names"], group["params"], strict=True):
            if name not in saved_ids:
                raise UserError(f"the checkpoint's optimiser state has no parameter {name}")
            if saved_ids[name] in saved["state"]:
                state[index] = saved["state"][saved_ids[name]]
    optimizer.load_state_dict({"state": state, "param_groups": current["param_groups"]})


def learning_rate(step: int, total_steps: int, warmup_steps: int, peak: float, minimum: float = 0.0) -> float:
    """Rate for optimiser step ``step`` (0-based): linear from ``peak / warmup_steps`` to ``peak`` over
    the warm-up, then half a cosine from ``peak`` down to ``minimum`` at ``total_steps``."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return minimum + (peak - minimum) * 0.5 * (1 + math.cos(math.pi * progress))


def encoder_ramp(step: int, warmup_steps: int) -> float:
    """The encoder's share of the rate at optimiser step ``step`` (0-based): linear from ``1 / warmup_steps``
    to 1 over ``warmup_steps`` steps (nnssl's warm-up of a pretrained encoder), then 1; 1 without warm-up."""
    return 1.0 if step >= warmup_steps else (step + 1) / warmup_steps


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float, encoder_scale: float = 1.0) -> None:
    """Each group's rate: ``lr`` times its ``lr_scale``, times ``encoder_scale`` for encoder groups."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0) * (encoder_scale if group.get("encoder") else 1.0)
