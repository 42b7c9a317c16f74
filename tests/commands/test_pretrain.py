"""``medmae pretrain`` from the command line: it says where the checkpoints are, in runs/<task>_pretrain
unless ``--output-dir`` is given."""

from __future__ import annotations

from medmae.checkpoint import load_checkpoint
from medmae.cli import main
from tests.helpers import TINY


def test_pretraining_writes_its_run_folder_and_says_where(capsys, demo_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["pretrain", "--task", "demo", "--data-root", str(demo_root), "--config", TINY]) == 0
    assert "pretraining finished; checkpoints in runs/demo_pretrain/checkpoints" in capsys.readouterr().out
    last = load_checkpoint(tmp_path / "runs" / "demo_pretrain" / "checkpoints" / "last.pt")
    assert (last["stage"], last["epoch"], last["config"]["name"]) == ("pretrain", 2, "mae_vit_tiny_patch16_3d")
