"""``medmae export --format nnssl``: a ResEnc checkpoint becomes nnssl's two files; anything else is refused."""

from __future__ import annotations

import json

import torch

from medmae.checkpoint import model_checkpoint, save_checkpoint
from medmae.cli import main
from medmae.models import create_model


def test_export_writes_nnssls_checkpoint_and_plan_beside_the_checkpoint(tmp_path, capsys):
    mae = create_model("mae_resenc_tiny_3d", img_size=32)
    save_checkpoint(model_checkpoint(mae, task={"name": "demo", "spacing": [4.5, 4.5, 4.5]}), tmp_path / "last.pt")
    assert main(["export", "--format", "nnssl", str(tmp_path / "last.pt")]) == 0
    folder = tmp_path / "last_nnssl"
    assert f"wrote {folder / 'checkpoint_final.pth'}, {folder / 'adaptation_plan.json'}" in capsys.readouterr().out
    written = torch.load(folder / "checkpoint_final.pth", weights_only=True)
    assert set(written["network_weights"]) == {k for k in mae.state_dict() if not k.startswith("mask_tokens.")}
    plan = json.loads((folder / "adaptation_plan.json").read_text())
    assert plan["trainer_name"] == "medmae" and plan["key_to_encoder"] == "encoder.stages"
    assert plan["architecture_plans"]["arch_kwargs"]["features_per_stage"] == [8, 16, 32, 64, 64]


def test_export_refuses_a_checkpoint_of_another_family(tmp_path, capsys):
    save_checkpoint(model_checkpoint(create_model("mae_vit_tiny_patch16_3d", img_size=32)), tmp_path / "vit.pt")
    assert main(["export", "--format", "nnssl", str(tmp_path / "vit.pt"), "--output-dir", str(tmp_path / "out")]) == 2
    assert "holds mae_vit_tiny_patch16_3d; nnssl exports take a 3D ResEnc checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
