"""ImageNet ViT weights (timm and torchvision layouts) imported into medmae's encoder.

The reference is timm itself: a randomly initialised ``vit_base_patch16_224`` (no download), perturbed so
that no tensor keeps a symmetric initialisation. The torchvision layout is built from it by the reverse
mapping, as torchvision cannot be imported beside this CPU torch build."""

from __future__ import annotations

import os
import sys

import pytest
import torch
import torch.nn.functional as F

from medmae.checkpoint import CheckpointError
from medmae.models import ViTEncoder, WeightTransferError, classifier_from_pretrained, unetr_from_pretrained
from medmae.models.imagenet import convert_vit_state, imagenet_payload, read_state_dict
from tests.models.helpers import PATCH, POS
from tests.timm_shim import import_timm


def perturbed_timm(name, **kwargs):
    """A timm ViT (no download) in eval mode, every tensor moved off its initialisation."""
    model = import_timm().create_model(name, pretrained=False, **kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def vit_b():
    """(timm ViT-B/16, its state dict, its features ``[1, 197, 768]`` on a fixed image ``[1, 3, 224, 224]``)."""
    model = perturbed_timm("vit_base_patch16_224")
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        features = model.forward_features(x)
    return model, {k: v.clone() for k, v in model.state_dict().items()}, x, features


@pytest.fixture(scope="module")
def vit_b_file(vit_b, tmp_path_factory):
    path = tmp_path_factory.mktemp("imagenet") / "vit_base_patch16_224.pth"
    torch.save(vit_b[1], path)
    return path


def imported_features(payload, x):
    """The medmae encoder built by the real transfer path, on ``x [1, 3, 224, 224]`` -> ``[1, 197, 768]``."""
    model, report = classifier_from_pretrained(payload, num_classes=14, pool="cls", img_size=224, in_channels=3)
    assert report.adapted == {} and report.skipped == {} and report.initialised == {}
    with torch.no_grad():
        return model.eval().encoder(x)[0]


TIMM_TO_TORCHVISION = {
    "norm1": "ln_1",
    "attn.proj": "self_attention.out_proj",
    "norm2": "ln_2",
    "mlp.fc1": "mlp.0",
    "mlp.fc2": "mlp.3",
}


def to_torchvision(state, mlp=("mlp.0", "mlp.3")):
    """timm ViT state dict -> torchvision ``vit_b_16`` names (``in_proj_weight`` = timm's ``qkv.weight``)."""
    names = dict(TIMM_TO_TORCHVISION, **{"mlp.fc1": mlp[0], "mlp.fc2": mlp[1]})
    out = {
        "class_token": state["cls_token"],
        "encoder.pos_embedding": state["pos_embed"],
        "conv_proj.weight": state["patch_embed.proj.weight"],
        "conv_proj.bias": state["patch_embed.proj.bias"],
        "encoder.ln.weight": state["norm.weight"],
        "encoder.ln.bias": state["norm.bias"],
        "heads.head.weight": state["head.weight"],
        "heads.head.bias": state["head.bias"],
    }
    for key, tensor in state.items():
        if key.startswith("blocks."):
            _, index, rest = key.split(".", 2)
            module, param = rest.rsplit(".", 1)
            prefix = f"encoder.layers.encoder_layer_{index}."
            if module == "attn.qkv":
                out[f"{prefix}self_attention.in_proj_{param}"] = tensor
            else:
                out[f"{prefix}{names[module]}.{param}"] = tensor
    return out


@pytest.fixture
def tiny_state():
    """A tiny timm ViT's state dict: width 64 (1 head), 2 blocks, grid 2x2 on 32x32."""
    return perturbed_timm("vit_tiny_patch16_224", img_size=32, embed_dim=64, depth=2, num_heads=1).state_dict()


class CodePayload:
    """Unpickling this runs ``touch <marker>``: the payload a hostile checkpoint would carry."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_timm_file_maps_every_tensor_and_gives_timm_features(vit_b, vit_b_file):
    _, state, x, expected = vit_b
    payload, notes = imagenet_payload(vit_b_file, 2)
    reference = ViTEncoder(2, 224, 16, 3, 768, 12, 12, 3072, cls_token=True, norm_eps=1e-6).state_dict()
    assert {k.removeprefix("encoder.") for k in payload["state_dict"]} == set(reference)
    assert all(k.startswith("encoder.") for k in payload["state_dict"])
    imported = convert_vit_state(state, 2)
    assert set(imported.skipped) == {"head.weight", "head.bias"}
    assert set(imported.mapped) | set(imported.skipped) == set(state)
    assert payload["task"] is None and payload["config"] == {
        "spatial_dims": 2,
        "img_size": [224, 224],
        "patch_size": [16, 16],
        "in_channels": 3,
        "width": 768,
        "depth": 12,
        "num_heads": 12,
        "mlp_dim": 3072,
        "qkv_bias": True,
        "cls_token": True,
        "norm_eps": 1e-6,
        "name": "imagenet_vit_base_patch16_2d",
    }
    text = "\n".join(notes)
    assert "timm" in text and "head.bias, head.weight" in text and "width 768 // 64" in text
    assert "folded the cls token's position embedding" in text
    # the same shapes bar the folded cls position: exact tensors, not merely the right keys
    assert torch.equal(payload["state_dict"]["encoder.cls_token"], state["cls_token"] + state["pos_embed"][:, :1])
    assert torch.equal(payload["state_dict"]["encoder." + POS], state["pos_embed"][:, 1:])
    torch.testing.assert_close(imported_features(payload, x), expected, atol=1e-5, rtol=1e-5)


def test_torchvision_layout_gives_timm_features(vit_b, tmp_path):
    _, state, x, expected = vit_b
    path = tmp_path / "vit_b_16.pth"
    torch.save(to_torchvision(state), path)
    payload, notes = imagenet_payload(path, 2)
    assert notes[0].startswith("read torchvision ViT weights")
    assert "heads.head.bias, heads.head.weight" in "\n".join(notes)
    torch.testing.assert_close(imported_features(payload, x), expected, atol=1e-5, rtol=1e-5)
    older = convert_vit_state(to_torchvision(state, mlp=("mlp.linear_1", "mlp.linear_2")), 2)  # torchvision < 0.13
    assert set(older.state) == {k.removeprefix("encoder.") for k in payload["state_dict"]}
    assert all(torch.equal(older.state[k], payload["state_dict"]["encoder." + k]) for k in older.state)


@pytest.mark.parametrize("channels", [1, 4])
def test_other_channel_counts_are_adapted_and_reported(vit_b_file, channels):
    payload, _ = imagenet_payload(vit_b_file, 2)
    rgb, _ = classifier_from_pretrained(payload, num_classes=2, pool="cls", img_size=32, in_channels=3)
    model, report = classifier_from_pretrained(payload, num_classes=2, pool="cls", img_size=32, in_channels=channels)
    assert f"input channels 3 -> {channels}" in report.adapted[PATCH]
    assert "(14, 14) to (2, 2)" in report.adapted[POS]
    x = torch.randn(1, 1, 32, 32)  # the same signal in every channel embeds as it did in RGB
    with torch.no_grad():
        torch.testing.assert_close(
            model.eval().encoder(x.expand(-1, channels, -1, -1))[0],
            rgb.eval().encoder(x.expand(-1, 3, -1, -1))[0],
            atol=1e-4,
            rtol=1e-4,
        )
    source = payload["state_dict"]["encoder." + PATCH]  # [768, 3, 16, 16]
    assert torch.allclose(
        model.encoder.state_dict()[PATCH], source.sum(1, keepdim=True).expand(-1, channels, -1, -1) / channels
    )


def test_3d_inflation_embeds_a_constant_volume_as_the_image_and_builds_unetr(vit_b_file):
    flat, _ = imagenet_payload(vit_b_file, 2)
    payload, notes = imagenet_payload(vit_b_file, 3)
    config = payload["config"]
    assert config["img_size"] == [224, 224, 16] and config["patch_size"] == [16, 16, 16]
    assert config["spatial_dims"] == 3 and config["name"] == "imagenet_vit_base_patch16_3d"
    assert any("[768, 3, 16, 16] -> [768, 3, 16, 16, 16]" in n for n in notes)
    assert any("grid (14, 14, 1)" in n for n in notes)
    weight2d, weight3d = flat["state_dict"]["encoder." + PATCH], payload["state_dict"]["encoder." + PATCH]
    bias = payload["state_dict"]["encoder.patch_embedding.patch_embeddings.bias"]
    image = torch.randn(1, 3, 32, 48, dtype=torch.float64)  # float64: 12288-term sums, no float32 rounding
    volume = image.unsqueeze(-1).expand(-1, -1, -1, -1, 16)  # constant along the new last axis
    embedded3d = F.conv3d(volume, weight3d.double(), bias.double(), stride=16)  # [1, 768, 2, 3, 1]
    embedded2d = F.conv2d(image, weight2d.double(), bias.double(), stride=16)  # [1, 768, 2, 3]
    torch.testing.assert_close(embedded3d[..., 0], embedded2d, atol=1e-10, rtol=1e-10)
    assert torch.equal(payload["state_dict"]["encoder." + POS], flat["state_dict"]["encoder." + POS])
    model, report = unetr_from_pretrained(payload, out_channels=3, img_size=(32, 32, 32), in_channels=1)
    assert "3 -> 1" in report.adapted[PATCH] and "(14, 14, 1) to (2, 2, 2)" in report.adapted[POS]
    assert report.skipped == {"cls_token": "the target encoder has no cls token"}
    pos = model.vit.patch_embedding.position_embeddings.reshape(2, 2, 2, 768)
    assert torch.equal(pos[:, :, 0], pos[:, :, 1])  # replicated along the new axis
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 1, 32, 32, 32)).shape == (1, 3, 32, 32, 32)


def test_unknown_and_missing_keys_are_listed(tiny_state, tmp_path):
    path = tmp_path / "extra.pth"
    torch.save({**tiny_state, "dist_token": torch.zeros(1, 1, 64)}, path)
    with pytest.raises(WeightTransferError, match=r"(?s)extra.pth: .*unknown key dist_token \(1, 1, 64\)"):
        imagenet_payload(path, 2)
    torch.save({k: v for k, v in tiny_state.items() if k != "blocks.1.mlp.fc2.weight"}, path)
    with pytest.raises(WeightTransferError, match=r"without keys .*: blocks\.1\.mlp\.fc2\.weight$"):
        imagenet_payload(path, 2)
    vision = to_torchvision(tiny_state)
    del vision["encoder.layers.encoder_layer_1.mlp.3.bias"], vision["encoder.ln.weight"]
    missing = r"encoder\.ln\.weight, encoder\.layers\.encoder_layer_1\.mlp\.3\.bias"  # in torchvision's names
    with pytest.raises(WeightTransferError, match=missing):
        convert_vit_state(vision, 2)
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(WeightTransferError, match="extra.pth: not a ViT in timm or torchvision layout"):
        imagenet_payload(path, 2)
    with pytest.raises(CheckpointError, match="missing.pth: no such weights file"):
        imagenet_payload(tmp_path / "missing.pth", 2)


def test_safetensors_and_nested_files_are_read(tiny_state, tmp_path, monkeypatch):
    nested = tmp_path / "checkpoint.pth"
    torch.save({"model": {"module." + k: v for k, v in tiny_state.items()}, "epoch": 300}, nested)
    payload, notes = imagenet_payload(nested, 2)
    assert payload["config"]["num_heads"] == 1 and payload["config"]["name"] == "imagenet_vit_w64d2_patch16_2d"
    assert "weights read from the file's 'model' entry" in notes and any("'module.' prefix" in n for n in notes)
    safetensors = pytest.importorskip("safetensors.torch")
    path = tmp_path / "model.safetensors"
    safetensors.save_file({k: v.contiguous() for k, v in tiny_state.items()}, str(path))
    from_safetensors, _ = imagenet_payload(path, 2)
    assert all(torch.equal(v, from_safetensors["state_dict"][k]) for k, v in payload["state_dict"].items())
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)  # as if not installed
    with pytest.raises(CheckpointError, match="model.safetensors: .*pip install safetensors"):
        imagenet_payload(path, 2)


def test_a_file_carrying_code_is_refused_and_the_code_never_runs(tiny_state, tmp_path):
    marker, hostile = tmp_path / "code_ran", tmp_path / "hostile.pth"
    torch.save({"model": tiny_state, "args": CodePayload(marker)}, hostile)
    with pytest.raises(
        CheckpointError,
        match=r"hostile.pth: refused: its pickle would call (posix|os)\.system.*"
        r"state_dict\(\)",
    ):
        read_state_dict(hostile)
    assert not marker.exists()
