"""MONAI's 3D U-Net as the from-scratch baseline a user would otherwise pick (MONAI tutorial settings)."""

from __future__ import annotations

from collections.abc import Sequence

from monai.networks.layers import Norm
from monai.networks.nets import UNet


class BaselineUNet(UNet):
    """``monai.networks.nets.UNet`` with batch norm and 2 residual units per level, as in MONAI's
    segmentation tutorials, carrying a ``config`` dict so that checkpoints rebuild it.

    Args:
        spatial_dims: 2 or 3.
        in_channels, out_channels: image channels; classes including background.
        channels, strides: feature maps per level and the down-sampling between levels (the input size
            must be a multiple of the product of the strides: 16 by default).
        num_res_units: residual units per level.
        img_size: the training ROI (recorded only; the network takes any multiple of 16).

    Forward: ``[B, C, *S]`` -> logits ``[B, out_channels, *S]``.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        strides: Sequence[int] = (2, 2, 2, 2),
        num_res_units: int = 2,
        img_size: Sequence[int] | None = None,
    ) -> None:
        super().__init__(
            spatial_dims,
            in_channels,
            out_channels,
            tuple(channels),
            tuple(strides),
            num_res_units=num_res_units,
            norm=Norm.BATCH,
        )
        self.config = {
            "spatial_dims": spatial_dims,
            "in_channels": in_channels,
            "out_channels": out_channels,
            "channels": list(channels),
            "strides": list(strides),
            "num_res_units": num_res_units,
            "img_size": None if img_size is None else list(img_size),
        }
