"""A ViT encoder for 2D and 3D whose parameter names equal MONAI's ``ViT``.

State-dict keys are ``patch_embedding.patch_embeddings.*``, ``patch_embedding.position_embeddings``,
``blocks.N.{norm1, attn.qkv, attn.out_proj, norm2, mlp.linear1, mlp.linear2}.*``, ``norm.*`` (and
``cls_token`` when enabled), so moving weights into MONAI's UNETR is a prefix change. Unlike MONAI's
blocks, attention runs through ``scaled_dot_product_attention``, the blocks carry drop path, and the
model trains under bf16 autocast.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from medmae.models.patchify import as_tuple, grid_size, patchify
from medmae.models.pos_embed import sincos_pos_embed


class DropPath(nn.Module):
    """Stochastic depth: drops a whole residual branch per sample while training, scaling survivors."""

    def __init__(self, rate: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"drop path rate {rate!r} must lie in [0, 1)")
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[B, ...]`` -> same shape."""
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(keep) / keep


class SelfAttention(nn.Module):
    """Multi-head self-attention with a combined ``qkv`` projection (MONAI's ``SABlock`` layout)."""

    def __init__(self, width: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if width % num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(width, 3 * width, bias=qkv_bias)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[B, N, D]`` -> ``[B, N, D]``."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # [B, heads, N, D / heads]
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class MLP(nn.Module):
    """Two linear layers with an exact GELU between them (MONAI's ``MLPBlock`` names)."""

    def __init__(self, width: int, mlp_dim: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(width, mlp_dim)
        self.linear2 = nn.Linear(mlp_dim, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[B, N, D]`` -> ``[B, N, D]``."""
        return self.linear2(F.gelu(self.linear1(x)))


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``, with drop path.

    With ``checkpointed`` set (see :func:`set_activation_checkpointing`) a training forward keeps only the
    block's input and recomputes the rest in the backward pass (same RNG, so drop path repeats itself).
    """

    checkpointed = False

    def __init__(
        self,
        width: int,
        num_heads: int,
        mlp_dim: int,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=norm_eps)
        self.attn = SelfAttention(width, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(width, eps=norm_eps)
        self.mlp = MLP(width, mlp_dim)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[B, N, D]`` -> ``[B, N, D]``."""
        if self.checkpointed and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attention(x))
        return x + self.drop_path(self.feed_forward(x))

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The attention branch, ``attn(norm1(x))``: ``[B, N, D]`` -> ``[B, N, D]`` (a compiled region)."""
        return self.attn(self.norm1(x))

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The MLP branch, ``mlp(norm2(x))``: ``[B, N, D]`` -> ``[B, N, D]`` (a compiled region)."""
        return self.mlp(self.norm2(x))


def set_activation_checkpointing(model: nn.Module, enabled: bool) -> int:
    """Turn activation checkpointing of every transformer block in ``model`` on or off; returns how many."""
    blocks = [m for m in model.modules() if isinstance(m, TransformerBlock)]
    for block in blocks:
        block.checkpointed = enabled
    return len(blocks)


class PatchEmbedding(nn.Module):
    """Patch embedding plus a sin-cos position embedding (frozen unless trainable).

    The projection is stored as MONAI's strided convolution (``patch_embeddings``, for weight
    compatibility) but applied as one matrix product over :func:`patchify`'s patches, which is the same
    map and faster than a convolution whose kernel equals its stride, on CPU and GPU alike. The MAE also
    reuses those patches for its target.
    """

    def __init__(
        self,
        spatial_dims: int,
        img_size: Sequence[int],
        patch_size: Sequence[int],
        in_channels: int,
        width: int,
        trainable_pos_embed: bool = False,
    ) -> None:
        super().__init__()
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        self.img_size, self.patch_size = tuple(img_size), tuple(patch_size)
        self.grid = grid_size(self.img_size, self.patch_size)
        self.patch_embeddings = conv(in_channels, width, kernel_size=self.patch_size, stride=self.patch_size)
        self.position_embeddings = nn.Parameter(sincos_pos_embed(width, self.grid), requires_grad=trainable_pos_embed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[B, C, *img_size]`` -> tokens ``[B, N, D]`` with position embedding added."""
        if tuple(x.shape[2:]) != self.img_size:
            raise ValueError(
                f"input of spatial size {tuple(x.shape[2:])} given to an encoder built for {self.img_size}"
            )
        return self.embed(patchify(x, self.patch_size))

    def embed(self, patches: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """patches ``[B, N, prod(p) * C]`` (:func:`patchify` order) -> tokens ``[B, N, D]`` with position
        embedding; with ``ids`` ``[B, K]`` only those patches are embedded -> ``[B, K, D]`` (the MAE's visible
        patches: the hidden ones cost no projection, forward or backward)."""
        weight = self.patch_embeddings.weight  # [D, C, *p] -> [D, (*p, C)], patchify's order inside a patch
        weight = weight.movedim(1, -1).reshape(weight.shape[0], -1)
        if ids is None:
            return F.linear(patches, weight, self.patch_embeddings.bias) + self.position_embeddings
        picked = torch.gather(patches, 1, ids.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
        return F.linear(picked, weight, self.patch_embeddings.bias) + self.position_embeddings[0][ids]


class ViTEncoder(nn.Module):
    """ViT encoder for ``spatial_dims`` 2 or 3, drop-in for the ``vit`` of MONAI's UNETR.

    Args:
        spatial_dims: 2 or 3.
        img_size: image size, an int or one per axis (multiples of ``patch_size``).
        patch_size: patch size, an int or one per axis.
        in_channels: image channels.
        width, depth, num_heads, mlp_dim: transformer size (ViT-B: 768, 12, 12, 3072).
        qkv_bias: bias on the q/k/v projection.
        cls_token: prepend a learned class token (off by default: UNETR has none).
        drop_path_rate: stochastic depth, rising linearly from 0 to this rate over the blocks.
        trainable_pos_embed: let the sin-cos position embedding learn (fine-tuning); frozen otherwise.
        norm_eps: the LayerNorms' epsilon (1e-5 as MONAI's ViT; 1e-6 for encoders imported from timm or
            torchvision).
    """

    def __init__(
        self,
        spatial_dims: int,
        img_size: int | Sequence[int],
        patch_size: int | Sequence[int] = 16,
        in_channels: int = 1,
        width: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_dim: int = 3072,
        qkv_bias: bool = True,
        cls_token: bool = False,
        drop_path_rate: float = 0.0,
        trainable_pos_embed: bool = False,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims={spatial_dims!r} must be 2 or 3")
        img_size = as_tuple(img_size, spatial_dims, "img_size")
        patch_size = as_tuple(patch_size, spatial_dims, "patch_size")
        self.config = {
            "spatial_dims": spatial_dims,
            "img_size": list(img_size),
            "patch_size": list(patch_size),
            "in_channels": in_channels,
            "width": width,
            "depth": depth,
            "num_heads": num_heads,
            "mlp_dim": mlp_dim,
            "qkv_bias": qkv_bias,
            "cls_token": cls_token,
            "norm_eps": norm_eps,
        }
        self.patch_embedding = PatchEmbedding(
            spatial_dims, img_size, patch_size, in_channels, width, trainable_pos_embed
        )
        if cls_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(TransformerBlock(width, num_heads, mlp_dim, qkv_bias, r, norm_eps) for r in rates)
        self.norm = nn.LayerNorm(width, eps=norm_eps)
        init_transformer_weights(self)

    @property
    def grid(self) -> tuple[int, ...]:
        return self.patch_embedding.grid

    def forward_tokens(self, tokens: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run embedded (possibly masked) tokens through the blocks.

        Args:
            tokens: ``[B, K, D]`` patch tokens with position embedding, ``K <= N``.

        Returns:
            ``norm(x)``: ``[B, K (+1 with cls token), D]`` and the list of each block's output (before the
            final norm), as MONAI's ``ViT`` returns them.
        """
        if hasattr(self, "cls_token"):
            tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens], dim=1)
        hidden_states = []
        for block in self.blocks:
            tokens = block(tokens)
            hidden_states.append(tokens)
        return self.norm(tokens), hidden_states

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x: ``[B, C, *img_size]`` -> (``[B, N (+1), D]``, per-block outputs), like MONAI's ``ViT``."""
        return self.forward_tokens(self.patch_embedding(x))


def init_transformer_weights(module: nn.Module) -> None:
    """Xavier-uniform linear and patch-projection weights, zero biases, unit LayerNorms, N(0, 0.02) tokens."""
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Linear):
            nn.init.xavier_uniform_(sub.weight)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, (nn.Conv2d, nn.Conv3d)) and name.endswith("patch_embeddings"):
            nn.init.xavier_uniform_(sub.weight.view(sub.weight.shape[0], -1))
            nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.LayerNorm):
            nn.init.ones_(sub.weight)
            nn.init.zeros_(sub.bias)
    for name, param in module.named_parameters():
        if name.endswith(("cls_token", "mask_token")):
            nn.init.normal_(param, std=0.02)
