"""Pretraining: the MAE loss under bf16 against fp32, and runs on cached crops in memory and on disk."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from medmae.cli import main
from medmae.devices import autocast
from medmae.models import create_model
from medmae.training import pretrain
from medmae.training.pretrain import mae_loss
from medmae.training.session import RunRequest
from tests.helpers import TINY, demo_run


def test_bf16_autocast_step_matches_fp32():
    model = create_model("mae_vit_tiny_patch16_3d", img_size=(48, 48, 32))
    batch = {"image": torch.randn(4, 1, 48, 48, 32), "sample_seed": torch.arange(4)}
    losses, grads = [], []
    for precision in ("fp32", "bf16"):
        model.zero_grad()
        with autocast(precision, torch.device("cpu")):
            loss = mae_loss(model, batch, torch.device("cpu"))
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    # bf16 keeps 8 significant bits (rounding error 2^-9, 0.2 %) per operation; the loss is a mean over
    # thousands of squared errors, so the rounding mostly cancels. Measured: about 0.1 % apart.
    assert losses[1] == pytest.approx(losses[0], rel=1e-2)
    assert torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0) > 0.98


def test_pretraining_builds_the_store_in_the_configured_folder_and_reads_its_crops(tmp_path, demo_root):
    pretrain.run(
        RunRequest(
            "demo",
            str(demo_root),
            config_file=TINY,
            output_dir=str(tmp_path / "run"),
            overrides=["data.sampler=cached", f"data.store={tmp_path / 'stores'}", "data.crops_from=store"],
        )
    )
    (folder,) = (tmp_path / "stores").iterdir()
    assert folder.name.startswith("demo_") and len(list(folder.glob("*.image.b2nd"))) == 5  # never the test case
    assert pd.read_csv(tmp_path / "run" / "metrics.csv")["loss"].notna().all()


def test_unflipped_crops_need_the_cached_sampler(tmp_path, demo_root, capsys):
    command = demo_run(
        "pretrain", demo_root, tmp_path / "run", "--set", "data.sampler=monai", "--set", "data.flips=false"
    )
    assert main(command) == 2
    assert "data.flips=false needs the cached 3D crop sampler" in capsys.readouterr().err


def test_pretraining_runs_on_cached_crops(tmp_path, demo_root):
    assert (
        main(
            demo_run(
                "pretrain",
                demo_root,
                tmp_path / "run",
                "--set",
                "data.sampler=cached",
                "--set",
                "data.crops_per_volume=2",
            )
        )
        == 0
    )
    assert pd.read_csv(tmp_path / "run" / "metrics.csv")["loss"].notna().all()
