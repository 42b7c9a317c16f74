"""Weights in and out: nnssl/OpenMind checkpoints into a ResEnc segmenter, medmae ResEnc encoders out
through nnU-Net's own loader, MONAI's ViTAutoEnc weights into UNETR, and refusals that name the reason."""

from __future__ import annotations

import json
import pydoc

import pytest
import torch
from monai.networks.nets import ViTAutoEnc

from medmae.checkpoint import CheckpointError, model_checkpoint
from medmae.errors import UserError
from medmae.models import create_model
from medmae.models.exchange import export_nnssl, read_pretrained, reverse_axes
from medmae.models.resenc import resenc_from_pretrained
from medmae.models.weights import unetr_from_pretrained
from tests.models.helpers import nnssl_checkpoint, resenc_kwargs

TINY_KWARGS = resenc_kwargs([8, 16, 32, 64, 64], [1, 1, 1, 1, 1])
ARCH = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"


def test_an_nnssl_checkpoint_gives_its_stem_and_encoder_only_in_medmaes_axis_order(tmp_path):
    saved = nnssl_checkpoint(tmp_path / "checkpoint_final.pth", ARCH, 1, TINY_KWARGS)
    payload, notes = read_pretrained(tmp_path / "checkpoint_final.pth")
    weights = saved["network_weights"]
    encoder_keys = {k for k in weights if k.startswith("encoder.")}
    assert set(payload["state_dict"]) == encoder_keys  # never decoder.encoder.*, never the decoder
    for key in encoder_keys:
        expected = weights[key].permute(0, 1, 4, 3, 2) if weights[key].ndim == 5 else weights[key]
        torch.testing.assert_close(payload["state_dict"][key], expected)
    assert payload["config"]["features"] == [8, 16, 32, 64, 64] and payload["config"]["name"] == "mae_resenc_custom_3d"
    assert payload["task"]["spacing"] == [1.0, 1.0, 1.0] and payload["task"]["intensity"] == {"rule": "zscore_nonzero"}
    assert any("--set model.img_size=[160, 160, 160]" in note for note in notes)
    assert any(note.startswith("licence: ") and "CC-BY-4.0" in note for note in notes)


@pytest.mark.slow
def test_openminds_resenc_l_checkpoint_fills_a_four_channel_segmenter(tmp_path):
    saved = nnssl_checkpoint(tmp_path / "checkpoint_final.pth")  # ResEncL, as OpenMind's releases
    payload, _ = read_pretrained(tmp_path / "checkpoint_final.pth")
    assert payload["config"]["name"] == "mae_resenc_l_3d"
    exported = export_nnssl(model_checkpoint(create_model("mae_resenc_l_3d", img_size=64)), "last.pt", tmp_path / "out")
    plan = json.loads(exported[1].read_text())["architecture_plans"]
    assert plan["arch_class_name"] == "ResEncL" and plan["arch_kwargs"] is None  # as OpenMind's plans name it
    model, report = resenc_from_pretrained(payload, 4, in_channels=4, img_size=[64, 64, 64])
    stem = saved["network_weights"]["encoder.stem.convs.0.conv.weight"].permute(0, 1, 4, 3, 2)
    torch.testing.assert_close(model.encoder.stem.convs[0].conv.weight, stem.repeat(1, 4, 1, 1, 1) / 4)
    assert len(report.loaded) + len(report.adapted) == len(model.encoder.state_dict())


@pytest.mark.parametrize(
    "architecture, message",
    [
        ("PrimusM", "architecture 'PrimusM'.*Primus, an EVA ViT on 8\\^3 patches, is not supported"),
        ("PlainConvUNet", "architecture 'PlainConvUNet'"),
    ],
)
def test_primus_and_unknown_architectures_are_refused_naming_them(tmp_path, architecture, message):
    nnssl_checkpoint(tmp_path / "ckpt.pth", ARCH, 1, TINY_KWARGS)
    raw = torch.load(tmp_path / "ckpt.pth", weights_only=True)
    raw["nnssl_adaptation_plan"]["architecture_plans"]["arch_class_name"] = architecture
    torch.save(raw, tmp_path / "ckpt.pth")
    with pytest.raises(UserError, match=message):
        read_pretrained(tmp_path / "ckpt.pth")


def test_a_file_of_no_known_kind_is_refused_saying_what_it_holds(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"neither a medmae checkpoint, an nnssl checkpoint.*found \['weights'\]"):
        read_pretrained(tmp_path / "other.pt")


def test_an_exported_encoder_passes_through_nnunets_own_loader(tmp_path):
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights

    mae = create_model("mae_resenc_tiny_3d", img_size=(32, 48, 32), in_channels=1)
    with torch.no_grad():
        for p in mae.parameters():
            p.add_(0.05 * torch.randn_like(p))
    payload = model_checkpoint(mae, task={"name": "hippocampus", "spacing": [1.0, 1.0, 1.5]})
    checkpoint, plan_file = export_nnssl(payload, "last.pt", tmp_path / "to_nnunet")
    plan = json.loads(plan_file.read_text())
    arch = plan["architecture_plans"]
    kwargs = {
        k: pydoc.locate(v) if k in arch["arch_kwargs_requiring_import"] else v for k, v in arch["arch_kwargs"].items()
    }
    network = pydoc.locate(arch["arch_class_name"])(input_channels=1, num_classes=3, **kwargs)
    load_pretrained_weights(network, str(checkpoint))
    written = torch.load(checkpoint, weights_only=True)["network_weights"]
    medmae_order = reverse_axes(mae.state_dict())
    for key, tensor in network.state_dict().items():
        if ".seg_layers." in key:  # nnU-Net keeps its own segmentation heads
            continue
        torch.testing.assert_close(tensor, written[key])
        torch.testing.assert_close(tensor, medmae_order[key])
    assert plan["pretrain_plan"]["configurations"]["medmae"]["spacing"] == [1.5, 1.0, 1.0]  # nnU-Net's z, y, x
    assert plan["recommended_downstream_patchsize"] == [32, 48, 32][::-1]
    back, _ = read_pretrained(checkpoint)  # and back into medmae: the encoder unchanged
    for key, tensor in mae.encoder.state_dict().items():
        torch.testing.assert_close(back["state_dict"]["encoder." + key], tensor)


def test_only_a_3d_resenc_checkpoint_exports_to_nnssl(tmp_path):
    payload = model_checkpoint(create_model("mae_dynunet_tiny_3d", img_size=32))
    with pytest.raises(UserError, match="nnssl exports take a 3D ResEnc checkpoint"):
        export_nnssl(payload, "last.pt", tmp_path)


def test_monai_vitautoenc_weights_load_into_unetr_with_an_exact_key_report(tmp_path):
    monai = ViTAutoEnc(
        in_channels=1, img_size=(32, 32, 32), patch_size=16, hidden_size=48, mlp_dim=192, num_heads=3, proj_type="conv"
    )
    torch.save({"state_dict": monai.state_dict()}, tmp_path / "vit_autoenc.pt")
    payload, notes = read_pretrained(tmp_path / "vit_autoenc.pt")
    model, report = unetr_from_pretrained(payload, 3, img_size=(32, 32, 32), in_channels=1)
    assert sorted(report.loaded) == sorted(model.vit.state_dict()) and not report.adapted and not report.initialised
    for key, tensor in model.vit.state_dict().items():
        torch.testing.assert_close(tensor, monai.state_dict()[key])
    skipped = {key for note in notes if note.startswith("skipped ") for key in note[8:].split(": ")[0].split(", ")}
    assert skipped == {k for k in monai.state_dict() if k.startswith("conv3d_transpose") or "norm_cross_attn" in k}
    assert model.config["name"] == "unetr_vit_tiny_patch16_3d" and payload["config"]["qkv_bias"] is False


def test_anisotropic_strides_cross_over_in_each_sides_axis_order(tmp_path):
    strides = [1, [2, 2, 1], 2, 2, 2]  # medmae's [x, y, z]: no down-sampling along z in the second stage
    mae = create_model(
        "mae_resenc_custom_3d", img_size=(32, 32, 16), features=[8, 16, 32, 64, 64], blocks=[1] * 5, strides=strides
    )
    checkpoint, plan_file = export_nnssl(model_checkpoint(mae), "last.pt", tmp_path)
    plan = json.loads(plan_file.read_text())
    assert plan["architecture_plans"]["arch_kwargs"]["strides"][1] == [1, 2, 2]  # nnU-Net's [z, y, x]
    assert plan["recommended_downstream_patchsize"] == [16, 32, 32]
    back, notes = read_pretrained(checkpoint)
    assert back["config"]["strides"] == [[1, 1, 1], [2, 2, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    assert any("--set model.img_size=[32, 32, 16]" in note for note in notes)
    model, _ = resenc_from_pretrained(back, 2, img_size=(32, 32, 16))
    for key, tensor in mae.encoder.state_dict().items():
        torch.testing.assert_close(model.encoder.state_dict()[key], tensor)
