"""Moving a pretrained ViT encoder: exact key sets, adapted channels and grids reported, misfits and another
patch size named."""

from __future__ import annotations

import pytest
import torch

from medmae.checkpoint import model_checkpoint
from medmae.models import (
    WeightTransferError,
    classifier_from_pretrained,
    create_model,
    light_from_pretrained,
    load_encoder,
    resample_pos_embed,
    unetr_from_pretrained,
)
from medmae.models.families import vit_name
from tests.models.helpers import pretrained


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


def test_a_checkpoint_of_another_patch_size_is_refused_not_resampled():
    mae = create_model("mae_vit_tiny_patch8_3d", img_size=(16, 16, 16))
    checkpoint = model_checkpoint(mae)
    for build in (unetr_from_pretrained, light_from_pretrained):
        with pytest.raises(WeightTransferError, match=r"pretrained with patch size \[8, 8, 8\]; this model wants"):
            build(checkpoint, out_channels=2, patch_size=16)
    target = create_model("unetr_vit_tiny_patch16_3d", img_size=32, out_channels=2)
    with pytest.raises(WeightTransferError, match="A patch embedding is not resampled"):
        load_encoder(target.vit, checkpoint["state_dict"], checkpoint["config"])


@pytest.mark.parametrize("patch", [8, (8, 8, 4)])
def test_the_light_model_takes_every_encoder_tensor_and_nothing_else(patch):
    mae = create_model(vit_name("mae_vit", "tiny", patch, 3), img_size=(32, 32, 16))
    model, report = light_from_pretrained(model_checkpoint(mae), out_channels=3, patch_size=patch)
    assert model.config["name"] == vit_name("light_vit", "tiny", patch, 3)
    encoder_keys = {k.removeprefix("encoder.") for k in mae.state_dict() if k.startswith("encoder.")}
    assert set(report.loaded) == encoder_keys == set(model.vit.state_dict())
    assert report.adapted == report.skipped == report.initialised == {}
    for key in encoder_keys:
        assert torch.equal(model.vit.state_dict()[key], mae.encoder.state_dict()[key])
    assert model(torch.randn(1, 1, 32, 32, 16)).shape == (1, 3, 32, 32, 16)
