"""The speed switches: activation checkpointing, torch.compile, channels-last UNETR, cached crops on disk."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from medmae import resource_dir
from medmae.checkpoint import load_checkpoint
from medmae.models import create_model
from medmae.models.encoder import TransformerBlock, set_activation_checkpointing
from medmae.training import finetune, pretrain
from medmae.training.session import RunRequest

TINY = str(resource_dir("configs") / "test" / "tiny.yaml")


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


def test_compile_and_activation_checkpointing_switches_reach_the_training_step(tmp_path, demo_root, monkeypatch):
    """``train.compile`` compiles the trained module (here with the eager backend, to spare a CPU test the
    minute inductor takes); checkpoints still hold the plain model's keys."""
    compiled, original = [], torch.compile

    def compile_eagerly(module, **kwargs):
        compiled.append(module)
        return original(module, backend="eager")

    monkeypatch.setattr(torch, "compile", compile_eagerly)
    model = pretrain.run(
        RunRequest(
            "demo",
            str(demo_root),
            config_file=TINY,
            output_dir=str(tmp_path / "run"),
            overrides=["train.compile=true", "train.activation_checkpointing=true"],
        )
    )
    assert compiled == [model]
    assert all(block.checkpointed for block in model.modules() if isinstance(block, TransformerBlock))
    assert pd.read_csv(tmp_path / "run" / "metrics.csv")["loss"].notna().all()
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["state_dict"]
    assert saved.keys() == model.state_dict().keys() and not any(k.startswith("_orig_mod") for k in saved)


def test_channels_last_unetr_trains_like_the_default_layout(tmp_path, demo_root):
    losses = []
    for layout in ("false", "true"):
        model = finetune.run(
            RunRequest(
                "demo",
                str(demo_root),
                config_file=TINY,
                output_dir=str(tmp_path / layout),
                overrides=[f"train.channels_last={layout}"],
            )
        )
        convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv3d)]
        assert all(
            w.is_contiguous(memory_format=torch.channels_last_3d) == (layout == "true")
            for w in convs
            if w.shape[1] > 1 and w.shape[2] > 1
        )
        losses.append(pd.read_csv(tmp_path / layout / "metrics.csv")["loss"].iloc[0])
    assert losses[1] == pytest.approx(losses[0], rel=1e-3)


def test_pretraining_on_crops_memory_mapped_from_disk(tmp_path, demo_root):
    pretrain.run(
        RunRequest(
            "demo",
            str(demo_root),
            config_file=TINY,
            output_dir=str(tmp_path / "run"),
            overrides=["data.sampler=cached", f"data.cache_dir={tmp_path / 'cache'}"],
        )
    )
    assert len(list((tmp_path / "cache").glob("demo_*.npy"))) == 1
    assert pd.read_csv(tmp_path / "run" / "metrics.csv")["loss"].notna().all()
