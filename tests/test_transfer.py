import pytest
import torch
from monai.networks.nets import UNETR
from torch import nn

from medmae.checkpoint import model_checkpoint
from medmae.models import (
    EncoderUNETR,
    ViTClassifier,
    WeightTransferError,
    classifier_from_pretrained,
    create_model,
    resample_pos_embed,
    to_monai_unetr,
    unetr_from_pretrained,
)

SIZE_3D = (32, 48, 32)


def pretrained(spatial_dims=3, **kwargs):
    img_size = SIZE_3D if spatial_dims == 3 else (32, 48)
    mae = create_model(f"mae_vit_tiny_patch16_{spatial_dims}d", img_size=img_size, **kwargs)
    with torch.no_grad():  # make every tensor distinct from a fresh initialisation
        for p in mae.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return mae, model_checkpoint(mae)


def unshuffled_encoding(mae, x):
    """The MAE encoder on every patch (mask ratio 0), back in patch order."""
    latent, _, ids_restore = mae.forward_encoder(x, mask_ratio=0.0)
    return torch.gather(latent, 1, ids_restore.unsqueeze(-1).expand(-1, -1, latent.shape[-1]))


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


def test_channel_and_grid_changes_are_adapted_and_reported():
    mae, checkpoint = pretrained()
    model, report = unetr_from_pretrained(checkpoint, out_channels=4, in_channels=4, img_size=(48, 48, 48))
    assert set(report.adapted) == {"patch_embedding.patch_embeddings.weight", "patch_embedding.position_embeddings"}
    assert "1 -> 4" in report.adapted["patch_embedding.patch_embeddings.weight"]
    assert "(2, 3, 2) to (3, 3, 3)" in report.adapted["patch_embedding.position_embeddings"]
    assert "2 adapted" in str(report)
    # an image with the same signal in all 4 channels embeds as the 1-channel image did
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        before = mae.encoder.patch_embedding.patch_embeddings(x)
        after = model.vit.patch_embedding.patch_embeddings(x.expand(-1, 4, -1, -1, -1))
    assert torch.allclose(before, after, rtol=1e-5, atol=1e-4)


def test_a_different_grid_with_the_same_token_count_is_resampled_not_copied():
    mae, checkpoint = pretrained()  # grid (2, 3, 2)
    model, report = unetr_from_pretrained(checkpoint, out_channels=2, img_size=(48, 32, 32))  # grid (3, 2, 2)
    assert "(2, 3, 2) to (3, 2, 2)" in report.adapted["patch_embedding.position_embeddings"]
    source = mae.encoder.patch_embedding.position_embeddings
    loaded = model.vit.patch_embedding.position_embeddings
    assert not torch.allclose(loaded, source)
    assert torch.allclose(loaded, resample_pos_embed(source, (2, 3, 2), (3, 2, 2)))


def test_cls_token_is_skipped_or_initialised_and_said_so():
    _, with_cls = pretrained(cls_token=True)
    _, report = unetr_from_pretrained(with_cls, out_channels=2)
    assert list(report.skipped) == ["cls_token"]
    _, plain = pretrained(spatial_dims=2)
    classifier, report = classifier_from_pretrained(plain, num_classes=14, pool="cls")
    assert list(report.initialised) == ["cls_token"]
    assert classifier(torch.randn(2, 1, 32, 48)).shape == (2, 14)


def test_an_encoder_that_does_not_fit_names_keys_and_shapes():
    _, checkpoint = pretrained()
    wider = dict(
        checkpoint,
        state_dict={
            k: (torch.zeros(96, *v.shape[1:]) if k.endswith("norm.weight") else v)
            for k, v in checkpoint["state_dict"].items()
        },
    )
    with pytest.raises(WeightTransferError, match=r"shape of norm.weight: checkpoint \(96,\), model \(48,\)"):
        unetr_from_pretrained(wider, out_channels=2)
    no_bias = dict(
        checkpoint, state_dict={k: v for k, v in checkpoint["state_dict"].items() if not k.endswith("attn.qkv.bias")}
    )
    with pytest.raises(WeightTransferError, match=r"missing key blocks.0.attn.qkv.bias \(144,\)"):
        unetr_from_pretrained(no_bias, out_channels=2)
    extra = dict(checkpoint, state_dict={**checkpoint["state_dict"], "encoder.blocks.12.norm1.weight": torch.ones(48)})
    with pytest.raises(WeightTransferError, match="unexpected key blocks.12.norm1.weight"):
        unetr_from_pretrained(extra, out_channels=2)
    _, checkpoint_2d = pretrained(spatial_dims=2)
    with pytest.raises(WeightTransferError) as error:
        unetr_from_pretrained(checkpoint_2d, out_channels=2, spatial_dims=3, img_size=32, patch_size=16)
    assert "position_embeddings: checkpoint (1, 6, 48) on grid (2, 3), model (1, 8, 48) on grid (2, 2, 2)" in str(
        error.value
    )
    assert "shape of patch_embedding.patch_embeddings.weight: checkpoint (48, 1, 16, 16)" in str(error.value)
    with pytest.raises(WeightTransferError, match="no encoder"):
        unetr_from_pretrained(dict(checkpoint, state_dict={}), out_channels=2)


def test_unetr_refuses_encoders_it_cannot_hold():
    with pytest.raises(ValueError, match="12 blocks"):
        create_model("unetr_vit_tiny_patch16_3d", img_size=32, out_channels=2, depth=6)
    with pytest.raises(ValueError, match="cls token"):
        create_model("unetr_vit_tiny_patch16_3d", img_size=32, out_channels=2, cls_token=True)


def test_average_pooling_leaves_the_cls_token_out():
    _, checkpoint = pretrained(spatial_dims=2, cls_token=True)
    model, report = classifier_from_pretrained(checkpoint, num_classes=3, pool="avg", cls_token=True)
    assert report.skipped == {} and report.initialised == {}
    x = torch.randn(2, 1, 32, 48)
    with torch.no_grad():
        tokens, _ = model.encoder(x)
        assert torch.allclose(model(x), model.head(tokens[:, 1:].mean(1)))
        assert not torch.allclose(model(x), model.head(tokens.mean(1)))


def test_classifier_has_no_bounded_activation_and_fits_a_separable_batch():
    _, checkpoint = pretrained(spatial_dims=2)
    model, _ = classifier_from_pretrained(checkpoint, num_classes=2)
    assert isinstance(model, ViTClassifier) and model.config["name"] == "vit_tiny_patch16_2d_cls"
    assert not any(isinstance(m, (nn.Tanh, nn.Sigmoid, nn.Softmax, nn.Hardtanh)) for m in model.modules())
    x = torch.randn(8, 1, 32, 48)
    labels = torch.tensor([[1, 0], [0, 1], [1, 1], [0, 0]] * 2, dtype=torch.float32)
    x += 2 * labels[:, 0, None, None, None] * (torch.arange(48) < 24) + 2 * labels[:, 1, None, None, None] * (
        torch.arange(48) >= 24
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(150):
        loss = nn.functional.binary_cross_entropy_with_logits(model(x), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        logits = model.eval()(x)
    assert (logits[labels == 1] > 3).all() and (logits[labels == 0] < -3).all(), logits


def test_registry_names_and_errors():
    from medmae.models import list_models

    assert {
        "mae_vit_base_patch16_3d",
        "mae_vit_base_patch16_2d",
        "unetr_vit_base_patch16_3d",
        "vit_base_patch16_2d_cls",
        "mae_vit_tiny_patch16_3d",
    } <= set(list_models())
    base = create_model("mae_vit_base_patch16_3d", img_size=32)
    enc = base.encoder.config
    assert (enc["width"], enc["depth"], enc["num_heads"], enc["mlp_dim"], enc["qkv_bias"]) == (768, 12, 12, 3072, True)
    assert (base.config["decoder_width"], base.config["decoder_depth"]) == (384, 8)
    assert create_model("mae_vit_base_patch16_2d", img_size=32).config["decoder_width"] == 512
    with pytest.raises(ValueError, match="unknown model"):
        create_model("mae_vit_huge")
    with pytest.raises(ValueError, match="unknown arguments"):
        create_model("mae_vit_tiny_patch16_3d", colour="red")
