"""nnU-Net's residual encoder U-Net as MONAI builds it (``DynUNet`` with residual blocks), and moving a
masked-pretrained convolutional encoder (:class:`medmae.models.sparse_mae.SparseConvMAE`) into it.

The encoder of a DynUNet is its ``input_block``, ``downsamples`` and ``bottleneck``; :func:`conv_encoder`
gives a view of exactly these modules, so pretraining and fine-tuning share one key layout. Transfer
follows :mod:`medmae.models.weights`: one pure function decides what happens to each tensor
(:func:`adapt_conv_encoder_state`), a strict load applies it, and the report accounts for every key.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.nets import DynUNet
from torch import nn

from medmae.models.patchify import as_tuple
from medmae.models.weights import TransferReport, WeightTransferError, _adapt_channels, pretrained_geometry

DYNUNET_FILTERS = {"tiny": (8, 16, 32, 64, 128), "mini": (16, 32, 64, 128, 256), "base": (32, 64, 128, 256, 320)}
DYNUNET_STRIDES = (1, 2, 2, 2, 2)
KERNEL_SIZE = 3
ENCODER_PARTS = ("input_block", "downsamples", "bottleneck")
CHANNEL_KEYS = ("input_block.conv1.conv.weight", "input_block.conv3.conv.weight")
MAE_PREFIX = "encoder."


def stage_strides(strides: Sequence[int | Sequence[int]], spatial_dims: int) -> list[tuple[int, ...]]:
    """Each stage's stride per axis (an int expanded to every axis), input block first."""
    return [as_tuple(s, spatial_dims, "strides") for s in strides]


def total_stride(strides: Sequence[int | Sequence[int]], spatial_dims: int) -> tuple[int, ...]:
    """The encoder's down-sampling per axis: the product of the stage strides (16 for ``DYNUNET_STRIDES``)."""
    return tuple(math.prod(axis) for axis in zip(*stage_strides(strides, spatial_dims)))


def check_size(size: Sequence[int], strides: Sequence[int | Sequence[int]], what: str = "input") -> None:
    """Raise ValueError unless every axis of ``size`` is a multiple of the total stride on that axis."""
    total = total_stride(strides, len(size))
    if any(s % t for s, t in zip(size, total)):
        raise ValueError(
            f"{what} of spatial size {tuple(size)}: every axis must be a multiple of the encoder's total stride {total}"
        )


class ResidualUNet(DynUNet):
    """nnU-Net's residual encoder U-Net as MONAI builds it: ``monai.networks.nets.DynUNet`` with residual
    blocks (``UnetResBlock``), kernel 3 everywhere, transposed convolutions of kernel = stride for
    up-sampling, instance norm with affine parameters and LeakyReLU (DynUNet's defaults), no deep
    supervision; it carries a ``config`` dict so that checkpoints rebuild it.

    Args:
        spatial_dims: 2 or 3.
        in_channels, out_channels: image channels; classes including background.
        filters: feature maps per stage, e.g. ``DYNUNET_FILTERS["base"]``.
        strides: per stage (input block first); ``DYNUNET_STRIDES`` down-samples 16 times per axis.
        img_size: the training ROI (recorded and checked; the network takes any multiple of the total stride).

    Forward: ``[B, C, *S]`` (each ``S_i`` a multiple of the total stride) -> logits ``[B, out_channels, *S]``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        filters: Sequence[int],
        strides: Sequence[int | Sequence[int]] = DYNUNET_STRIDES,
        img_size: Sequence[int] | None = None,
    ) -> None:
        if len(filters) != len(strides):
            raise ValueError(f"filters {list(filters)} and strides {list(strides)} differ in length")
        if img_size is not None:
            check_size(as_tuple(img_size, spatial_dims, "img_size"), strides, "img_size")
        super().__init__(
            spatial_dims,
            in_channels,
            out_channels,
            kernel_size=[KERNEL_SIZE] * len(strides),
            strides=list(strides),
            upsample_kernel_size=list(strides[1:]),
            filters=list(filters),
            res_block=True,
        )
        self.config = {
            "spatial_dims": spatial_dims,
            "in_channels": in_channels,
            "out_channels": out_channels,
            "filters": list(filters),
            "strides": list(strides),
            "kernel_size": KERNEL_SIZE,
            "img_size": None if img_size is None else list(as_tuple(img_size, spatial_dims, "img_size")),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[B, C, *S]`` -> logits ``[B, out_channels, *S]``."""
        check_size(x.shape[2:], self.strides)
        return super().forward(x)


def conv_encoder(net: DynUNet) -> nn.ModuleDict:
    """``{"input_block", "downsamples", "bottleneck"}``: the encoder of ``net``, sharing its modules.

    DynUNet's own state dict lists the same tensors a second time under ``skip_layers.*``; this view
    names each encoder tensor once, as ``input_block.*``, ``downsamples.N.*``, ``bottleneck.*``.
    """
    return nn.ModuleDict({part: getattr(net, part) for part in ENCODER_PARTS})


def adapt_conv_encoder_state(
    source: dict[str, torch.Tensor], target_encoder: nn.Module, channel_keys: tuple[str, ...] = CHANNEL_KEYS
) -> tuple[dict[str, torch.Tensor], TransferReport]:
    """Fit pretrained encoder tensors (keys of ``target_encoder``'s state dict: :func:`conv_encoder`'s, or a
    ResEnc's) to ``target_encoder`` without touching it.

    Tensors of equal shape are loaded; the input-channel dimension of the first convolutions
    (``channel_keys``: ``[C_out, C_src, *k]`` -> ``[C_out, C_tgt, *k]``) is summed over the source channels
    and shared equally (one channel: repeated and divided, as nnssl adapts a stem). Any other difference
    (missing or unexpected key, another shape, e.g. other filters) raises :class:`WeightTransferError`
    listing every one with both shapes.

    Returns:
        the tensors to load (every key of ``target_encoder``) and the report.
    """
    wanted = target_encoder.state_dict()
    report = TransferReport()
    state = {}
    problems = [f"unexpected key {k} {tuple(source[k].shape)}" for k in sorted(set(source) - set(wanted))]
    problems += [f"missing key {k} {tuple(wanted[k].shape)}" for k in sorted(set(wanted) - set(source))]
    for key in sorted(set(source) & set(wanted)):
        tensor, shape = source[key], wanted[key].shape
        if tensor.shape == shape:
            state[key] = tensor
            report.loaded.append(key)
        elif key in channel_keys and tensor.shape[0] == shape[0] and tensor.shape[2:] == shape[2:]:
            state[key] = _adapt_channels(tensor, shape[1])
            report.adapted[key] = (
                f"input channels {tensor.shape[1]} -> {shape[1]}: summed over the source "
                "channels and shared equally over the target channels"
            )
        else:
            problems.append(f"shape of {key}: checkpoint {tuple(tensor.shape)}, model {tuple(shape)}")
    if problems:
        raise WeightTransferError("pretrained encoder does not fit the model:\n  " + "\n  ".join(problems))
    return state, report


def load_conv_encoder(net: ResidualUNet, source: dict[str, torch.Tensor]) -> TransferReport:
    """Load pretrained encoder tensors into ``net`` (a strict load on its :func:`conv_encoder` view); the
    report accounts for every encoder key, as the ViT path's does (the decoder trains from scratch)."""
    state, report = adapt_conv_encoder_state(source, conv_encoder(net))
    conv_encoder(net).load_state_dict(state, strict=True)
    return report


def encoder_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder tensors of a SparseConvMAE (``encoder.*``, prefix removed) or ResidualUNet state dict."""
    if any(key.startswith(MAE_PREFIX) for key in state):
        return {k[len(MAE_PREFIX) :]: v for k, v in state.items() if k.startswith(MAE_PREFIX)}
    found = {k: v for k, v in state.items() if k.split(".", 1)[0] in ENCODER_PARTS}
    if not found:
        raise WeightTransferError(
            f"no convolutional encoder in checkpoint (no key under {MAE_PREFIX!r} or {', '.join(ENCODER_PARTS)})"
        )
    return found


def derived_name(config: dict[str, Any]) -> str:
    """``mae_dynunet_mini_3d`` (or ``dynunet_mini_3d``) -> ``dynunet_mini_3d``; else ``dynunet_custom_<d>d``."""
    core = re.fullmatch(r"(?:mae_)?(dynunet_[a-z0-9]+_[23]d)", str(config.get("name")))
    return core.group(1) if core else f"dynunet_custom_{config['spatial_dims']}d"


def dynunet_from_pretrained(
    payload: dict[str, Any], out_channels: int, **overrides: Any
) -> tuple[ResidualUNet, TransferReport]:
    """A :class:`ResidualUNet` for segmentation with the pretrained encoder of a medmae checkpoint.

    Args:
        payload: ``{"state_dict": ..., "config": ...}`` of a SparseConvMAE (or a ResidualUNet); its config
            gives ``spatial_dims``, ``filters``, ``strides`` (and the defaults of ``in_channels``, ``img_size``).
        out_channels: classes including background.
        overrides: ``in_channels`` (the first block is adapted) and ``img_size`` only.

    Returns:
        the model (``config["name"]`` derived from the checkpoint's) and the :class:`TransferReport`.
    """
    config = payload["config"]
    settings = pretrained_geometry(payload, overrides, "dynunet_from_pretrained")
    model = ResidualUNet(
        config["spatial_dims"],
        settings["in_channels"],
        out_channels,
        config["filters"],
        config["strides"],
        img_size=settings["img_size"],
    )
    report = load_conv_encoder(model, encoder_tensors(payload["state_dict"]))
    model.config["name"] = derived_name(config)
    return model, report
