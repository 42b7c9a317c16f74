"""Checkpoints: atomic writes, checksums, refusal of foreign or code-carrying files and of misfit weights."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest
import torch

from medmae.checkpoint import CheckpointError, load_checkpoint, load_weights, model_checkpoint, save_checkpoint
from medmae.config import load_config
from medmae.errors import UserError
from medmae.models import create_model, unetr_from_pretrained
from medmae.tasks import load_task
from tests.helpers import demo_run


class CodePayload:
    """Unpickling this runs ``touch <marker>``: the payload a hostile checkpoint would carry."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_round_trip_describes_the_model_and_leaves_no_temporary_file(tmp_path):
    model = create_model("mae_vit_tiny_patch16_3d", img_size=32)
    umask = os.umask(0o027)
    try:
        path = save_checkpoint(model_checkpoint(model, step=3), tmp_path / "checkpoints" / "last.pt")
    finally:
        os.umask(umask)
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt", "last.pt.sha256"]
    assert (path.parent / "last.pt.sha256").read_text() == f"{hashlib.sha256(path.read_bytes()).hexdigest()}  last.pt\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # as a plain open() under that umask, not mkstemp's 0600
    payload = load_checkpoint(path)
    assert payload["config"]["name"] == "mae_vit_tiny_patch16_3d"
    assert payload["config"]["img_size"] == [32, 32, 32] and payload["step"] == 3
    assert all(torch.equal(payload["state_dict"][k], v) for k, v in model.state_dict().items())
    unetr, report = unetr_from_pretrained(path, out_channels=2)
    assert unetr.config["name"] == "unetr_vit_tiny_patch16_3d" and len(report.loaded) == 149


def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = save_checkpoint(
        {"format": "medmae-checkpoint-1", "config": {}, "state_dict": {}, "value": 1}, tmp_path / "last.pt"
    )

    def broken_save(obj, handle):
        handle.write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint({"format": "medmae-checkpoint-1", "config": {}, "state_dict": {}, "value": 2}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # its checksum went first, as it was to change
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


def test_a_flipped_byte_is_caught_by_the_checksum_and_resume_falls_back(tmp_path, caplog):
    from medmae.training.run_folder import RunFolder

    run = RunFolder(tmp_path, write=True)
    run.prepare(resume=False)
    for epoch in (1, 2):
        run.save(
            {
                "format": "medmae-checkpoint-1",
                "epoch": epoch,
                "config": {},
                "state_dict": {"w": torch.arange(1000.0) * epoch},
                "stage": "pretrain",
                "run_config": {},
                "progress": {},
                "optimizer": {},
                "scaler": {},
                "rng": {},
            }
        )
    assert sorted(p.name for p in run.checkpoints.iterdir()) == [
        "last.pt",
        "last.pt.sha256",
        "previous.pt",
        "previous.pt.sha256",
    ]
    last = run.checkpoints / "last.pt"
    raw = bytearray(last.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # inside the tensor data: torch.load alone would not notice
    last.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="last.pt: corrupt or changed after it was written"):
        load_checkpoint(last)
    assert run.latest()["epoch"] == 1 and "passing over" in caplog.text
    (run.checkpoints / "previous.pt").write_bytes(b"")
    with pytest.raises(UserError, match="no usable checkpoint to resume from: .*last.pt.*previous.pt"):
        run.latest()


def test_stale_partial_writes_are_removed_when_a_run_resumes(tmp_path):
    from medmae.training.run_folder import RunFolder

    run = RunFolder(tmp_path, write=True)
    run.prepare(resume=False)
    (run.checkpoints / ".last.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    run.prepare(resume=True)
    assert list(run.checkpoints.iterdir()) == []


def test_a_checkpoint_carrying_code_is_refused_and_the_code_never_runs(tmp_path, capsys, demo_root):
    marker, hostile = tmp_path / "code_ran", tmp_path / "hostile.pt"
    payload = model_checkpoint(create_model("mae_vit_tiny_patch16_3d", img_size=32), stage="finetune")
    torch.save({**payload, "extra": CodePayload(marker)}, hostile)
    with pytest.raises(CheckpointError, match=r"hostile.pt: refused: its pickle would call (posix|os)\.system"):
        load_checkpoint(hostile)
    from medmae.cli import main

    for command in (
        ["predict", "--checkpoint", str(hostile), "--input", str(tmp_path), "--output-dir", str(tmp_path / "p")],
        demo_run("finetune", demo_root, tmp_path / "run", "--pretrained", str(hostile)),
    ):
        assert main(command) == 2
    error = capsys.readouterr().err
    assert error.count("hostile.pt: refused: its pickle would call") == 2 and "Traceback" not in error
    assert not marker.exists()


def test_weights_of_another_geometry_are_refused_before_any_weight_changes(tmp_path):
    small, large = (create_model("unetr_vit_tiny_patch16_3d", img_size=size, out_channels=3) for size in (32, 48))
    before = {k: v.clone() for k, v in large.state_dict().items()}
    with pytest.raises(
        CheckpointError,
        match=r"elsewhere.pt: its weights do not fit unetr_vit_tiny_patch16_3d .*"
        r"position_embeddings: checkpoint \(1, 8, 48\), model \(1, 27, 48\)",
    ):
        load_weights(large, small.state_dict(), tmp_path / "elsewhere.pt")
    assert all(torch.equal(before[k], v) for k, v in large.state_dict().items())
    state = dict(small.state_dict())
    state.pop("vit.norm.weight")
    with pytest.raises(CheckpointError, match=r"missing vit.norm.weight"):
        load_weights(small, state, "x.pt")


def test_an_evaluated_checkpoint_whose_weights_disagree_with_its_config_exits_2(tmp_path, capsys):
    from medmae.cli import main

    model = create_model("unetr_vit_tiny_patch16_3d", img_size=32, out_channels=3)
    payload = model_checkpoint(model, stage="finetune")
    save_checkpoint(payload, tmp_path / "untold.pt")
    payload.update(task=load_task("demo").record, run_config=load_config("finetune", "demo").to_dict())
    payload["config"]["img_size"] = [48, 48, 48]
    save_checkpoint(payload, tmp_path / "best.pt")
    for name, problem in (
        ("untold.pt", "untold.pt: holds no task, run_config"),
        ("best.pt", "best.pt: its weights do not fit"),
    ):
        assert (
            main(
                [
                    "predict",
                    "--checkpoint",
                    str(tmp_path / name),
                    "--input",
                    str(tmp_path),
                    "--output-dir",
                    str(tmp_path.parent / "out"),
                ]
            )
            == 2
        )
        assert problem in capsys.readouterr().err


def test_a_checkpoint_without_its_checksum_is_read_with_a_note(tmp_path, caplog):
    path = save_checkpoint(
        model_checkpoint(create_model("mae_vit_tiny_patch16_3d", img_size=(32, 32, 32))), tmp_path / "a.pt"
    )
    caplog.set_level("INFO", logger="medmae")
    load_checkpoint(path)
    assert "integrity is not checked" not in caplog.text
    (tmp_path / "a.pt.sha256").unlink()
    load_checkpoint(path)
    assert f"note: {path} has no a.pt.sha256 beside it: its integrity is not checked" in caplog.text
