import os
import stat

import pytest
import torch

from medmae.engine.checkpoint import CheckpointError, load_checkpoint, model_checkpoint, save_checkpoint
from medmae.models import create_model, unetr_from_pretrained


def test_round_trip_describes_the_model_and_leaves_no_temporary_file(tmp_path):
    model = create_model("mae_vit_tiny_patch16_3d", img_size=32)
    umask = os.umask(0o027)
    try:
        path = save_checkpoint(model_checkpoint(model, step=3), tmp_path / "checkpoints" / "last.pt")
    finally:
        os.umask(umask)
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # as a plain open() under that umask, not mkstemp's 0600
    payload = load_checkpoint(path)
    assert payload["config"]["name"] == "mae_vit_tiny_patch16_3d"
    assert payload["config"]["img_size"] == [32, 32, 32] and payload["step"] == 3
    assert all(torch.equal(payload["state_dict"][k], v) for k, v in model.state_dict().items())
    unetr, report = unetr_from_pretrained(path, out_channels=2)
    assert unetr.config["name"] == "unetr_vit_tiny_patch16_3d" and len(report.loaded) == 149


def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = save_checkpoint({"format": "medmae-checkpoint-1", "value": 1}, tmp_path / "last.pt")

    def broken_save(obj, handle):
        handle.write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint({"format": "medmae-checkpoint-1", "value": 2}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    assert load_checkpoint(path)["value"] == 1


def test_unreadable_or_foreign_files_are_refused_by_name(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(CheckpointError, match="truncated.pt: not a readable"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(1)}, foreign)
    with pytest.raises(CheckpointError, match="foreign.pt: not a medmae checkpoint"):
        load_checkpoint(foreign)
