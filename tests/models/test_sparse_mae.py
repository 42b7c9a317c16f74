"""Masked pretraining of the residual DynUNet encoder: shapes, sparsity of every encoder feature, masked
instance norm, the loss on hidden cells only, gradients, seeded masks and bf16 autocast."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medmae.models.dynunet import DYNUNET_FILTERS, ResidualUNet, conv_encoder
from medmae.models.masking import random_masking, visible_count
from medmae.models.patchify import patchify
from medmae.models.sparse_mae import SparseConvMAE, masked_instance_norm

TINY = DYNUNET_FILTERS["tiny"]
SIZE_3D = (32, 48, 32)
CASES = [(3, SIZE_3D), (2, (32, 32))]


def tiny(spatial_dims: int = 3, size: tuple[int, ...] = SIZE_3D, **kwargs) -> SparseConvMAE:
    return SparseConvMAE(spatial_dims, size, filters=TINY, **kwargs)


def hidden_at(mask: torch.Tensor, grid: tuple[int, ...], size: torch.Size) -> torch.Tensor:
    """mask ``[B, N]`` -> ``[B, 1, *size]`` bool, True where the cell is hidden (independent of the model)."""
    return F.interpolate(mask.reshape(mask.shape[0], 1, *grid), size=tuple(size), mode="nearest").bool()


@pytest.mark.parametrize("spatial_dims, size", CASES)
def test_shapes_and_a_finite_loss(spatial_dims, size):
    model = tiny(spatial_dims, size, in_channels=2)
    n = math.prod(s // 16 for s in size)
    loss, pred, mask = model(torch.randn(2, 2, *size))
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert pred.shape == (2, n, 16**spatial_dims * 2) and mask.shape == (2, n)
    assert model.patch_size == (16,) * spatial_dims
    features = model.forward_encoder(torch.randn(2, 2, *size), mask)
    assert [tuple(f.shape[1:]) for f in features] == [(c, *(s // 2**i for s in size)) for i, c in enumerate(TINY)]


def test_config_and_state_dict_keys_follow_the_dynunet():
    model = tiny(mask_ratio=0.5, decoder_width=16)
    assert model.config == {
        "spatial_dims": 3,
        "img_size": list(SIZE_3D),
        "patch_size": [16, 16, 16],
        "in_channels": 1,
        "filters": list(TINY),
        "strides": [1, 2, 2, 2, 2],
        "kernel_size": 3,
        "mask_ratio": 0.5,
        "norm_pix_loss": True,
        "mask_strategy": "random",
        "decoder_width": 16,
    }
    encoder_keys = {k for k in model.state_dict() if k.startswith("encoder.")}
    net_keys = set(conv_encoder(ResidualUNet(3, 1, 2, TINY)).state_dict())
    assert encoder_keys == {"encoder." + k for k in net_keys}


def test_bad_sizes_and_ratios_are_refused_naming_the_value():
    with pytest.raises(ValueError, match=r"\(40, 32, 32\)"):
        tiny(size=(40, 32, 32))
    with pytest.raises(ValueError, match="mask_ratio=1.0"):
        tiny(mask_ratio=1.0)
    with pytest.raises(ValueError, match=r"\(32, 32, 32\)"):
        tiny()(torch.randn(1, 1, 32, 32, 32))


@pytest.mark.parametrize("spatial_dims, size", CASES)
def test_hidden_positions_are_zero_after_every_convolution_norm_and_stage(spatial_dims, size):
    model = tiny(spatial_dims, size, in_channels=2, mask_ratio=0.5)
    x = torch.randn(2, 2, *size) + 3.0
    mask = model.draw_mask(2, x.device)
    inputs = []  # every convolution's input: the masked image, a norm + LeakyReLU output, or a stage output
    hooks = [
        m.register_forward_pre_hook(lambda _, args: inputs.append(args[0]))
        for m in model.encoder.modules()
        if isinstance(m, (nn.Conv2d, nn.Conv3d))
    ]
    features = model.forward_encoder(x, mask)
    for hook in hooks:
        hook.remove()
    assert len(inputs) == 3 * len(TINY)  # conv1, conv2, conv3 in each of the five blocks
    for tensor in inputs + features:
        hidden = hidden_at(mask, model.grid, tensor.shape[2:]).expand_as(tensor)
        assert torch.all(tensor[hidden] == 0)
        assert tensor[~hidden].abs().sum() > 0


def test_with_nothing_hidden_the_encoder_equals_the_dense_dynunet():
    model = tiny(in_channels=2).eval()
    x = torch.randn(2, 2, *SIZE_3D)
    features = model.forward_encoder(x, torch.zeros(2, math.prod(model.grid)))
    dense, h = [], x
    with torch.no_grad():
        for block in [model.encoder["input_block"], *model.encoder["downsamples"], model.encoder["bottleneck"]]:
            h = block(h)
            dense.append(h)
    for ours, reference in zip(features, dense):
        torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)


def test_masked_instance_norm_uses_the_visible_voxels_alone():
    norm = nn.InstanceNorm3d(3, affine=True)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
        norm.bias.copy_(torch.tensor([-1.0, 0.0, 0.3]))
    x = torch.randn(2, 3, 8, 6, 4) * 4 + 1
    visible = (torch.rand(2, 1, 8, 6, 4) < 0.3).float()
    out = masked_instance_norm(norm, x, visible)
    for b in range(2):
        keep = visible[b, 0].bool()
        for c in range(3):
            voxels = x[b, c][keep].double()
            mean, var = voxels.mean(), voxels.var(unbiased=False)
            expected = (voxels - mean) / torch.sqrt(var + norm.eps) * norm.weight[c] + norm.bias[c]
            torch.testing.assert_close(out[b, c][keep].double(), expected.detach(), atol=1e-5, rtol=1e-5)
            assert torch.all(out[b, c][~keep] == 0)
    with pytest.raises(TypeError, match="instance norm"):
        masked_instance_norm(nn.BatchNorm3d(3), x, visible)


def test_the_loss_reads_hidden_patches_only():
    model = tiny()
    patches = patchify(torch.randn(2, 1, *SIZE_3D), model.patch_size)
    pred = torch.randn(patches.shape)
    mask = model.draw_mask(2, patches.device)
    loss = model._loss(patches, pred, mask)
    hidden = mask.bool().unsqueeze(-1)
    visible_changed = torch.where(hidden, patches, torch.randn_like(patches) * 10)
    assert torch.equal(model._loss(visible_changed, pred, mask), loss)
    b, n = map(int, mask.nonzero()[0])
    hidden_changed = patches.clone()
    hidden_changed[b, n] = torch.randn_like(patches[b, n]) * 10
    assert not torch.allclose(model._loss(hidden_changed, pred, mask), loss)


@pytest.mark.parametrize("spatial_dims, size, ratio", [(3, SIZE_3D, 0.6), (2, (32, 32), 0.5)])
def test_every_trainable_parameter_gets_a_gradient(spatial_dims, size, ratio):
    model = tiny(spatial_dims, size, mask_ratio=ratio)
    loss, _, mask = model(torch.randn(2, 1, *size))
    assert torch.all(mask.sum(dim=1) > 0)  # so every scale has hidden positions for its mask token
    loss.backward()
    silent = [name for name, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not silent
    assert len(model.mask_tokens) == len(TINY)


@pytest.mark.parametrize("strategy", ["random", "block"])
def test_seeds_decide_each_mask_whatever_the_batch_and_the_hidden_count_is_exact(strategy):
    model = tiny(mask_strategy=strategy, mask_ratio=0.5)
    x = torch.randn(3, 1, *SIZE_3D)
    _, _, together = model(x, seeds=torch.tensor([4, 11, 7]))
    _, _, alone = model(x[2:], seeds=torch.tensor([7]))
    assert torch.equal(together[2:], alone)
    n = math.prod(model.grid)
    assert torch.all(together.sum(dim=1) == n - visible_count(strategy, model.grid, 0.5))


def test_noise_ratio_and_generator_decide_the_mask():
    model = tiny()
    x = torch.randn(2, 1, *SIZE_3D)
    n = math.prod(model.grid)
    noise = torch.rand(2, n)
    _, _, mask = model(x, noise=noise)
    assert torch.equal(mask, random_masking(torch.zeros(2, n, 1), 0.75, noise=noise)[1])  # the ViT MAE's mask
    assert torch.all(model(x, mask_ratio=0.25)[2].sum(dim=1) == n - visible_count("random", model.grid, 0.25))
    first = model(x, generator=torch.Generator().manual_seed(3))[2]
    assert torch.equal(first, model(x, generator=torch.Generator().manual_seed(3))[2])
    with pytest.raises(ValueError, match="noise of shape"):
        model(x, noise=torch.rand(2, n + 1))


def test_bf16_autocast_gives_a_finite_loss_and_reconstruct_gives_images():
    model = tiny(in_channels=2)
    x = torch.randn(2, 2, *SIZE_3D)
    with torch.autocast("cpu", torch.bfloat16):
        loss, pred, mask = model(x)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    images = model.reconstruct(x, pred, mask)
    assert set(images) == {"masked", "prediction", "composite"}
    assert all(image.shape == x.shape for image in images.values())
