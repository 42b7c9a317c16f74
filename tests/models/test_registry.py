"""The registry: names, presets and errors, and rebuilding a model from its checkpoint config."""

from __future__ import annotations

import pytest
import torch

from medmae.checkpoint import model_checkpoint
from medmae.models import (
    ViTEncoder,
    classifier_from_pretrained,
    create_model,
)
from medmae.models.imagenet import imagenet_payload
from tests.models.helpers import timm_layout


def test_a_classifier_from_an_unregistered_vit_size_rebuilds_from_its_checkpoint_config(tmp_path):
    from medmae.models import create_model

    small = ViTEncoder(2, 64, 16, 3, 384, 2, 6, 1536, cls_token=True, norm_eps=1e-6)  # a two-block ViT-S/16
    torch.save(timm_layout(small), tmp_path / "vit_s.pth")
    model, _ = classifier_from_pretrained(
        imagenet_payload(tmp_path / "vit_s.pth", 2)[0], num_classes=3, img_size=64, in_channels=1
    )
    config = dict(model_checkpoint(model)["config"])
    rebuilt = create_model(config.pop("name"), **config)  # as evaluate, predict and --resume do
    rebuilt.load_state_dict(model.state_dict())
    assert (rebuilt.config["width"], rebuilt.config["depth"], rebuilt.config["num_heads"]) == (384, 2, 6)
    with pytest.raises(ValueError, match="or another size with width, depth, num_heads, mlp_dim given"):
        create_model("vit_small_patch16_2d_cls", num_classes=3)


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


def test_a_checkpoint_rebuilds_its_model_with_its_weights_or_names_the_problem():
    from medmae.checkpoint import CheckpointError, model_checkpoint
    from medmae.models.registry import rebuild_model

    model = create_model("unetr_vit_tiny_patch16_3d", img_size=(32, 32, 32), out_channels=3).eval()
    rebuilt = rebuild_model(model_checkpoint(model), "best.pt", drop_path_rate=0.1)
    assert rebuilt.config == model.config and rebuilt.vit.blocks[-1].drop_path.rate == pytest.approx(0.1)
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), model(x))
    payload = model_checkpoint(model)
    payload["config"]["name"] = "segformer_b0"
    with pytest.raises(CheckpointError, match="best.pt: describes no model medmae can build"):
        rebuild_model(payload, "best.pt")
    payload = model_checkpoint(model)
    payload["state_dict"].pop("out.conv.conv.weight")
    with pytest.raises(CheckpointError, match="best.pt: its weights do not fit .* missing out.conv.conv.weight"):
        rebuild_model(payload, "best.pt")


def test_an_mae_takes_no_trainable_position_embedding_and_no_unknown_arguments():
    for argument in ("trainable_pos_embed", "encoder", "colour"):
        with pytest.raises(ValueError, match=rf"mae_vit_tiny_patch16_3d: unknown arguments \['{argument}'\]"):
            create_model("mae_vit_tiny_patch16_3d", **{argument: True})
