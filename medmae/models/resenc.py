"""nnU-Net's residual-encoder U-Net (ResEnc) built with ``dynamic-network-architectures``, the package
nnU-Net and nnssl build their networks with, so that its keys are theirs; its sparse masked autoencoder;
and moving a pretrained encoder into the segmentation network.

Presets (:data:`RESENC_PRESETS`): ``l`` and ``m`` are nnU-Net's ResEnc L and M for 3D full resolution
(6 stages, features 32, 64, 128, 256, 320, 320, residual blocks 1, 3, 4, 6, 6, 6, kernel 3, strides 1, 2,
2, 2, 2, 2, one convolution per decoder stage, instance norm, leaky ReLU; the network nnssl's
``ResEncL`` pretrains). nnU-Net's M and L build the same network and differ only in the patch its
planner chooses for an 8 or 24 GB GPU: in medmae that is the task's ROI. ``tiny`` (5 stages, 8 to 64
features, one block per stage) is for CPU tests.

:class:`SparseResEncMAE` masks in cells of the encoder's total stride (32 per axis for L, 16 for tiny)
and runs the encoder as a sparse convolution (every convolution and norm output multiplied by the visible
mask, instance norms over visible positions only; :mod:`medmae.models.sparse_mae`). Where it departs from
nnssl's ResEnc-L MAE (``BaseMAETrainer``), and why:

- nnssl runs the whole U-Net densely on an input zeroed in 16^3 blocks; here the encoder is sparse, so
  hidden positions never reach the visible features and instance-norm statistics (medmae's issue 17),
  and the masking unit is the total stride (a hidden cell is exactly one bottleneck position).
- Each scale's hidden positions are filled with a learned mask token before nnU-Net's decoder (as
  SparK); nnssl's decoder sees the zeros the dense encoder made of them.
- The loss is medmae's MAE loss on the hidden cells with per-cell normalised targets (``norm_pix_loss``,
  as He et al.); nnssl: mean squared error on the masked voxels of the z-scored image.
- The decoder is nnU-Net's own (``UNetDecoder``, output = image channels), as nnssl's, so an exported
  checkpoint carries a pretrained decoder as OpenMind's do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from medmae.errors import UserError
from medmae.models.dynunet import adapt_conv_encoder_state, check_size, stage_strides
from medmae.models.patchify import as_tuple, patchify
from medmae.models.sparse_mae import MASK_TOKEN_STD, SparseMasking, masked_instance_norm
from medmae.models.weights import TransferReport, WeightTransferError, pretrained_geometry

RESENC_L = {"features": (32, 64, 128, 256, 320, 320), "blocks": (1, 3, 4, 6, 6, 6), "strides": (1, 2, 2, 2, 2, 2)}
RESENC_PRESETS = {
    "tiny": {"features": (8, 16, 32, 64, 64), "blocks": (1, 1, 1, 1, 1), "strides": (1, 2, 2, 2, 2)},
    "m": RESENC_L,
    "l": RESENC_L,
}
KERNEL_SIZE = 3
STEM_KEYS = ("stem.convs.0.conv.weight", "stem.convs.0.all_modules.0.weight")  # one tensor, two names
INSTALL_HINT = (
    "the ResEnc family needs dynamic-network-architectures: pip install 'medmae[resenc]' (a GPU install), "
    "or on a CPU-only torch pip install --no-deps 'dynamic-network-architectures>=0.4.4,<0.5'"
)


def build_resenc(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    features: Sequence[int],
    blocks: Sequence[int],
    strides: Sequence[int | Sequence[int]],
) -> nn.Module:
    """dynamic-network-architectures' ``ResidualEncoderUNet`` with nnU-Net's ResEnc settings (kernel 3,
    conv bias, instance norm eps 1e-5 with affine, leaky ReLU, one convolution per decoder stage, no deep
    supervision) and nnU-Net's initialisation; ``UserError`` naming the package when it is missing."""
    try:
        from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
    except ImportError as error:
        raise UserError(INSTALL_HINT) from error
    if not len(features) == len(blocks) == len(strides):
        raise ValueError(
            f"features {list(features)}, blocks {list(blocks)} and strides {list(strides)} differ in length"
        )
    conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
    norm = nn.InstanceNorm3d if spatial_dims == 3 else nn.InstanceNorm2d
    net = ResidualEncoderUNet(
        input_channels=in_channels,
        n_stages=len(features),
        features_per_stage=list(features),
        conv_op=conv,
        kernel_sizes=[[KERNEL_SIZE] * spatial_dims] * len(features),
        strides=[list(s) for s in stage_strides(strides, spatial_dims)],
        n_blocks_per_stage=list(blocks),
        num_classes=out_channels,
        n_conv_per_stage_decoder=[1] * (len(features) - 1),
        conv_bias=True,
        norm_op=norm,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
        deep_supervision=False,
    )
    net.apply(net.initialize)
    for unused in net.decoder.seg_layers[:-1]:  # deep supervision's heads: kept for nnU-Net's keys, never run
        unused.requires_grad_(False)
    return net


def architecture(config: dict[str, Any]) -> dict[str, Any]:
    """The architecture settings of a ResEnc model's config: ``features``, ``blocks``, ``strides``."""
    return {key: config[key] for key in ("features", "blocks", "strides")}


class ResEncUNet(nn.Module):
    """nnU-Net's residual-encoder U-Net (:func:`build_resenc`) for segmentation, holding the same
    ``encoder`` and ``decoder`` as nnU-Net's network, so its state dict has nnU-Net's keys (``encoder.*``,
    ``decoder.*``, with the encoder listed a second time under ``decoder.encoder.*``).

    Forward: ``[B, in_channels, *S]`` (each axis a multiple of the total stride) -> logits
    ``[B, out_channels, *S]``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        features: Sequence[int] = RESENC_L["features"],
        blocks: Sequence[int] = RESENC_L["blocks"],
        strides: Sequence[int | Sequence[int]] = RESENC_L["strides"],
        img_size: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if img_size is not None:
            check_size(as_tuple(img_size, spatial_dims, "img_size"), strides, "img_size")
        net = build_resenc(spatial_dims, in_channels, out_channels, features, blocks, strides)
        self.encoder, self.decoder = net.encoder, net.decoder
        self.strides = list(strides)
        self.config = {
            "spatial_dims": spatial_dims,
            "in_channels": in_channels,
            "out_channels": out_channels,
            "features": list(features),
            "blocks": list(blocks),
            "strides": [s if isinstance(s, int) else list(s) for s in strides],
            "kernel_size": KERNEL_SIZE,
            "img_size": None if img_size is None else list(as_tuple(img_size, spatial_dims, "img_size")),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_size(x.shape[2:], self.strides)
        return self.decoder(self.encoder(x))


def sparse_conv_norm(block: nn.Module, x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """nnU-Net's ``ConvDropoutNormReLU`` as a sparse convolution: the convolution's output times
    ``visible``, the instance norm over visible positions (:func:`masked_instance_norm`), then the
    non-linearity if the block has one. x ``[B, C_in, *S_in]`` (0 where hidden), visible ``[B, 1, *S_out]``
    -> ``[B, C_out, *S_out]``, 0 where hidden."""
    if hasattr(block, "dropout"):
        raise ValueError("masked pretraining of a ResEnc with dropout is not supported")
    out = masked_instance_norm(block.norm, block.conv(x) * visible, visible)
    return block.nonlin(out) if hasattr(block, "nonlin") else out


def sparse_basic_block(block: nn.Module, x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """nnU-Net's ``BasicBlockD`` (two convolutions; skip: average pooling when strided, then a 1x1
    convolution and norm when the width changes) as a sparse convolution. A pooling window never spans two
    cells (the cell is the total stride), so pooled hidden positions stay 0. Shapes as
    :func:`sparse_conv_norm`."""
    if block.apply_stochastic_depth or block.apply_se:
        raise ValueError("masked pretraining of a ResEnc with stochastic depth or squeeze-excitation is not supported")
    residual = x
    if isinstance(block.skip, nn.Sequential):
        for op in block.skip:
            residual = sparse_conv_norm(op, residual, visible) if hasattr(op, "conv") else op(residual)
    out = sparse_conv_norm(block.conv2, sparse_conv_norm(block.conv1, x, visible), visible)
    return block.nonlin2(out + residual)


class SparseResEncMAE(SparseMasking, nn.Module):
    """The ResEnc encoder run sparsely on the visible cells and nnU-Net's decoder rebuilding the image from
    features whose hidden positions hold a learned token per scale (see the module docstring).

    Args:
        spatial_dims: 2 or 3; img_size: input size, a multiple of the total stride on each axis.
        in_channels: image channels (also the decoder's output channels).
        features, blocks, strides: the encoder's stages (:data:`RESENC_PRESETS`); the first stride is 1.
        mask_ratio, norm_pix_loss, mask_strategy: as :class:`medmae.models.sparse_mae.SparseConvMAE`.

    Keys: nnU-Net's ``encoder.*`` and ``decoder.*`` (the network nnssl's checkpoints hold, with output =
    image channels) and ``mask_tokens.i`` (``i`` = scale, 0 the finest).
    """

    def __init__(
        self,
        spatial_dims: int,
        img_size: int | Sequence[int],
        *,
        in_channels: int = 1,
        features: Sequence[int] = RESENC_L["features"],
        blocks: Sequence[int] = RESENC_L["blocks"],
        strides: Sequence[int | Sequence[int]] = RESENC_L["strides"],
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = True,
        mask_strategy: str = "random",
    ) -> None:
        super().__init__()
        self._init_masking(spatial_dims, img_size, strides, mask_ratio, norm_pix_loss, mask_strategy)
        net = build_resenc(spatial_dims, in_channels, in_channels, features, blocks, strides)
        self.encoder, self.decoder = net.encoder, net.decoder
        self.mask_tokens = nn.ParameterList(
            nn.Parameter(nn.init.trunc_normal_(torch.zeros(1, c, *(1,) * spatial_dims), std=MASK_TOKEN_STD))
            for c in features
        )
        self.config = {
            "spatial_dims": spatial_dims,
            "img_size": list(self.img_size),
            "patch_size": list(self.patch_size),
            "in_channels": in_channels,
            "features": list(features),
            "blocks": list(blocks),
            "strides": [s if isinstance(s, int) else list(s) for s in strides],
            "kernel_size": KERNEL_SIZE,
            "mask_ratio": mask_ratio,
            "norm_pix_loss": norm_pix_loss,
            "mask_strategy": mask_strategy,
        }

    def forward_encoder(self, x: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        """x ``[B, C, *img_size]``, mask ``[B, N]`` (1 = hidden) -> per stage ``[B, features_i, *S_i]``, each 0
        at hidden positions (the stem shares the first stage's resolution and mask)."""
        self._check_size(x)
        visible = self.visible_maps(mask)
        h = x * visible[0].to(x.dtype)
        for conv in self.encoder.stem.convs:
            h = sparse_conv_norm(conv, h, visible[0])
        features = []
        for stage, vis in zip(self.encoder.stages, visible):
            for block in stage.blocks:
                h = sparse_basic_block(block, h, vis)
            features.append(h)
        return features

    def forward_decoder(self, features: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """Per-stage features, mask ``[B, N]`` -> predictions ``[B, N, prod(patch_size) * C]`` in
        :func:`patchify` order: each scale's hidden positions take its mask token, then nnU-Net's decoder."""
        hidden = [1 - v for v in self.visible_maps(mask)]
        dense = [f + token * h.to(f.dtype) for f, token, h in zip(features, self.mask_tokens, hidden)]
        return patchify(self.decoder(dense), self.patch_size)


def encoder_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ResEnc encoder tensors (``encoder.*``, prefix removed) of a SparseResEncMAE or ResEncUNet state
    dict; the decoder's second listing of the encoder (``decoder.encoder.*``) is never read."""
    found = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    if not found:
        raise WeightTransferError("no ResEnc encoder in checkpoint (no key under 'encoder.')")
    return found


def resenc_from_pretrained(
    payload: dict[str, Any], out_channels: int, **overrides: Any
) -> tuple[ResEncUNet, TransferReport]:
    """A :class:`ResEncUNet` for segmentation with the pretrained encoder of ``payload`` (``config`` with
    ``spatial_dims``, ``features``, ``blocks``, ``strides`` and the defaults of ``in_channels`` and
    ``img_size``; ``state_dict`` with ``encoder.*``); ``overrides``: ``in_channels``, ``img_size``. The
    decoder starts from nnU-Net's initialisation; the report accounts for every encoder key."""
    config = payload["config"]
    settings = pretrained_geometry(payload, overrides, "resenc_from_pretrained")
    model = ResEncUNet(
        config["spatial_dims"],
        settings["in_channels"],
        out_channels,
        **architecture(config),
        img_size=settings["img_size"],
    )
    state, report = adapt_conv_encoder_state(encoder_tensors(payload["state_dict"]), model.encoder, STEM_KEYS)
    model.encoder.load_state_dict(state, strict=True)
    return model, report
