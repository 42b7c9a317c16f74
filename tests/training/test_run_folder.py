"""The run folder: checkpoint rotation, falling back past a corrupt last.pt, metrics history, TensorBoard."""

from __future__ import annotations

import logging
import sys

import pytest
import torch

from medmae.checkpoint import move_checkpoint
from medmae.errors import UserError
from medmae.training.run_folder import RunFolder


def payload(epoch: int) -> dict:
    """The smallest checkpoint a run can resume from: model config and tensors, and the training state."""
    return {
        "format": "medmae-checkpoint-1",
        "epoch": epoch,
        "config": {"name": "w"},
        "state_dict": {"w": torch.full((2,), float(epoch))},
        "stage": "pretrain",
        "run_config": {},
        "progress": {"epoch": epoch},
        "optimizer": {"state": {}},
        "scaler": {},
        "rng": {},
    }


def test_last_becomes_previous_and_best_has_no_optimiser(tmp_path):
    run = RunFolder(tmp_path, write=True)
    run.prepare(resume=False)
    run.save(payload(1))
    run.save(payload(2), best=True)
    assert run.latest()["epoch"] == 2
    assert torch.load(run.checkpoints / "previous.pt", weights_only=True)["epoch"] == 1
    best = torch.load(run.checkpoints / "best.pt", weights_only=True)
    assert best["epoch"] == 2 and "optimizer" not in best and "scaler" not in best
    assert not list(run.checkpoints.glob(".*tmp"))  # no temporary file left behind


def test_a_corrupt_last_checkpoint_is_passed_over_for_the_previous_one(tmp_path, caplog):
    run = RunFolder(tmp_path, write=True)
    run.prepare(resume=False)
    run.save(payload(1))
    run.save(payload(2))
    (run.checkpoints / "last.pt").write_bytes(b"truncated")
    assert run.latest()["epoch"] == 1
    assert "passing over" in caplog.text and "last.pt" in caplog.text


def test_best_pt_in_place_of_last_pt_is_passed_over(tmp_path, caplog):
    run = RunFolder(tmp_path, write=True)
    run.prepare(resume=False)
    run.save(payload(1))
    run.save(payload(2), best=True)
    move_checkpoint(run.checkpoints / "best.pt", run.checkpoints / "last.pt")  # checksum and all
    assert run.latest()["epoch"] == 1 and "holds no optimizer, scaler" in caplog.text  # nothing to resume with


def test_only_the_main_process_writes(tmp_path):
    run = RunFolder(tmp_path / "run", write=False)
    run.prepare(resume=False)
    run.save(payload(1), best=True)
    run.log_epoch([{"epoch": 1, "step": 2, "loss": 0.5}])
    assert not (tmp_path / "run").exists()


def test_history_drops_rows_after_the_checkpoint_and_an_existing_run_is_kept(tmp_path):
    run = RunFolder(tmp_path, write=True)
    run.prepare(resume=False)
    run.log_epoch([{"epoch": e, "step": 2 * e, "loss": 1.0 / e} for e in (1, 2, 3)])
    assert [row["epoch"] for row in run.history(2)] == [1, 2]
    (tmp_path / "config.yaml").write_text("model: {}\n")
    RunFolder(tmp_path, write=True).prepare(resume=False)  # a config without a checkpoint: killed early, redone
    run.save(payload(1))
    with pytest.raises(UserError, match="already holds a run"):
        RunFolder(tmp_path, write=True).prepare(resume=False)


def test_each_epoch_row_goes_to_real_tensorboard_event_files(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = RunFolder(tmp_path, write=True)
    run.log_epoch([{"epoch": 1, "step": 4, "loss": 0.5, "lr": 1e-3, "val_mean_dsc": 0.7}])
    run.log_epoch([{"epoch": 1, "step": 4, "loss": 0.5}, {"epoch": 2, "step": 8, "loss": 0.25, "lr": 5e-4}])
    run.close()
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    assert sorted(events.Tags()["scalars"]) == ["loss", "lr", "val_mean_dsc"]
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(4, 0.5), (8, 0.25)]


def test_without_tensorboard_a_run_says_how_to_get_it_once(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="medmae")
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as when not installed
    run = RunFolder(tmp_path, write=True)
    for epoch in (1, 2):
        run.log_epoch([{"epoch": epoch, "step": 2 * epoch, "loss": 0.5}])
    assert caplog.text.count("pip install 'medmae[tensorboard]'") == 1 and not (tmp_path / "tensorboard").exists()
