"""A light segmentation decoder for a ViT of any power-of-two patch size, in the spirit of Primus.

Primus (Wald et al., 2025, nnU-Net's ``primus.md``) segments with a transformer alone: the last token map
is brought back to full resolution by a few transposed convolutions, with no skip from the input, so the
encoder must carry the segmentation. This decoder does the same: one stage per factor 2 of the patch
size, each a transposed convolution (kernel = stride = the stage's per-axis factor), then a LayerNorm
over channels and GELU; the last stage ends in ``out_channels`` with no norm. Channels fall
geometrically from the encoder width to ``2 * out_channels`` (rounded to multiples of 8, at least 8).

Where it differs from Primus: the encoder is medmae's plain pre-norm ViT with a fixed sin-cos position
embedding (Primus: EVA blocks with rotary embeddings, SwiGLU MLPs, layer scale and register tokens); an
axis with a smaller patch skips the finest stages (Primus skips the coarsest); nothing else.
"""

from __future__ import annotations

import torch
from torch import nn

from medmae.models.encoder import ViTEncoder
from medmae.models.patchify import upsampling_stages

CHANNEL_MULTIPLE = 8


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of a ``[B, C, *S]`` map, at every position."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[B, C, *S]`` -> same shape."""
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


def decoder_channels(width: int, out_channels: int, stages: int) -> list[int]:
    """``[width, c_1, ..., c_{s-1}, out_channels]``: geometric from ``width`` towards ``2 * out_channels``."""
    step = (width / (2 * out_channels)) ** (1 / stages)
    inner = [
        max(CHANNEL_MULTIPLE, round(width / step**k / CHANNEL_MULTIPLE) * CHANNEL_MULTIPLE) for k in range(1, stages)
    ]
    return [width, *inner, out_channels]


class LightDecoderViT(nn.Module):
    """A :class:`ViTEncoder` and the light decoder.

    Args:
        encoder: a ViTEncoder without cls token; every axis of its patch size a power of two.
        out_channels: segmentation classes (including background).

    Keys: ``vit.*`` (as in UNETR, so the same transfer serves both), ``decoder.N.*``.

    Forward: ``[B, C, *img_size]`` -> logits ``[B, out_channels, *img_size]``.
    """

    def __init__(self, encoder: ViTEncoder, out_channels: int) -> None:
        super().__init__()
        cfg = encoder.config
        if cfg["cls_token"]:
            raise ValueError("encoder does not fit the light decoder: it needs no cls token")
        factors = upsampling_stages(cfg["patch_size"])
        channels = decoder_channels(cfg["width"], out_channels, len(factors))
        transposed = nn.ConvTranspose3d if cfg["spatial_dims"] == 3 else nn.ConvTranspose2d
        stages = []
        for i, factor in enumerate(factors):
            up = transposed(channels[i], channels[i + 1], kernel_size=factor, stride=factor)
            last = i == len(factors) - 1
            stages.append(up if last else nn.Sequential(up, ChannelNorm(channels[i + 1]), nn.GELU()))
        self.vit = encoder
        self.decoder = nn.Sequential(*stages)
        self.config = dict(cfg, out_channels=out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[B, C, *img_size]`` -> logits ``[B, out_channels, *img_size]``."""
        tokens, _ = self.vit(x)
        grid = self.vit.grid
        return self.decoder(tokens.transpose(1, 2).reshape(tokens.shape[0], -1, *grid))
