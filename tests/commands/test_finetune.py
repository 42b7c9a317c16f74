"""``medmae finetune`` from the command line: ImageNet weights given as ``--pretrained imagenet:FILE``."""

from __future__ import annotations

import logging

import pytest
import torch

from medmae.models import ViTEncoder

PATCH, POS = "patch_embedding.patch_embeddings.weight", "patch_embedding.position_embeddings"


def timm_layout(encoder: ViTEncoder) -> dict[str, torch.Tensor]:
    """A medmae 2D encoder (cls token, position-free) written in timm's layout, as a timm file would hold it."""
    state, renamed = encoder.state_dict(), {}
    for key, tensor in state.items():
        key = (
            key.replace("patch_embedding.patch_embeddings", "patch_embed.proj")
            .replace("attn.out_proj", "attn.proj")
            .replace("mlp.linear1", "mlp.fc1")
            .replace("mlp.linear2", "mlp.fc2")
        )
        renamed[key] = tensor
    renamed["pos_embed"] = torch.cat([torch.zeros(1, 1, tensor.shape[-1]), renamed.pop(POS)], dim=1)
    return renamed | {"head.weight": torch.zeros(10, encoder.config["width"]), "head.bias": torch.zeros(10)}


@pytest.mark.slow
def test_finetune_takes_imagenet_weights_from_the_command_line(tmp_path, demo_root, caplog):
    from medmae import resource_dir
    from medmae.checkpoint import load_checkpoint
    from medmae.cli import main

    caplog.set_level(logging.INFO, logger="medmae")
    encoder = ViTEncoder(2, 224, 16, 3, 192, 12, 3, 768, cls_token=True, norm_eps=1e-6)
    torch.save(timm_layout(encoder), tmp_path / "vit_tiny.pth")
    tiny = str(resource_dir("configs") / "test" / "tiny.yaml")
    code = main(
        [
            "finetune",
            "--task",
            "demo",
            "--data-root",
            str(demo_root),
            "--config",
            tiny,
            "--set",
            "train.epochs=1",
            "--set",
            "optim.warmup_epochs=0",
            "--pretrained",
            f"imagenet:{tmp_path / 'vit_tiny.pth'}",
            "--output-dir",
            str(tmp_path / "unetr"),
        ]
    )
    assert code == 0
    log = caplog.text
    assert (
        "read timm ViT weights" in log
        and "inflated the patch embedding [192, 3, 16, 16] -> [192, 3, 16, 16, 16]" in log
    )
    assert "input channels 3 -> 1" in log and "resampled from grid (14, 14, 1) to (3, 3, 2)" in log
    saved = load_checkpoint(tmp_path / "unetr" / "checkpoints" / "last.pt")
    assert saved["config"]["width"] == 192 and saved["config"]["norm_eps"] == 1e-6
    assert saved["pretrained"] == f"imagenet:{tmp_path / 'vit_tiny.pth'}"
    assert (
        main(
            [
                "finetune",
                "--task",
                "demo",
                "--data-root",
                str(demo_root),
                "--pretrained",
                f"imagenet:{tmp_path / 'missing.pth'}",
                "--output-dir",
                str(tmp_path / "other"),
            ]
        )
        == 2
    )
