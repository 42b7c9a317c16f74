"""Patchify and unpatchify: round trips, the token order of a strided convolution, bad sizes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medmae.models.patchify import patchify, unpatchify


@pytest.mark.parametrize("channels", [1, 4])
@pytest.mark.parametrize(
    "img_size,patch",
    [((32, 48, 16), (16, 16, 8)), ((48, 64, 48), (16, 16, 16)), ((32, 64), (16, 16)), ((24, 40), (8, 4))],
)
def test_round_trip(channels, img_size, patch):
    x = torch.randn(2, channels, *img_size)
    patches = patchify(x, patch)
    grid = [s // p for s, p in zip(img_size, patch)]
    assert patches.shape == (2, torch.tensor(grid).prod().item(), channels * torch.tensor(patch).prod().item())
    assert torch.equal(unpatchify(patches, patch, img_size), x)


@pytest.mark.parametrize("img_size,patch", [((32, 48, 16), (16, 16, 8)), ((32, 64), (16, 8))])
def test_token_order_matches_a_strided_convolution(img_size, patch):
    """Token i of patchify is token i of a conv patch embedding flattened as MONAI does."""
    x = torch.randn(2, 3, *img_size)
    weight = torch.randn(5, 3, *patch)
    conv = F.conv3d if len(patch) == 3 else F.conv2d
    tokens = conv(x, weight, stride=patch).flatten(2).transpose(1, 2)
    flat_weight = weight.permute(0, *range(2, len(patch) + 2), 1).reshape(5, -1)  # (p..., C) order
    assert torch.allclose(patchify(x, patch) @ flat_weight.T, tokens, rtol=1e-4, atol=1e-3)


def test_bad_sizes_raise():
    with pytest.raises(ValueError, match="not a multiple"):
        patchify(torch.zeros(1, 1, 30, 32, 32), (16, 16, 16))
    with pytest.raises(ValueError, match="spatial dims"):
        patchify(torch.zeros(1, 1, 32, 32), (16, 16, 16))
    with pytest.raises(ValueError, match="do not fit"):
        unpatchify(torch.zeros(1, 5, 16 * 16), (16, 16), (32, 32))
