"""The light (Primus-like) decoder: full-size logits for any power-of-two patch, no path around the encoder."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medmae.models import create_model
from medmae.models.families import vit_name
from medmae.models.light import ChannelNorm, LightDecoderViT, decoder_channels


@pytest.mark.parametrize("dims, patch", [(3, 16), (3, 8), (3, 4), (3, (8, 8, 4)), (2, 16), (2, 8), (2, (4, 2))])
def test_light_decoder_gives_full_size_logits_and_trains_every_parameter(dims, patch):
    size = (32, 48, 32)[:dims]
    model = create_model(vit_name("light_vit", "tiny", patch, dims), img_size=size, out_channels=3)
    assert isinstance(model, LightDecoderViT)
    out = model(torch.randn(2, 1, *size))
    out.square().mean().backward()
    assert out.shape == (2, 3, *size)
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_the_input_reaches_the_logits_only_through_the_encoder():
    model = create_model("light_vit_tiny_patch8_3d", img_size=32, out_channels=2).eval()
    convs = [m for m in model.decoder.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))]
    assert convs[0].in_channels == 48 and all(isinstance(m, nn.ConvTranspose3d) for m in convs)
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        tokens, _ = model.vit(x)
        grid = tokens.transpose(1, 2).reshape(1, 48, 4, 4, 4)
        assert torch.equal(model(x), model.decoder(grid))


def test_decoder_channels_fall_geometrically_to_the_classes():
    assert decoder_channels(768, 3, 3) == [768, 152, 32, 3]  # 768 / 128 ** (k / 3) = 152.4, 30.2: to 8s
    assert decoder_channels(48, 2, 2) == [48, 16, 2]  # 48 / 12 ** (1 / 2) = 13.9
    assert decoder_channels(48, 14, 4) == [48, 40, 40, 32, 14]  # 41.9, 36.7, 32.1


def test_channel_norm_normalises_each_position_over_channels():
    x = torch.randn(2, 5, 3, 4) * 3 + 1
    y = ChannelNorm(5)(x)
    assert torch.allclose(y.mean(dim=1), torch.zeros(2, 3, 4), atol=1e-5)
    assert torch.allclose(y.var(dim=1, unbiased=False), torch.ones(2, 3, 4), atol=1e-3)


def test_light_decoder_refuses_a_cls_token_and_a_patch_that_is_not_a_power_of_two():
    with pytest.raises(ValueError, match="no cls token"):
        create_model("light_vit_tiny_patch8_3d", img_size=32, out_channels=2, cls_token=True)
    with pytest.raises(ValueError, match="power of two"):
        create_model("light_vit_tiny_patch6_2d", img_size=36, out_channels=2)
