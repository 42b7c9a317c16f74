"""A lean reference MAE for the speed benchmarks: the fewest operations that train an MAE of medmae's size,
written from the paper and nothing else, so that ``medmae_over_lean_reference`` says what medmae's own
structure (config, masking strategies, seeds, checks) costs per step.

Patches by one reshape, a linear embedding of the visible patches only, pre-norm blocks with
``scaled_dot_product_attention``, a decoder over every position, and the per-patch normalised MSE on the
hidden patches only. No cls token, no drop path, random masks from ``torch.rand``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from medmae.models.patchify import patchify
from medmae.models.pos_embed import sincos_pos_embed


class Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.fc1, self.fc2 = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, N, D]`` -> ``[B, N, D]``."""
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class LeanMAE(nn.Module):
    """``forward(x)`` with x ``[B, 1, *img_size]`` -> the loss, at mask ratio 0.75; sizes as the registry's
    ``encoder`` (width, depth, num_heads) and ``decoder`` (decoder_width, decoder_depth, decoder_heads)."""

    def __init__(self, img_size: tuple[int, ...], patch: int, encoder: dict, decoder: dict) -> None:
        super().__init__()
        self.patch = (patch,) * len(img_size)
        grid = tuple(s // patch for s in img_size)
        self.keep = int(math.prod(grid) * 0.25)
        width, heads = encoder["width"], encoder["num_heads"]
        self.embed = nn.Linear(patch ** len(img_size), width)
        self.register_buffer("pos", sincos_pos_embed(width, grid)[0])
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(encoder["depth"]))
        self.norm = nn.LayerNorm(width)
        dec = decoder["decoder_width"]
        self.to_decoder = nn.Linear(width, dec)
        self.mask_token = nn.Parameter(torch.zeros(dec))
        self.register_buffer("dec_pos", sincos_pos_embed(dec, grid)[0])
        self.dec_blocks = nn.ModuleList(Block(dec, decoder["decoder_heads"]) for _ in range(decoder["decoder_depth"]))
        self.dec_norm = nn.LayerNorm(dec)
        self.pred = nn.Linear(dec, patch ** len(img_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = patchify(x, self.patch)  # [B, N, L]
        b, n, _ = patches.shape
        order = torch.rand(b, n, device=x.device).argsort(dim=1)
        visible, hidden = order[:, : self.keep], order[:, self.keep :]
        take = lambda t, ids: t.gather(1, ids[..., None].expand(-1, -1, t.shape[-1]))
        tokens = self.embed(take(patches, visible)) + self.pos[visible]
        for block in self.blocks:
            tokens = block(tokens)
        tokens = self.to_decoder(self.norm(tokens))
        full = (
            self.mask_token.to(tokens.dtype).expand(b, n, -1).scatter(1, visible[..., None].expand_as(tokens), tokens)
        )
        full = full + self.dec_pos
        for block in self.dec_blocks:
            full = block(full)
        pred = self.pred(self.dec_norm(take(full, hidden))).float()
        target = take(patches, hidden).float()
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True, unbiased=False) + 1e-6).sqrt()
        return F.mse_loss(pred, target)
