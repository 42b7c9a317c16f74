"""MONAI's U-Net as the from-scratch baseline: its settings are recorded, so a checkpoint rebuilds it."""

from __future__ import annotations

import torch

from medmae.checkpoint import model_checkpoint
from medmae.models import create_model
from medmae.models.registry import rebuild_model


def test_the_baseline_segments_any_multiple_of_16_and_rebuilds_from_its_checkpoint():
    model = create_model("unet_3d", in_channels=1, out_channels=3, img_size=[32, 48, 32]).eval()
    assert model.config == {
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 3,
        "channels": [16, 32, 64, 128, 256],
        "strides": [2, 2, 2, 2],
        "num_res_units": 2,
        "img_size": [32, 48, 32],
        "name": "unet_3d",
    }
    x = torch.randn(1, 1, 32, 48, 32)
    rebuilt = rebuild_model(model_checkpoint(model), "unet.pt").eval()
    with torch.no_grad():
        assert model(x).shape == (1, 3, 32, 48, 32)
        assert torch.equal(rebuilt(x), model(x))
        assert create_model("unet_2d", out_channels=2).eval()(torch.randn(1, 1, 64, 48)).shape == (1, 2, 64, 48)
