"""The masked autoencoder: shapes, the encoder sees only visible tokens, the loss over hidden patches, the
normalised target, gradients, bf16, reconstruction, the mask-token encoder and the recorded config."""

from __future__ import annotations

import pytest
import torch

from medmae.models import MaskedAutoencoder, create_model, patchify, unpatchify

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


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_loss_ignores_visible_patches_and_follows_hidden_ones(norm_pix_loss):
    model = tiny_mae(norm_pix_loss=norm_pix_loss)
    x = torch.randn(2, 1, *SIZE_3D)
    with torch.no_grad():
        loss, pred, mask = model(x, generator=torch.Generator().manual_seed(0))
    patches = patchify(x, model.patch_size)
    noise = 5 * torch.randn_like(patches)
    visible_changed = unpatchify(patches + noise * (1 - mask).unsqueeze(-1), model.patch_size, SIZE_3D)
    hidden_changed = unpatchify(patches + noise * mask.unsqueeze(-1), model.patch_size, SIZE_3D)
    assert torch.equal(model.forward_loss(visible_changed, pred, mask), loss)
    assert not torch.allclose(model.forward_loss(hidden_changed, pred, mask), loss)


def test_norm_pix_target_is_normalised_per_patch():
    model = tiny_mae()
    x = 100 + 20 * torch.randn(1, 1, *SIZE_3D)
    target, _mean, _std = model.patch_target(x)
    assert torch.allclose(target.mean(-1), torch.zeros(1, 12), atol=1e-4)
    assert torch.allclose(target.std(-1, unbiased=False), torch.ones(1, 12), atol=1e-4)
    raw = tiny_mae(norm_pix_loss=False).patch_target(x)[0]
    assert torch.equal(raw, patchify(x, (16, 16, 16)))


def test_norm_pix_statistics_survive_a_large_mean_and_bf16_autocast():
    """CT in Hounsfield units: a mean of 1000 over a spread of 0.5 must not cancel the variance away, nor
    must one outlying voxel (air at -1000) at the start of a patch."""
    x = 1000 + 0.5 * torch.randn(2, 1, *SIZE_3D)
    x[:, :, 0, 0, 0] = -1000.0
    patches = patchify(x.double(), (16, 16, 16))
    var, mean = torch.var_mean(patches, -1, keepdim=True, unbiased=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        target, got_mean, got_std = tiny_mae().patch_target(x)
    assert target.dtype == torch.float32
    assert torch.allclose(got_mean.double(), mean, rtol=0, atol=1e-4)
    assert torch.allclose(got_std.double(), (var + 1e-6).sqrt(), rtol=1e-4)
    assert torch.allclose(target.double(), (patches - mean) / (var + 1e-6).sqrt(), atol=2e-3)


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


def test_reconstruct_keeps_visible_patches_and_fills_hidden_ones():
    model = tiny_mae().eval()
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


def test_loss_is_the_mean_over_hidden_patches_of_the_normalised_error():
    model = tiny_mae()
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
