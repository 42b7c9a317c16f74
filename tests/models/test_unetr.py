"""UNETR around medmae's encoder: equal to the MAE's encoder and to MONAI's UNETR on the same weights."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import UNETR

from medmae.models import (
    EncoderUNETR,
    create_model,
    to_monai_unetr,
    unetr_from_pretrained,
)
from tests.models.helpers import SIZE_3D, pretrained, unshuffled_encoding


def test_unetr_encoder_equals_the_mae_encoder_and_unetr_equals_monai():
    mae, checkpoint = pretrained()
    model, report = unetr_from_pretrained(checkpoint, out_channels=3)
    model.eval(), mae.eval()
    assert report.adapted == {} and report.skipped == {} and report.initialised == {}
    assert len(report.loaded) == len(model.vit.state_dict())
    x = torch.randn(2, 1, *SIZE_3D)
    with torch.no_grad():
        mae_tokens = unshuffled_encoding(mae, x)
        unetr_tokens, hidden = model.vit(x)
        assert (unetr_tokens - mae_tokens).abs().max() < 1e-4
        assert len(hidden) == 12
        monai_model = to_monai_unetr(model).eval()
        assert isinstance(monai_model, UNETR) and not isinstance(monai_model, EncoderUNETR)
        assert (monai_model.vit(x)[0] - mae_tokens).abs().max() < 1e-4
        out, monai_out = model(x), monai_model(x)
    assert out.shape == (2, 3, *SIZE_3D)
    assert (out - monai_out).abs().max() < 1e-4


def test_unetr_2d_and_training_step_reaches_every_parameter():
    _, checkpoint = pretrained(spatial_dims=2)
    model, _ = unetr_from_pretrained(checkpoint, out_channels=2, drop_path_rate=0.1)
    out = model(torch.randn(2, 1, 32, 48))
    out.mean().backward()
    assert out.shape == (2, 2, 32, 48)
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_unetr_refuses_encoders_it_cannot_hold():
    with pytest.raises(ValueError, match="12 blocks"):
        create_model("unetr_vit_tiny_patch16_3d", img_size=32, out_channels=2, depth=6)
    with pytest.raises(ValueError, match="cls token"):
        create_model("unetr_vit_tiny_patch16_3d", img_size=32, out_channels=2, cls_token=True)
