"""The ViT encoder's pieces: drop path, the patch embedding as one matrix product, activation checkpointing."""

from __future__ import annotations

import pytest
import torch

from medmae.models import create_model
from medmae.models.encoder import DropPath, TransformerBlock, set_activation_checkpointing

SIZE_3D = (32, 48, 32)  # grid 2 x 3 x 2 = 12 patches of 16^3


def tiny_mae(spatial_dims=3, **kwargs):
    img_size = SIZE_3D if spatial_dims == 3 else (48, 64)
    return create_model(f"mae_vit_tiny_patch16_{spatial_dims}d", img_size=img_size, **kwargs)


def test_drop_path_drops_whole_samples_rescales_and_is_off_in_eval():
    layer = DropPath(0.3)
    x = torch.ones(4000, 5, 6)
    out = layer(x)
    per_sample = out.reshape(4000, -1)
    assert torch.all((per_sample == 0).all(1) | torch.isclose(per_sample, torch.tensor(1 / 0.7)).all(1))
    assert abs((per_sample[:, 0] == 0).float().mean().item() - 0.3) < 0.03
    assert abs(out.mean().item() - 1.0) < 0.05
    assert torch.equal(layer.eval()(x), x)
    rates = [block.drop_path.rate for block in tiny_mae(drop_path_rate=0.2).encoder.blocks]
    assert rates == pytest.approx(torch.linspace(0, 0.2, 12).tolist())


@pytest.mark.parametrize("dims, channels", [(2, 3), (3, 4)])
def test_patch_embedding_as_one_matrix_product_equals_the_strided_convolution(dims, channels):
    """The weights stay MONAI's convolution; applying them to patchify's patches is the same map."""
    from medmae.models.encoder import PatchEmbedding

    embedding = PatchEmbedding(dims, (32,) * dims, (16,) * dims, channels, width=24)
    x = torch.randn(2, channels, *(32,) * dims)
    by_convolution = embedding.patch_embeddings(x).flatten(2).transpose(1, 2) + embedding.position_embeddings
    assert torch.allclose(embedding(x), by_convolution, atol=1e-5)


@pytest.mark.parametrize(
    "name, kwargs",
    [("mae_vit_tiny_patch16_3d", {}), ("unetr_vit_tiny_patch16_3d", {"out_channels": 3, "feature_size": 8})],
)
def test_activation_checkpointing_gives_the_same_gradients(name, kwargs):
    """Recomputed blocks replay their drop path draws, so loss and gradients are those of a plain pass."""
    model = create_model(name, img_size=(32, 32, 32), drop_path_rate=0.3, **kwargs)
    x = torch.randn(2, 1, 32, 32, 32)
    results = []
    for enabled in (False, True):
        assert set_activation_checkpointing(model, enabled) == sum(
            isinstance(m, TransformerBlock) for m in model.modules()
        )
        model.zero_grad()
        torch.manual_seed(7)
        out = model(x, generator=torch.Generator().manual_seed(0))[0] if "mae" in name else model(x).square().mean()
        out.backward()
        results.append((out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    assert torch.equal(results[0][0], results[1][0])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(results[0][1], results[1][1], strict=True))
