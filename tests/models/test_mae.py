"""The ViT masked autoencoder: shapes, the encoder sees only visible tokens, masking strategies,
gradients, bf16, the mask-token encoder, the recorded config and any patch size (the shared target and loss:
test_reconstruction.py)."""

from __future__ import annotations

import math

import pytest
import torch

from medmae.models import MaskedAutoencoder, create_model
from medmae.models.families import vit_name

SIZE_3D = (32, 48, 32)  # grid 2 x 3 x 2 = 12 patches of 16^3


def tiny_mae(spatial_dims=3, **kwargs):
    img_size = SIZE_3D if spatial_dims == 3 else (48, 64)
    return create_model(f"mae_vit_tiny_patch16_{spatial_dims}d", img_size=img_size, **kwargs)


@pytest.mark.parametrize("spatial_dims,channels", [(3, 1), (3, 4), (2, 1), (2, 3)])
def test_forward_shapes(spatial_dims, channels):
    model = tiny_mae(spatial_dims, in_channels=channels)
    x = torch.randn(2, channels, *model.img_size)
    loss, pred, mask = model(x)
    n = 12  # 2 x 3 x 2 in 3D, 3 x 4 in 2D
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert pred.shape == (2, n, channels * 16**spatial_dims)
    assert mask.shape == (2, n) and torch.equal(mask.sum(1), torch.full((2,), n - int(n * 0.25), dtype=torch.float32))


@pytest.mark.parametrize("cls_token", [False, True])
def test_encoder_sees_only_the_visible_tokens(cls_token):
    model = tiny_mae(cls_token=cls_token, mask_ratio=0.75)
    seen = []
    for block in model.encoder.blocks:
        block.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
    latent, mask, _ = model.forward_encoder(torch.randn(2, 1, *SIZE_3D))
    visible = int(12 * 0.25)
    assert seen == [visible + cls_token] * 12
    assert latent.shape == (2, visible + cls_token, 48)
    assert torch.equal((mask == 0).sum(1), torch.tensor([visible, visible]))


@pytest.mark.parametrize("spatial_dims,cls_token", [(3, False), (3, True), (2, False)])
def test_every_trainable_parameter_receives_a_gradient(spatial_dims, cls_token):
    model = tiny_mae(spatial_dims, cls_token=cls_token)
    loss, _, _ = model(torch.randn(2, 1, *model.img_size))
    loss.backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert "encoder.patch_embedding.position_embeddings" not in trainable  # fixed sin-cos
    no_grad = [n for n, p in trainable.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_trains_under_bf16_autocast(spatial_dims):
    model = tiny_mae(spatial_dims, drop_path_rate=0.1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(2, 1, *model.img_size)
    for _ in range(2):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, pred, _ = model(x)
        assert pred.dtype == torch.bfloat16 and loss.dtype == torch.float32 and torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        optimizer.step()


def test_mask_ratio_override_and_bad_arguments():
    model = tiny_mae()
    _, mask, _ = model.forward_encoder(torch.randn(1, 1, *SIZE_3D), mask_ratio=0.5)
    assert mask.sum() == 6
    loss, _, mask = model(torch.randn(1, 1, *SIZE_3D), mask_ratio=0.0)
    assert mask.sum() == 0 and loss == 0
    with pytest.raises(ValueError, match="mask_ratio"):
        MaskedAutoencoder(3, 32, mask_ratio=1.0, width=48, num_heads=3, decoder_width=48, decoder_heads=3)
    with pytest.raises(ValueError, match="divisible by 6"):
        MaskedAutoencoder(3, 32, width=64, num_heads=4)
    with pytest.raises(ValueError, match="spatial size"):
        model(torch.randn(1, 1, 32, 32, 32))


@pytest.mark.parametrize("cls_token", [False, True])
def test_decoder_puts_each_token_at_its_patch_position(cls_token):
    """Visible patch i gets decoder_embed(its latent) + pos[i]; hidden patch i gets mask_token + pos[i]."""
    model = tiny_mae(cls_token=cls_token).eval()
    latent, mask, ids_restore = model.forward_encoder(
        torch.randn(2, 1, *SIZE_3D), generator=torch.Generator().manual_seed(3)
    )
    seen = []
    model.decoder_blocks[0].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    with torch.no_grad():
        model.forward_decoder(latent, ids_restore)
        embedded = model.decoder_embed(latent)
    tokens = seen[0][:, int(cls_token) :]
    pos = model.decoder_pos_embed[0]
    ids_shuffle = torch.argsort(ids_restore, dim=1)
    for b in range(2):
        for j, patch in enumerate(ids_shuffle[b].tolist()):
            expected = embedded[b, j + int(cls_token)] if j < 3 else model.mask_token[0, 0]
            assert torch.allclose(tokens[b, patch], expected + pos[patch], atol=1e-6), (b, j, patch)
        assert torch.equal(mask[b, ids_shuffle[b, :3]], torch.zeros(3))
    if cls_token:
        assert torch.allclose(seen[0][:, 0], embedded[:, 0])  # no position embedding on the cls token


@pytest.mark.parametrize("spatial_dims,cls_token", [(3, False), (2, True)])
def test_mask_token_encoder_equals_the_skipping_encoder_at_mask_ratio_0(spatial_dims, cls_token):
    skip = tiny_mae(spatial_dims, cls_token=cls_token, mask_ratio=0.0)
    tokens = tiny_mae(spatial_dims, cls_token=cls_token, mask_ratio=0.0, encoder_mode="mask_tokens")
    missing, unexpected = tokens.load_state_dict(skip.state_dict(), strict=False)
    assert missing == ["encoder_mask_token"] and unexpected == ["mask_token"]  # the decoder's, unused there
    x = torch.randn(2, 1, *skip.img_size)
    in_order = torch.arange(12.0).expand(2, 12)  # noise that keeps the tokens in their order
    assert torch.equal(skip.forward_encoder(x, noise=in_order)[0], tokens.forward_encoder(x, noise=in_order)[0])
    shuffled = torch.rand(2, 12)  # the skipping encoder then sees the tokens in another order
    latent, _, ids_restore = skip.forward_encoder(x, noise=shuffled)
    start = int(cls_token)
    back = torch.gather(latent[:, start:], 1, ids_restore.unsqueeze(-1).expand(-1, -1, 48))
    torch.testing.assert_close(back, tokens.forward_encoder(x, noise=shuffled)[0][:, start:])
    assert torch.equal(skip(x, noise=in_order)[1], tokens(x, noise=in_order)[1])  # and the same predictions


def test_mask_token_encoder_sees_every_position_and_hidden_ones_as_its_mask_token():
    model = tiny_mae(mask_ratio=0.75, encoder_mode="mask_tokens")
    seen = []
    model.encoder.blocks[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    x = torch.randn(2, 1, *SIZE_3D)
    latent, mask, _ = model.forward_encoder(x)
    assert latent.shape == (2, 12, 48) and seen[0].shape == (2, 12, 48)
    position = model.encoder.patch_embedding.position_embeddings
    expected = torch.where(
        mask.unsqueeze(-1).bool(), model.encoder_mask_token + position, model.encoder.patch_embedding(x)
    )
    torch.testing.assert_close(seen[0], expected)
    loss, pred, _ = model(x)
    loss.backward()
    assert pred.shape == (2, 12, 4096) and model.encoder_mask_token.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)  # DDP needs every one used


@pytest.mark.parametrize("strategy,ratio", [("block", 0.5), ("grid", 0.875)])
def test_the_mae_hides_what_its_strategy_draws(strategy, ratio):
    from medmae.models.masking import strategy_mask

    model = create_model("mae_vit_tiny_patch16_3d", img_size=(64, 64, 64), mask_strategy=strategy, mask_ratio=ratio)
    x = torch.randn(3, 1, 64, 64, 64)
    _, _, mask = model(x, seeds=torch.tensor([4, 5, 6]))
    drawn = torch.stack([torch.from_numpy(strategy_mask(strategy, (4, 4, 4), ratio, s)) for s in (4, 5, 6)])
    assert torch.equal(mask.bool(), drawn)
    _, _, unseeded = model(x)  # without noise the model draws its own masks of the same strategy
    assert torch.equal(unseeded.sum(1), drawn.sum(1).float())


def test_the_config_records_target_strategy_and_encoder_mode_and_rebuilds_them():
    from medmae.checkpoint import model_checkpoint

    model = tiny_mae(norm_pix_loss=False, mask_strategy="block", encoder_mode="mask_tokens", mask_ratio=0.5)
    config = dict(model_checkpoint(model)["config"])
    assert (config["norm_pix_loss"], config["mask_strategy"], config["encoder_mode"]) == (False, "block", "mask_tokens")
    rebuilt = create_model(config.pop("name"), **config)
    rebuilt.load_state_dict(model.state_dict())
    assert (rebuilt.norm_pix_loss, rebuilt.mask_strategy, rebuilt.encoder_mode) == (False, "block", "mask_tokens")
    with pytest.raises(ValueError, match=r"mask_ratio must be 1 - 1/k\^3"):
        tiny_mae(mask_strategy="grid", mask_ratio=0.75)
    with pytest.raises(ValueError, match="encoder_mode"):
        tiny_mae(encoder_mode="dense")


def test_geometry_beyond_size_and_masking_settings_are_keywords():
    """``MaskedAutoencoder(3, 96, 16, 1)`` would otherwise set the decoder's width and depth by position."""
    with pytest.raises(TypeError):
        MaskedAutoencoder(3, 32, 16)
    model = MaskedAutoencoder(
        3, 32, patch_size=16, in_channels=2, width=48, num_heads=3, decoder_width=48, decoder_heads=3
    )
    assert (model.config["patch_size"], model.config["in_channels"]) == ([16, 16, 16], 2)
    with pytest.raises(TypeError):
        model(torch.randn(1, 2, 32, 32, 32), 0.5)  # mask_ratio by keyword only


@pytest.mark.parametrize(
    "spatial_dims, patch, size, grid",
    [
        (3, 8, (32, 48, 32), (4, 6, 4)),
        (3, 4, (16, 16, 8), (4, 4, 2)),
        (3, (8, 8, 4), (32, 16, 16), (4, 2, 4)),
        (2, 8, (32, 48), (4, 6)),
        (2, 4, (16, 8), (4, 2)),
    ],
)
def test_any_patch_size_gives_per_patch_predictions_a_normalised_target_and_gradients(spatial_dims, patch, size, grid):
    model = create_model(vit_name("mae_vit", "tiny", patch, spatial_dims), img_size=size)
    p = model.patch_size
    assert p == (patch,) * spatial_dims if isinstance(patch, int) else tuple(patch)
    assert model.encoder.grid == grid and model.encoder.patch_embedding.position_embeddings.shape[1] == math.prod(grid)
    x = 5 + 3 * torch.randn(2, 1, *size)
    loss, pred, mask = model(x)
    assert pred.shape == (2, math.prod(grid), math.prod(p)) and mask.shape == (2, math.prod(grid))
    target = model.patch_target(x)[0]
    assert torch.allclose(target.mean(-1), torch.zeros(2, math.prod(grid)), atol=1e-4)
    loss.backward()
    assert [n for n, q in model.named_parameters() if q.requires_grad and q.grad is None] == []
    images = model.reconstruct(x, pred.detach(), mask)
    assert images["composite"].shape == x.shape


@pytest.mark.parametrize(
    "spatial_dims,strategy,ratio,options",
    [
        (3, "random", 0.75, {}),
        (3, "block", 0.5, {"cls_token": True}),
        (2, "grid", 0.75, {"img_size": (64, 64)}),
        (3, "random", 0.75, {"encoder_mode": "mask_tokens"}),
        (2, "random", 0.5, {"norm_pix_loss": False, "in_channels": 3}),
    ],
)
def test_the_lean_loss_path_gives_the_full_paths_loss_and_gradients(spatial_dims, strategy, ratio, options):
    """``loss_only``: visible patches alone embedded, predictions, target and loss on hidden patches only;
    the same loss and parameter gradients as the full path on the same batch and masks."""
    torch.manual_seed(0)
    options = {"img_size": SIZE_3D if spatial_dims == 3 else (48, 64), **options}
    model = create_model(f"mae_vit_tiny_patch16_{spatial_dims}d", mask_strategy=strategy, mask_ratio=ratio, **options)
    x = torch.randn(3, model.encoder.config["in_channels"], *model.img_size)
    seeds = torch.tensor([4, 17, 99])
    results = []
    for loss_only in (False, True):
        model.zero_grad()
        loss, pred, mask = model(x, seeds=seeds, loss_only=loss_only)
        loss.backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        results.append((loss, pred, mask, grads))
    (full, _, full_mask, full_grads), (lean, pred, lean_mask, lean_grads) = results
    assert pred is None and torch.equal(full_mask, lean_mask)
    assert torch.allclose(full, lean, rtol=1e-5, atol=1e-7)
    assert full_grads.keys() == lean_grads.keys()
    for name, grad in full_grads.items():
        assert torch.allclose(grad, lean_grads[name], rtol=1e-4, atol=1e-6), name


def test_embedding_chosen_patches_equals_embedding_all_and_choosing():
    embedding = tiny_mae(3).encoder.patch_embedding
    patches = torch.randn(2, 12, 16**3)
    ids = torch.tensor([[3, 0, 7], [11, 5, 2]])
    everything = embedding.embed(patches)
    assert torch.allclose(embedding.embed(patches, ids), everything[torch.arange(2)[:, None], ids], atol=1e-5)
