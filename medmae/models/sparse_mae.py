"""Masked pretraining of a convolutional U-Net encoder (MONAI's residual DynUNet), after SparK (Tian et al.,
ICLR 2023) and nnssl's S3D: sparse convolution emulated by masking, and a light hierarchical decoder.

The image is cut into cells of the encoder's total stride (16 per axis); a random (or block, or grid)
subset of cells is hidden, the input is zeroed there, and the encoder runs densely with every
convolution and normalisation output multiplied by the visible mask at its resolution, so hidden
positions stay exactly zero and never leak into visible features: the encoder computes what a sparse
convolution would. The decoder fills each scale's hidden positions with a learned mask token, projects
every scale to the decoder width, and rebuilds the image coarse to fine, as a U-Net decoder does; the
loss is the MAE loss on the hidden cells (:class:`PatchReconstruction`).

Where this departs from SparK, and why:

- Masked instance norm instead of sparse batch norm: the encoder is nnU-Net's, whose instance norms
  fine-tune best with the statistics they were pretrained with; each sample's per-channel mean and
  (biased) variance are taken over its visible positions only, so hidden zeros do not bias them.
- No norm in the densify step (SparK: a sparse BatchNorm before filling in mask tokens): every encoder
  stage already ends in a masked instance norm, a residual sum and LeakyReLU, so its visible features
  are on a normalised scale; a batch norm would tie samples together, which 3D batches of 2 cannot afford.
- One mask token per scale, with the encoder's width at that scale (as SparK), filled in before the
  projection; the projection is 1x1 at the coarsest scale and 3x3 elsewhere (as SparK).
- Masking unit = the total stride, 16 per axis for DynUNet's five stages (SparK: 32, ResNet's
  down-sampling), so the coarsest feature map has exactly one position per cell; 16 is also the patch
  size of medmae's ViT MAEs, so the two share masks, losses and figures.
- The encoder has a stage at full resolution (DynUNet's input block) and the decoder ends there (SparK's
  finest features are at stride 4 and its decoder up-samples on without skips); decoder blocks are MONAI
  ``UnetResBlock`` with instance norm (SparK: two conv-BN-ReLU6), up-sampling is a transposed
  convolution with kernel = stride (SparK: kernel 4, stride 2); decoder widths default to the encoder's
  filters per scale (SparK halves one width per scale).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks.dynunet_block import UnetResBlock
from torch import nn

from medmae.models.dynunet import (
    DYNUNET_FILTERS,
    DYNUNET_STRIDES,
    KERNEL_SIZE,
    ResidualUNet,
    check_size,
    conv_encoder,
    stage_strides,
    total_stride,
)
from medmae.models.masking import masking_noise, visible_count
from medmae.models.patchify import as_tuple, grid_size, patchify
from medmae.models.reconstruction import PatchReconstruction

INSTANCE_NORMS = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
NORM = ("INSTANCE", {"affine": True})
MASK_TOKEN_STD = 0.02


def hidden_mask(noise: torch.Tensor, keep: int) -> torch.Tensor:
    """noise ``[B, N]`` -> ``[B, N]`` float32, 1 = hidden: each sample's ``keep`` lowest values stay visible
    (the mask :func:`medmae.models.masking.random_masking` gives for the same noise)."""
    ranks = noise.argsort(dim=1).argsort(dim=1)
    return (ranks >= keep).float()


def masked_instance_norm(norm: nn.Module, x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """``norm`` (an InstanceNorm) with statistics over the visible positions only, hidden ones set to 0.

    Args:
        norm: the InstanceNorm whose ``eps`` and (when ``affine``) weight and bias are used.
        x: ``[B, C, *S]``; visible: ``[B, 1, *S]``, 1 = visible (at least one position per sample).

    Returns:
        ``[B, C, *S]`` at least float32: ``(x - mean) / sqrt(var + eps) * weight + bias`` at visible positions,
        ``mean`` and biased ``var`` per sample and channel over the visible positions; 0 at hidden ones.
    """
    if not isinstance(norm, INSTANCE_NORMS) or norm.track_running_stats:
        raise TypeError(f"masked pretraining needs instance norms without running statistics, not {norm!r}")
    dims = tuple(range(2, x.ndim))
    with torch.autocast(x.device.type, enabled=False):
        x = x.to(torch.promote_types(x.dtype, torch.float32))
        visible = visible.to(x.dtype)
        count = visible.sum(dim=dims, keepdim=True).clamp(min=1)
        mean = (x * visible).sum(dim=dims, keepdim=True) / count
        centred = (x - mean) * visible
        var = centred.square().sum(dim=dims, keepdim=True) / count
        out = centred * torch.rsqrt(var + norm.eps)
        if norm.affine:
            shape = (1, -1) + (1,) * len(dims)
            out = out * norm.weight.to(x.dtype).view(shape) + norm.bias.to(x.dtype).view(shape)
        return out * visible


def sparse_res_block(block: UnetResBlock, x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """MONAI's ``UnetResBlock`` as a sparse convolution block: every convolution and norm output is
    multiplied by ``visible`` and the norms are :func:`masked_instance_norm`.

    Args:
        x: ``[B, C_in, *S_in]``, zero at hidden positions; visible: ``[B, 1, *S_out]`` at the block's output
            resolution, 1 = visible.

    Returns:
        ``[B, C_out, *S_out]``, zero at hidden positions.
    """
    out = masked_instance_norm(block.norm1, block.conv1(x) * visible, visible)
    out = block.conv2(block.lrelu(out)) * visible
    out = masked_instance_norm(block.norm2, out, visible)
    residual = x
    if hasattr(block, "conv3"):
        residual = block.conv3(residual) * visible
    if hasattr(block, "norm3"):
        residual = masked_instance_norm(block.norm3, residual, visible)
    return block.lrelu(out + residual)


class SparseMasking(PatchReconstruction):
    """Masking geometry, masks, visible maps and the forward pass that every sparse convolutional MAE
    shares. A subclass calls :meth:`_init_masking` and provides ``forward_encoder(x, mask)`` and
    ``forward_decoder(features, mask)``."""

    grid: tuple[int, ...]
    keep: int
    mask_ratio: float
    mask_strategy: str
    stage_sizes: list[tuple[int, ...]]

    def _init_masking(
        self,
        spatial_dims: int,
        img_size: int | Sequence[int],
        strides: Sequence[int | Sequence[int]],
        mask_ratio: float,
        norm_pix_loss: bool,
        mask_strategy: str,
    ) -> list[tuple[int, ...]]:
        """Set the masking geometry of an encoder with stage ``strides`` (the first 1) for inputs of
        ``img_size``: the cell (total stride), the grid, the visible count and each stage's size. Returns each
        stage's stride per axis; ValueError for a size or stride the encoder cannot take."""
        self.img_size = as_tuple(img_size, spatial_dims, "img_size")
        check_size(self.img_size, strides, "img_size")
        steps = stage_strides(strides, spatial_dims)
        if any(s != 1 for s in steps[0]):
            raise ValueError(f"strides={list(strides)}: the first stage's stride must be 1 (full resolution)")
        self.patch_size = total_stride(strides, spatial_dims)
        self.grid = grid_size(self.img_size, self.patch_size)
        self.keep = visible_count(mask_strategy, self.grid, mask_ratio)
        self.mask_ratio, self.norm_pix_loss, self.mask_strategy = mask_ratio, norm_pix_loss, mask_strategy
        self.stage_sizes = [
            tuple(s // math.prod(axis) for s, axis in zip(self.img_size, zip(*steps[: i + 1])))
            for i in range(len(steps))
        ]
        return steps

    def visible_maps(self, mask: torch.Tensor) -> list[torch.Tensor]:
        """mask ``[B, N]`` (1 = hidden) -> per encoder stage ``[B, 1, *S_i]``, 1 = visible, float32 (the
        grid mask repeated by nearest up-sampling to each stage's size)."""
        visible = (1 - mask.float()).reshape(mask.shape[0], 1, *self.grid)
        return [F.interpolate(visible, size=size, mode="nearest") for size in self.stage_sizes]

    def draw_mask(
        self,
        batch: int,
        device: torch.device,
        mask_ratio: float | None = None,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The masks of a batch, ``[B, N]`` float32 with 1 = hidden, decided as
        :meth:`medmae.models.mae.MaskedAutoencoder.forward` decides them: by ``noise`` ``[B, N]`` (its
        ``keep`` lowest values visible), else at random (``generator``); ``mask_ratio`` gives random
        masking at that ratio instead of this model's strategy and ratio."""
        n = math.prod(self.grid)
        keep = self.keep if mask_ratio is None else visible_count("random", self.grid, mask_ratio)
        if noise is None and mask_ratio is None and self.mask_strategy != "random":
            seeds = torch.randint(0, 2**31, (batch,), generator=generator, device=device)
            noise = masking_noise(self.mask_strategy, seeds, self.grid, self.mask_ratio)
        if noise is None:
            noise = torch.rand(batch, n, generator=generator, device=device)
        elif tuple(noise.shape) != (batch, n):
            raise ValueError(f"noise of shape {tuple(noise.shape)} for a batch of {batch} on {n} cells")
        return hidden_mask(noise, keep)

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
        """x ``[B, C, *img_size]`` -> (loss scalar, pred ``[B, N, prod(p) * C]``, mask ``[B, N]``, 1 = hidden);
        pred is None with ``loss_only``, as for the ViT MAE (the dense decoder predicts every patch anyway).

        The masks are drawn at random (with ``generator``), or decided by ``noise`` ``[B, N]``, or by
        ``seeds`` ``[B]`` (ints: each sample's mask of this model's strategy and ratio is a function of its
        seed alone, :func:`masking_noise`); ``mask_ratio`` overrides the model's ratio and strategy with
        random masking at that ratio."""
        self._check_size(x)
        if seeds is not None:
            noise = masking_noise(self.mask_strategy, seeds.to(x.device), self.grid, self.mask_ratio)
        mask = self.draw_mask(x.shape[0], x.device, mask_ratio, generator, noise)
        pred = self.forward_decoder(self.forward_encoder(x, mask), mask)
        return self._loss(patchify(x, self.patch_size), pred, mask), None if loss_only else pred, mask


class SparseConvMAE(SparseMasking, nn.Module):
    """DynUNet's residual encoder, run sparsely on the visible cells, and a light U-Net decoder that
    rebuilds the hidden ones (see the module docstring).

    Args:
        spatial_dims: 2 or 3.
        img_size: input size (an int or one per axis), a multiple of the total stride (16) on each axis.
        in_channels: image channels.
        filters, strides: the encoder's stages, as :class:`ResidualUNet` takes them (input block first;
            its stride must be 1).
        mask_ratio: fraction of cells hidden per sample.
        norm_pix_loss: target is each patch normalised to zero mean and unit variance (default on).
        mask_strategy: ``random`` (default), ``block`` or ``grid`` (see :mod:`medmae.models.masking`).
        decoder_width: the decoder's width per scale (fine to coarse), one width for every scale, or None:
            the encoder's filters.

    Keys: ``encoder.input_block.*``, ``encoder.downsamples.N.*``, ``encoder.bottleneck.*`` (a DynUNet's
    encoder keys with the prefix ``encoder.``); ``mask_tokens.i``, ``densify.i.*``, ``upsample.i.*``,
    ``decoder_blocks.i.*`` (``i`` = scale, 0 the finest) and ``head.*``.

    The coarsest stage has one position per cell, so its instance norms see the visible cells alone:
    leave at least two visible (``N - hidden >= 2``) or the bottleneck's norms output their bias only.
    """

    def __init__(
        self,
        spatial_dims: int,
        img_size: int | Sequence[int],
        *,
        in_channels: int = 1,
        filters: Sequence[int] = DYNUNET_FILTERS["base"],
        strides: Sequence[int | Sequence[int]] = DYNUNET_STRIDES,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = True,
        mask_strategy: str = "random",
        decoder_width: int | Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        steps = self._init_masking(spatial_dims, img_size, strides, mask_ratio, norm_pix_loss, mask_strategy)
        self.encoder = conv_encoder(ResidualUNet(spatial_dims, in_channels, 1, filters, strides))
        widths = decoder_widths(decoder_width, filters)
        self._build_decoder(spatial_dims, in_channels, list(filters), widths, steps)
        self.config = {
            "spatial_dims": spatial_dims,
            "img_size": list(self.img_size),
            "patch_size": list(self.patch_size),
            "in_channels": in_channels,
            "filters": list(filters),
            "strides": [s if isinstance(s, int) else list(s) for s in strides],
            "kernel_size": KERNEL_SIZE,
            "mask_ratio": mask_ratio,
            "norm_pix_loss": norm_pix_loss,
            "mask_strategy": mask_strategy,
            "decoder_width": decoder_width if decoder_width is None or isinstance(decoder_width, int) else widths,
        }

    def _build_decoder(
        self, dims: int, in_channels: int, filters: list[int], widths: list[int], steps: list[tuple[int, ...]]
    ) -> None:
        """Mask tokens, densify projections, up-sampling and blocks per scale (0 = finest), and the head."""
        conv = nn.Conv3d if dims == 3 else nn.Conv2d
        transposed = nn.ConvTranspose3d if dims == 3 else nn.ConvTranspose2d
        last = len(filters) - 1
        self.mask_tokens = nn.ParameterList(
            nn.Parameter(nn.init.trunc_normal_(torch.zeros(1, c, *(1,) * dims), std=MASK_TOKEN_STD)) for c in filters
        )
        self.densify = nn.ModuleList(
            conv(c, w, kernel_size=1 if i == last else 3, padding=0 if i == last else 1)
            for i, (c, w) in enumerate(zip(filters, widths))
        )
        self.upsample = nn.ModuleList(
            transposed(widths[i + 1], widths[i], kernel_size=steps[i + 1], stride=steps[i + 1], bias=False)
            for i in range(last)
        )
        self.decoder_blocks = nn.ModuleList(
            UnetResBlock(dims, widths[i], widths[i], KERNEL_SIZE, 1, NORM) for i in range(last)
        )
        self.head = conv(widths[0], in_channels, kernel_size=1)
        for part in (self.densify, self.upsample, self.decoder_blocks, self.head):
            part.apply(ResidualUNet.initialize_weights)

    def forward_encoder(self, x: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        """x ``[B, C, *img_size]``, mask ``[B, N]`` (1 = hidden) -> per stage ``[B, filters_i, *S_i]`` (input
        block first, then the down-sampling stages and the bottleneck), each zero at hidden positions."""
        self._check_size(x)
        visible = self.visible_maps(mask)
        blocks = [self.encoder["input_block"], *self.encoder["downsamples"], self.encoder["bottleneck"]]
        features, h = [], x * visible[0].to(x.dtype)
        for block, vis in zip(blocks, visible):
            h = sparse_res_block(block, h, vis)
            features.append(h)
        return features

    def forward_decoder(self, features: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """Per-stage features (as :meth:`forward_encoder` gives them), mask ``[B, N]`` -> predictions
        ``[B, N, prod(patch_size) * C]`` in :func:`patchify` order."""
        hidden = [1 - v for v in self.visible_maps(mask)]
        dense = [proj(f + token * h) for f, token, h, proj in zip(features, self.mask_tokens, hidden, self.densify)]
        y = dense[-1]
        for i in reversed(range(len(self.upsample))):
            y = self.decoder_blocks[i](self.upsample[i](y) + dense[i])
        return patchify(self.head(y), self.patch_size)


def decoder_widths(decoder_width: int | Sequence[int] | None, filters: Sequence[int]) -> list[int]:
    """The decoder's width per scale (fine to coarse): the encoder's filters, one width repeated, or one per
    scale; ValueError for a wrong length or a width below 1."""
    if decoder_width is None:
        widths = list(filters)
    elif isinstance(decoder_width, int):
        widths = [decoder_width] * len(filters)
    else:
        widths = [int(w) for w in decoder_width]
    if len(widths) != len(filters) or any(w < 1 for w in widths):
        raise ValueError(f"decoder_width={decoder_width!r}: one positive width, or one per scale ({len(filters)})")
    return widths
