"""ViT classifier for multi-label classification (ChestX-ray14): raw logits, no bounded activation."""

from __future__ import annotations

import torch
from torch import nn

from medmae.models.encoder import ViTEncoder

POOLING = ("avg", "cls")


class ViTClassifier(nn.Module):
    """Encoder, pooled token, linear head.

    Args:
        encoder: a ViTEncoder (2D or 3D).
        num_classes: outputs, one logit per finding.
        pool: ``"avg"`` (mean of the patch tokens, default) or ``"cls"`` (needs an encoder with a cls token).

    Forward: ``[B, C, *img_size]`` -> logits ``[B, num_classes]`` (use ``BCEWithLogitsLoss``; no sigmoid
    or tanh inside).
    """

    def __init__(self, encoder: ViTEncoder, num_classes: int, pool: str = "avg") -> None:
        super().__init__()
        if pool not in POOLING:
            raise ValueError(f"pool={pool!r}: choose one of {POOLING}")
        has_cls = encoder.config["cls_token"]
        if pool == "cls" and not has_cls:
            raise ValueError("pool='cls' needs an encoder built with cls_token=True")
        self.encoder, self.pool, self.patch_start = encoder, pool, int(has_cls)
        self.head = nn.Linear(encoder.config["width"], num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        self.config = dict(encoder.config, num_classes=num_classes, pool=pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[B, C, *img_size]`` -> logits ``[B, num_classes]``."""
        tokens, _ = self.encoder(x)
        features = tokens[:, 0] if self.pool == "cls" else tokens[:, self.patch_start:].mean(dim=1)
        return self.head(features)
