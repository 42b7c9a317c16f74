"""What every MAE shares (:class:`medmae.models.reconstruction.PatchReconstruction`), checked on the ViT MAE
and the sparse convolutional MAE alike: the normalised per-patch target, the loss over hidden patches only,
and the reconstruction images."""

from __future__ import annotations

import pytest
import torch

from medmae.models import create_model, patchify, unpatchify

SIZE_3D = (32, 48, 32)  # grid 2 x 3 x 2 = 12 cells of 16^3: the ViT's patches and the DynUNet's total stride
KINDS = ["mae_vit_tiny_patch16_3d", "mae_dynunet_tiny_3d"]


def tiny_mae(kind, **kwargs):
    return create_model(kind, img_size=SIZE_3D, **kwargs)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_loss_ignores_visible_patches_and_follows_hidden_ones(kind, norm_pix_loss):
    model = tiny_mae(kind, norm_pix_loss=norm_pix_loss)
    x = torch.randn(2, 1, *SIZE_3D)
    with torch.no_grad():
        loss, pred, mask = model(x, generator=torch.Generator().manual_seed(0))
    patches = patchify(x, model.patch_size)
    noise = 5 * torch.randn_like(patches)
    visible_changed = unpatchify(patches + noise * (1 - mask).unsqueeze(-1), model.patch_size, SIZE_3D)
    hidden_changed = unpatchify(patches + noise * mask.unsqueeze(-1), model.patch_size, SIZE_3D)
    assert torch.equal(model.forward_loss(visible_changed, pred, mask), loss)
    assert not torch.allclose(model.forward_loss(hidden_changed, pred, mask), loss)


@pytest.mark.parametrize("kind", KINDS)
def test_norm_pix_target_is_normalised_per_patch(kind):
    model = tiny_mae(kind)
    x = 100 + 20 * torch.randn(1, 1, *SIZE_3D)
    target, _mean, _std = model.patch_target(x)
    assert torch.allclose(target.mean(-1), torch.zeros(1, 12), atol=1e-4)
    assert torch.allclose(target.std(-1, unbiased=False), torch.ones(1, 12), atol=1e-4)
    raw = tiny_mae(kind, norm_pix_loss=False).patch_target(x)[0]
    assert torch.equal(raw, patchify(x, (16, 16, 16)))


@pytest.mark.parametrize("kind", KINDS)
def test_norm_pix_statistics_survive_a_large_mean_and_bf16_autocast(kind):
    """CT in Hounsfield units: a mean of 1000 over a spread of 0.5 must not cancel the variance away, nor
    must one outlying voxel (air at -1000) at the start of a patch."""
    x = 1000 + 0.5 * torch.randn(2, 1, *SIZE_3D)
    x[:, :, 0, 0, 0] = -1000.0
    patches = patchify(x.double(), (16, 16, 16))
    var, mean = torch.var_mean(patches, -1, keepdim=True, unbiased=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        target, got_mean, got_std = tiny_mae(kind).patch_target(x)
    assert target.dtype == torch.float32
    assert torch.allclose(got_mean.double(), mean, rtol=0, atol=1e-4)
    assert torch.allclose(got_std.double(), (var + 1e-6).sqrt(), rtol=1e-4)
    assert torch.allclose(target.double(), (patches - mean) / (var + 1e-6).sqrt(), atol=2e-3)


@pytest.mark.parametrize("kind", KINDS)
def test_reconstruct_keeps_visible_patches_and_fills_hidden_ones(kind):
    model = tiny_mae(kind).eval()
    x = torch.randn(2, 1, *SIZE_3D)
    with torch.no_grad():
        _, pred, mask = model(x)
    images = model.reconstruct(x, pred, mask)
    assert set(images) == {"masked", "prediction", "composite"}
    visible = (1 - mask).unsqueeze(-1).bool()
    composite = patchify(images["composite"], model.patch_size)
    original = patchify(x, model.patch_size)
    assert torch.equal(composite.masked_select(visible), original.masked_select(visible))
    assert torch.equal(
        patchify(images["masked"], model.patch_size).masked_select(~visible), torch.zeros(int((~visible).sum()) * 4096)
    )
    # hidden patches come from the prediction, mapped back with each patch's mean and std
    _target, mean, std = model.patch_target(x)
    assert torch.allclose(composite.masked_select(~visible), (pred * std + mean).masked_select(~visible))


@pytest.mark.parametrize("kind", KINDS)
def test_loss_is_the_mean_over_hidden_patches_of_the_normalised_error(kind):
    model = tiny_mae(kind)
    x = 1 + 3 * torch.randn(2, 1, *SIZE_3D)
    x[0, 0, :16, :16, :16] = 0.5 + 0.002 * torch.randn(16, 16, 16)  # variance 4e-6: the 1e-6 in the normaliser matters
    pred, mask = torch.randn(2, 12, 4096), (torch.rand(2, 12) < 0.7).float()
    mask[0, 0], mask[1, 0] = 1, 0  # the tiny-variance patch is hidden; some patch is visible
    patches = patchify(x, (16, 16, 16)).double()
    errors = []
    for b in range(2):
        for n in range(12):
            if mask[b, n]:
                p = patches[b, n]
                target = (p - p.mean()) / (p.var(unbiased=False) + 1e-6).sqrt()
                errors.append(((pred[b, n].double() - target) ** 2).mean())
    assert torch.allclose(model.forward_loss(x, pred, mask).double(), torch.stack(errors).mean(), rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_the_normalised_loss_has_a_gradient_with_respect_to_the_input(kind):
    """Saliency and input gradients: the per-patch normalisation must not modify a tensor autograd saved."""
    model = tiny_mae(kind)
    x = torch.randn(1, 1, *SIZE_3D, requires_grad=True)
    loss, _pred, _mask = model(x, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
