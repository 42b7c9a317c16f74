"""The registry: names, presets and errors, and rebuilding a model from its checkpoint config."""

from __future__ import annotations

import math

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
    with pytest.raises(ValueError, match=r"another ViT size with width, depth, num_heads, mlp_dim given"):
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


def test_names_carry_the_patch_size_and_the_mini_preset():
    from medmae.config import ModelConfig
    from medmae.models import list_models
    from medmae.models.families import vit_name
    from medmae.models.registry import input_multiple

    names = set(list_models())
    assert {"mae_vit_mini_patch8_3d", "light_vit_tiny_patch4_2d", "unetr_vit_base_patch8_3d"} <= names
    assert {"vit_mini_patch8_2d_cls", "mae_dynunet_mini_3d", "dynunet_base_2d", "unet_3d"} <= names
    assert vit_name("unetr_vit", "mini", [8, 8, 4], 3) == "unetr_vit_mini_patch8x8x4_3d"
    assert vit_name("vit", "tiny", [8, 8], 2) == "vit_tiny_patch8_2d_cls"
    model = create_model("mae_vit_mini_patch8x8x4_3d", img_size=(32, 32, 16))
    enc = model.encoder.config
    assert enc["patch_size"] == [8, 8, 4] and (enc["width"], enc["depth"], enc["num_heads"]) == (192, 12, 3)
    assert (model.config["decoder_width"], model.config["decoder_depth"]) == (96, 4)
    assert create_model("mae_vit_tiny_patch8_3d", img_size=16, patch_size=(8, 8, 8)).patch_size == (8, 8, 8)
    with pytest.raises(ValueError, match="patch_size differs from the 8 of its name"):
        create_model("mae_vit_tiny_patch8_3d", img_size=16, patch_size=16)
    assert input_multiple(ModelConfig(arch="light", patch_size=[8, 8, 4])) == [8, 8, 4]
    assert input_multiple(ModelConfig(arch="unetr")) == 16 and input_multiple(ModelConfig(arch="dynunet")) == 16
    assert input_multiple(ModelConfig(arch="resenc", size="tiny")) == 16
    assert input_multiple(ModelConfig(arch="resenc", size="l")) == 32


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("light_vit_tiny_patch8_3d", {"img_size": 32, "out_channels": 3}),
        ("unetr_vit_tiny_patch4_2d", {"img_size": (16, 32), "out_channels": 2}),
        ("vit_tiny_patch8_2d_cls", {"img_size": 32, "num_classes": 4}),
        ("dynunet_tiny_3d", {"img_size": 32, "in_channels": 2, "out_channels": 3}),
        ("mae_dynunet_tiny_2d", {"img_size": (32, 48), "mask_ratio": 0.5}),
        ("resenc_tiny_3d", {"img_size": 32, "in_channels": 2, "out_channels": 3}),
        ("mae_resenc_tiny_3d", {"img_size": 32, "mask_ratio": 0.5}),
        ("mae_resenc_tiny_2d", {"img_size": (32, 48), "in_channels": 2}),
    ],
)
def test_every_backbone_rebuilds_from_its_checkpoint_config(name, kwargs):
    from medmae.models.registry import rebuild_model

    model = create_model(name, **kwargs).eval()
    rebuilt = rebuild_model(model_checkpoint(model), "best.pt").eval()
    assert rebuilt.config == model.config and type(rebuilt) is type(model)
    x = torch.randn(1, model.config["in_channels"], *model.config["img_size"])
    with torch.no_grad():
        if name.startswith("mae_"):
            noise = torch.rand(1, math.prod(model.grid if hasattr(model, "grid") else model.encoder.grid))
            assert torch.equal(rebuilt(x, noise=noise)[1], model(x, noise=noise)[1])
        else:
            assert torch.equal(rebuilt(x), model(x))


def test_a_convolutional_config_whose_derived_settings_disagree_is_refused():
    with pytest.raises(ValueError, match="mae_dynunet_tiny_3d: patch_size is fixed at"):
        create_model("mae_dynunet_tiny_3d", img_size=32, patch_size=8)
    with pytest.raises(ValueError, match="unknown arguments"):
        create_model("dynunet_tiny_3d", in_channels=1, out_channels=2, drop_path_rate=0.1)
