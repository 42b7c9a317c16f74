"""UNETR around medmae's encoder: equal to the MAE's encoder and, at patch 16, to MONAI's UNETR on the same
weights; any power-of-two patch size."""

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
from medmae.models.families import vit_name
from medmae.models.unetr import unetr_stages
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


def test_the_patch_16_unetr_has_exactly_monais_keys():
    model = create_model("unetr_vit_tiny_patch16_3d", img_size=32, out_channels=3)
    monai_keys = {k for k in UNETR(1, 3, 32, hidden_size=48, mlp_dim=192, num_heads=3, qkv_bias=True).state_dict()}
    assert set(model.state_dict()) == {k for k in monai_keys if ".norm_cross_attn." not in k}


@pytest.mark.parametrize(
    "dims, patch, stages",
    [(3, 8, 3), (3, 4, 2), (3, (8, 8, 4), 3), (2, 8, 3), (2, 4, 2), (2, (16, 8), 4)],
)
def test_unetr_decoder_for_any_patch_size_gives_full_size_logits_and_trains_every_parameter(dims, patch, stages):
    size = (32, 48, 32)[:dims]
    model = create_model(vit_name("unetr_vit", "tiny", patch, dims), img_size=size, out_channels=3, feature_size=8)
    out = model(torch.randn(2, 1, *size))
    out.square().mean().backward()
    assert out.shape == (2, 3, *size)
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    assert hasattr(model, f"decoder{stages + 1}") and not hasattr(model, f"decoder{stages + 2}")
    assert model.taps == [12 * k // stages for k in range(1, stages)]


def test_unetr_stages_and_the_patches_it_refuses():
    assert unetr_stages([8, 8, 4]) == [(2, 2, 2), (2, 2, 2), (2, 2, 1)]
    assert unetr_stages([16, 16]) == [(2, 2)] * 4
    for patch in ([16, 16, 4], [8, 8, 1], [12, 12, 12]):
        with pytest.raises(ValueError, match="patch_size"):
            unetr_stages(patch)


def test_unetr_refuses_encoders_it_cannot_hold():
    with pytest.raises(ValueError, match="no cls token"):
        create_model("unetr_vit_tiny_patch16_3d", img_size=32, out_channels=2, cls_token=True)
    with pytest.raises(RuntimeError, match="patch 16 and 12 blocks"):
        to_monai_unetr(create_model("unetr_vit_tiny_patch8_3d", img_size=32, out_channels=2))
