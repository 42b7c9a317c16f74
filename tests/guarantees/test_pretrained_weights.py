"""The pretrained-weights how-to's four commands, read from docs/how-to/pretrained-weights.md and run as
written (a tiny recipe added to finetune) on real hippocampus cases laid out as nnU-Net's, with an nnssl
ResEnc-L checkpoint of random weights standing in for OpenMind's download; and the model they start from
holds exactly the file's encoder."""

from __future__ import annotations

import re
import shlex

import pandas as pd
import pytest
import torch

from medmae.checkpoint import load_checkpoint
from medmae.cli import main
from medmae.config import load_config
from medmae.tasks import load_task
from medmae.training.finetune import build_finetune_model
from medmae.training.session import with_roi
from tests.helpers import ROOT, TINY, hippocampus_as_nnunet
from tests.models.helpers import nnssl_checkpoint


def four_commands() -> list[list[str]]:
    """The command lines of the how-to's first code block."""
    text = (ROOT / "docs" / "how-to" / "pretrained-weights.md").read_text(encoding="utf-8")
    block = re.search(r"## Start from OpenMind.*?```\n(.*?)```", text, flags=re.DOTALL).group(1)
    return [shlex.split(line) for line in block.strip().splitlines()]


@pytest.mark.slow
def test_the_four_commands_fine_tune_openminds_resenc_l_on_own_scans(tmp_path, monkeypatch, caplog):
    commands = four_commands()
    assert [c[1:3] for c in commands] == [
        ["task", "init"],
        ["data", "check"],
        ["finetune", "--task"],
        ["evaluate", "--task"],
    ]
    hippocampus_as_nnunet(tmp_path, cases=10)
    (tmp_path / "ResEncL-OpenMind-MAE").mkdir()
    nnssl_checkpoint(tmp_path / "ResEncL-OpenMind-MAE" / "checkpoint_final.pth")
    monkeypatch.chdir(tmp_path)
    caplog.set_level("INFO", logger="medmae")
    for command in commands:
        tiny = ["--config", TINY, "--set", "optim.encoder_warmup_epochs=1"] if command[1] == "finetune" else []
        assert main([*command[1:], *tiny]) == 0, command
    best = load_checkpoint(tmp_path / "runs" / "openmind_resenc" / "checkpoints" / "best.pt")
    assert best["config"]["name"] == "resenc_l_3d" and best["config"]["img_size"] == [64, 64, 64]
    assert best["pretrained_terms"] == {"licence": None, "citation": None}
    assert "CC-BY-4.0" in caplog.text and "encoder transfer: 448 tensors loaded" in caplog.text
    per_case = pd.read_csv(tmp_path / "runs" / "openmind_resenc" / "evaluate_test" / "per_case.csv", comment="#")
    assert set(per_case["class"]) == {"anterior", "posterior"} and per_case["dsc"].between(0, 1).all()


def test_the_fine_tuned_model_starts_from_exactly_the_files_encoder(tmp_path):
    saved = nnssl_checkpoint(tmp_path / "checkpoint_final.pth")
    cfg = load_config("finetune", "msd_hippocampus", overrides=["model.arch=resenc", "model.size=l"])
    task = with_roi(load_task("msd_hippocampus"), [64, 64, 64], 32)
    model = build_finetune_model(cfg, task, str(tmp_path / "checkpoint_final.pth"))
    weights = saved["network_weights"]
    for key, tensor in model.encoder.state_dict().items():
        source = weights["encoder." + key]
        torch.testing.assert_close(tensor, source.permute(0, 1, 4, 3, 2) if source.ndim == 5 else source)
    brain = with_roi(load_task("msd_brain"), [64, 64, 64], 32)  # 4 channels: the stem repeated and divided
    model = build_finetune_model(cfg, brain, str(tmp_path / "checkpoint_final.pth"))
    stem = weights["encoder.stem.convs.0.conv.weight"].permute(0, 1, 4, 3, 2)
    torch.testing.assert_close(model.encoder.stem.convs[0].conv.weight, stem.repeat(1, 4, 1, 1, 1) / 4)
    assert model.pretrained_terms == {"licence": None, "citation": None}
