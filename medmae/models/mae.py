"""Masked autoencoder for 2D images and 3D volumes (He et al., CVPR 2022; Zhou et al., ISBI 2023)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medmae.models.encoder import TransformerBlock, ViTEncoder, init_transformer_weights
from medmae.models.masking import ENCODER_MODES, gather_tokens, masking_noise, masking_order, visible_count
from medmae.models.patchify import patchify
from medmae.models.pos_embed import sincos_pos_embed
from medmae.models.reconstruction import PatchReconstruction


class MaskedAutoencoder(PatchReconstruction, nn.Module):
    """ViT encoder over the visible patches plus a light transformer decoder that rebuilds the hidden ones.

    Args:
        spatial_dims: 2 or 3.
        img_size: input size (an int or one per axis).
        decoder_width, decoder_depth, decoder_heads: decoder size (MAE: 512 x 8 in 2D; 384 x 8 in 3D here).
        mask_ratio: fraction of patches hidden per sample.
        norm_pix_loss: target is each patch normalised to zero mean and unit variance (default on); off:
            the raw pixels.
        mask_strategy: ``random`` (default), ``block`` or ``grid`` (see :mod:`medmae.models.masking`).
        encoder_mode: ``skip`` (default: the encoder sees the visible patches only) or ``mask_tokens`` (the
            encoder sees every position, hidden ones as a learned mask token plus their position
            embedding, and the decoder adds no mask tokens: the efficiency ablation of the MAE paper).
        encoder: the encoder's geometry, size and options, as :class:`ViTEncoder` takes them
            (``patch_size``, ``in_channels``, ``width``, ``depth``, ``num_heads``, ``mlp_dim``, ``qkv_bias``,
            ``cls_token``, ``drop_path_rate``, ``norm_eps``; ViT-B/16 on one channel by default).
    """

    def __init__(
        self,
        spatial_dims: int,
        img_size: int | Sequence[int],
        *,
        decoder_width: int = 384,
        decoder_depth: int = 8,
        decoder_heads: int = 12,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = True,
        mask_strategy: str = "random",
        encoder_mode: str = "skip",
        **encoder: Any,
    ) -> None:
        super().__init__()
        if encoder_mode not in ENCODER_MODES:
            raise ValueError(f"encoder_mode={encoder_mode!r}: choose one of {', '.join(ENCODER_MODES)}")
        self.encoder = ViTEncoder(spatial_dims, img_size, **encoder)
        width = self.encoder.config["width"]
        self.keep = visible_count(mask_strategy, self.encoder.grid, mask_ratio)
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.mask_strategy = mask_strategy
        self.encoder_mode = encoder_mode
        self.config = dict(
            self.encoder.config,
            decoder_width=decoder_width,
            decoder_depth=decoder_depth,
            decoder_heads=decoder_heads,
            mask_ratio=mask_ratio,
            norm_pix_loss=norm_pix_loss,
            mask_strategy=mask_strategy,
            encoder_mode=encoder_mode,
        )
        if encoder_mode == "mask_tokens":
            self.encoder_mask_token = nn.Parameter(torch.zeros(1, 1, width))
            nn.init.normal_(self.encoder_mask_token, std=0.02)
        patch_voxels = math.prod(self.patch_size)
        self.decoder_embed = nn.Linear(width, decoder_width)
        if encoder_mode == "skip":  # the decoder's hidden-patch token; none in mask_tokens mode, where DDP
            self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_width))  # would wait for its gradient
        self.decoder_pos_embed = nn.Parameter(sincos_pos_embed(decoder_width, self.encoder.grid), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            TransformerBlock(decoder_width, decoder_heads, 4 * decoder_width, self.encoder.config["qkv_bias"])
            for _ in range(decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(decoder_width)
        self.decoder_pred = nn.Linear(decoder_width, patch_voxels * self.encoder.config["in_channels"])
        for module in (self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred):
            init_transformer_weights(module)
        if encoder_mode == "skip":
            nn.init.normal_(self.mask_token, std=0.02)

    @property
    def patch_size(self) -> tuple[int, ...]:
        return self.encoder.patch_embedding.patch_size

    @property
    def img_size(self) -> tuple[int, ...]:
        return self.encoder.patch_embedding.img_size

    def forward_encoder(
        self,
        x: torch.Tensor,
        mask_ratio: float | None = None,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embed, hide, encode the visible patches only.

        Args:
            x: ``[B, C, *img_size]``.
            mask_ratio: overrides the model's ratio and strategy with random masking at this ratio (0
                encodes every patch).
            generator: for reproducible masks.
            noise: ``[B, N]`` noise that decides the masks (see :func:`random_masking` and
                :func:`masking_noise`).

        Returns:
            latent ``[B, K (+1 with cls token), D]`` (``mask_tokens`` mode: ``[B, N (+1), D]`` in token
            order), mask ``[B, N]`` (1 = hidden), ids_restore ``[B, N]``.
        """
        self._check_size(x)
        return self._encode(patchify(x, self.patch_size), mask_ratio, generator, noise)[:3]

    def kept_count(self, mask_ratio: float | None = None) -> int:
        """Visible patches per sample: the model's own (strategy and ratio), or random masking's at ``mask_ratio``."""
        return self.keep if mask_ratio is None else visible_count("random", self.encoder.grid, mask_ratio)

    def _encode(
        self,
        patches: torch.Tensor,
        mask_ratio: float | None,
        generator: torch.Generator | None,
        noise: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`forward_encoder` from patches ``[B, N, prod(p) * C]``, plus ids_shuffle ``[B, N]`` (visible
        tokens first). In ``skip`` mode only the visible patches are embedded."""
        b, n, _ = patches.shape
        keep = self.kept_count(mask_ratio)
        if noise is None and mask_ratio is None and self.mask_strategy != "random":
            seeds = torch.randint(0, 2**31, (b,), generator=generator, device=patches.device)
            noise = masking_noise(self.mask_strategy, seeds, self.encoder.grid, self.mask_ratio)
        if noise is None:
            noise = torch.rand(b, n, generator=generator, device=patches.device)
        elif noise.shape != (b, n):
            raise ValueError(f"noise of shape {tuple(noise.shape)} for {n} patches per sample")
        ids_shuffle, ids_restore, mask = masking_order(noise, keep)
        embedding = self.encoder.patch_embedding
        if self.encoder_mode == "mask_tokens":
            tokens = embedding.embed(patches)
            hidden = self.encoder_mask_token.to(tokens.dtype) + embedding.position_embeddings.to(tokens.dtype)
            kept = torch.where(mask.unsqueeze(-1).bool(), hidden, tokens)
        else:
            kept = embedding.embed(patches, ids_shuffle[:, :keep])
        latent, _ = self.encoder.forward_tokens(kept)
        return latent, mask, ids_restore, ids_shuffle

    def forward_decoder(
        self, latent: torch.Tensor, ids_restore: torch.Tensor, only: torch.Tensor | None = None
    ) -> torch.Tensor:
        """latent ``[B, K (+1), D]``, ids_restore ``[B, N]`` -> per-patch predictions ``[B, N, prod(p) * C]``
        (``mask_tokens`` mode: latent ``[B, N (+1), D]`` already in token order, no mask tokens added); with
        ``only`` ``[B, M]`` the predictions of those patches alone, ``[B, M, prod(p) * C]``."""
        x = self.decoder_embed(latent)
        has_cls = hasattr(self.encoder, "cls_token")
        cls, full = (x[:, :1], x[:, 1:]) if has_cls else (x[:, :0], x)
        if self.encoder_mode == "skip":
            b, n = ids_restore.shape
            hidden = self.mask_token.to(x.dtype).expand(b, n - full.shape[1], -1)
            full = torch.gather(
                torch.cat([full, hidden], dim=1), 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1])
            )
        x = torch.cat([cls, full + self.decoder_pos_embed.to(x.dtype)], dim=1)
        for block in self.decoder_blocks:
            x = block(x)
        x = x[:, cls.shape[1] :]
        return self.decoder_pred(self.decoder_norm(x if only is None else gather_tokens(x, only)))

    def forward(
        self,
        x: torch.Tensor,
        *,
        seeds: torch.Tensor | None = None,
        mask_ratio: float | None = None,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        loss_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """x ``[B, C, *img_size]`` -> (loss scalar, pred ``[B, N, prod(p) * C]``, mask ``[B, N]``, 1 = hidden).

        The masks are drawn at random, or decided by ``noise`` ``[B, N]``, or by ``seeds`` ``[B]`` (ints):
        each sample's mask of this model's strategy and ratio is then a function of its seed alone
        (:func:`masking_noise`). The input is cut into patches once, for both the encoder and the target.
        With ``loss_only`` (training) pred is None, and the prediction, target and loss span the hidden
        patches only: the same loss, without the visible patches' share of that work."""
        self._check_size(x)
        if seeds is not None:
            noise = masking_noise(self.mask_strategy, seeds.to(x.device), self.encoder.grid, self.mask_ratio)
        patches = patchify(x, self.patch_size)
        latent, mask, ids_restore, ids_shuffle = self._encode(patches, mask_ratio, generator, noise)
        if not loss_only:
            pred = self.forward_decoder(latent, ids_restore)
            return self._loss(patches, pred, mask), pred, mask
        hidden = ids_shuffle[:, self.kept_count(mask_ratio) :]
        pred = self.forward_decoder(latent, ids_restore, only=hidden)
        return self.hidden_patch_loss(gather_tokens(patches, hidden), pred), None, mask

    def hidden_patch_loss(self, hidden: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """hidden patches ``[B, M, L]`` and their predictions ``[B, M, L]`` -> the mean squared error over
        them, float32: :meth:`_loss` with the visible patches left out (0 when ``M`` is 0)."""
        if hidden.shape[1] == 0:
            return pred.float().sum() * 0.0
        target, _, _ = self._target(hidden)
        return F.mse_loss(pred.float(), target)
