"""ViT classifier for multi-label classification (ChestX-ray14): raw logits, no bounded activation."""

from __future__ import annotations

import typing

import torch
from torch import nn

from medmae.config import Pool, Tuning
from medmae.models.encoder import ViTEncoder

POOLING = typing.get_args(Pool)
TUNING = typing.get_args(Tuning)


class ViTClassifier(nn.Module):
    """Encoder, pooled token, linear head (after a BatchNorm without affine parameters for a linear probe).

    Args:
        encoder: a ViTEncoder (2D or 3D).
        num_classes: outputs, one logit per finding.
        pool: ``"avg"`` (mean of the patch tokens, default) or ``"cls"`` (needs an encoder with a cls token).
        head_norm: a ``BatchNorm1d`` without affine parameters before the head (the MAE paper's linear
            probe: it normalises the frozen features, whose scale differs between encoders).

    Forward: ``[B, C, *img_size]`` -> logits ``[B, num_classes]`` (use ``BCEWithLogitsLoss``; no sigmoid
    or tanh inside).
    """

    def __init__(self, encoder: ViTEncoder, num_classes: int, pool: str = "avg", head_norm: bool = False) -> None:
        super().__init__()
        if pool not in POOLING:
            raise ValueError(f"pool={pool!r}: choose one of {POOLING}")
        has_cls = encoder.config["cls_token"]
        if pool == "cls" and not has_cls:
            raise ValueError("pool='cls' needs an encoder built with cls_token=True")
        self.encoder = encoder
        self.pool = pool
        self.patch_start = int(has_cls)
        if head_norm:
            self.head_norm = nn.BatchNorm1d(encoder.config["width"], affine=False, eps=1e-6)
        self.head = nn.Linear(encoder.config["width"], num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        self.config = dict(encoder.config, num_classes=num_classes, pool=pool, head_norm=head_norm)
        self.tuning = "full"

    def set_tuning(self, tuning: str, blocks: int = 0) -> list[str]:
        """Choose what trains: ``full`` (everything), ``linear`` (the head only: the encoder is frozen, runs
        in eval mode and without autograd; the MAE paper's linear probe) or ``partial`` (the last ``blocks``
        encoder blocks, the final norm and the head). Returns the names of the trained parameters."""
        if tuning not in TUNING:
            raise ValueError(f"tuning={tuning!r}: choose one of {', '.join(TUNING)}")
        depth = len(self.encoder.blocks)
        if tuning == "partial" and not 0 <= blocks <= depth:
            raise ValueError(f"partial fine-tuning of {blocks} blocks: the encoder has {depth}")
        trained = {
            "full": ("",),
            "linear": ("head",),
            "partial": ("head", "encoder.norm.", *(f"encoder.blocks.{k}." for k in range(depth - blocks, depth))),
        }
        for name, param in self.named_parameters():
            param.requires_grad_(name.startswith(trained[tuning]))
        self.tuning = tuning
        self.train(self.training)
        return [name for name, param in self.named_parameters() if param.requires_grad]

    def train(self, mode: bool = True) -> ViTClassifier:
        """As ``nn.Module.train``; a linear probe's encoder stays in eval mode (no drop path)."""
        super().train(mode)
        if self.tuning == "linear":
            self.encoder.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[B, C, *img_size]`` -> logits ``[B, num_classes]``."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.tuning != "linear"):
            tokens, _ = self.encoder(x)
        features = tokens[:, 0] if self.pool == "cls" else tokens[:, self.patch_start :].mean(dim=1)
        if hasattr(self, "head_norm"):
            features = self.head_norm(features.float()).to(features.dtype)
        return self.head(features)
