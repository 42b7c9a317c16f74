"""The training loop: divergence stops the run, gradient accumulation equals the larger batch, and the
compile and activation-checkpointing switches reach the step."""

from __future__ import annotations

import logging
import os
import signal
import sys
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from medmae.checkpoint import load_checkpoint
from medmae.cli import _quiet_when_terminated, main
from medmae.config import Config
from medmae.errors import STOPPED, Terminated
from medmae.models.encoder import TransformerBlock
from medmae.training import loop, pretrain
from medmae.training.loop import Progress, stopped_early
from medmae.training.session import RunRequest
from tests.helpers import TINY, demo_run


def test_a_diverging_run_stops_with_a_clear_message(tmp_path, demo_root, capsys):
    output = tmp_path / "diverged"
    code = main(demo_run("pretrain", demo_root, output, "--set", "optim.base_lr=1e30", "--set", "train.epochs=3"))
    assert code == 2
    assert "the loss became" in capsys.readouterr().err
    assert not (output / "checkpoints" / "last.pt").exists()


def test_gradient_accumulation_matches_the_larger_batch(tmp_path, demo_root):
    """Two micro-batches of 2 take the same samples, masks and learning rate as one batch of 4."""
    common = {"task": "demo", "data_root": str(demo_root), "config_file": TINY}
    whole = pretrain.run(RunRequest(**common, output_dir=str(tmp_path / "a"), overrides=["data.batch_size=4"]))
    split = pretrain.run(
        RunRequest(**common, output_dir=str(tmp_path / "b"), overrides=["data.batch_size=2", "optim.accumulate=2"])
    )
    assert (
        pd.read_csv(tmp_path / "a" / "metrics.csv")["lr"].tolist()
        == pd.read_csv(tmp_path / "b" / "metrics.csv")["lr"].tolist()
    )
    a, b = whole.state_dict(), split.state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5  # float32 sums in another order


def test_compile_and_activation_checkpointing_switches_reach_the_training_step(tmp_path, demo_root, monkeypatch):
    """``train.compile`` compiles every block's two branches and the MAE loss in the given mode (here with
    the eager backend, to spare a CPU test the minute inductor takes; test_compilation.py runs inductor);
    the model is eager again after the run and checkpoints hold the plain model's keys."""
    compiled, original = [], torch.compile

    def compile_eagerly(function, **kwargs):
        compiled.append((function.__name__, kwargs["mode"]))
        return original(function, backend="eager")

    monkeypatch.setattr(torch, "compile", compile_eagerly)
    model = pretrain.run(
        RunRequest(
            "demo",
            str(demo_root),
            config_file=TINY,
            output_dir=str(tmp_path / "run"),
            overrides=["train.compile=true", "train.activation_checkpointing=true", "train.compile_mode=max-autotune"],
        )
    )
    blocks = [block for block in model.modules() if isinstance(block, TransformerBlock)]
    assert sorted(compiled) == sorted(
        [("attention", "max-autotune"), ("feed_forward", "max-autotune")] * len(blocks)
        + [("hidden_patch_loss", "max-autotune")]
    )
    assert all(block.checkpointed and "attention" not in vars(block) for block in blocks)  # eager again
    assert pd.read_csv(tmp_path / "run" / "metrics.csv")["loss"].notna().all()
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["state_dict"]
    assert saved.keys() == model.state_dict().keys() and not any(k.startswith("_orig_mod") for k in saved)


@pytest.mark.parametrize(
    ("patience", "epoch", "best_epoch", "stopped"),
    [(None, 50, 1, False), (2, 5, None, False), (2, 39, 20, False), (2, 40, 20, True), (1, 31, 20, True)],
)
def test_stopped_early_counts_validations_since_the_best(patience, epoch, best_epoch, stopped):
    """``train.val_every`` 10: patience 2 stops 20 epochs after the best score, not before."""
    cfg = Config()
    cfg.train.val_every, cfg.train.patience = 10, patience
    assert stopped_early(cfg, Progress(epoch=epoch, best_epoch=best_epoch)) is stopped


def test_a_log_that_is_not_a_terminal_gets_a_line_a_minute_with_rate_and_time_left(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="medmae")
    now = [0.0]
    monkeypatch.setattr(loop.time, "monotonic", lambda: now[0])
    heartbeat = loop.Heartbeat(total_steps=1000, first_step=0, every=60.0)  # started at 0 s
    for step, seconds in ((5, 30.0), (10, 61.0), (15, 90.0), (20, 125.0)):
        now[0] = seconds
        heartbeat.beat(step, f"epoch 1/5, step {step}", 0.5, 1e-3)
    assert caplog.messages == [
        "epoch 1/5, step 10 of 1000: loss 0.5, lr 0.001, 0.164 steps/s, about 1h40m left",
        "epoch 1/5, step 20 of 1000: loss 0.5, lr 0.001, 0.16 steps/s, about 1h42m left",
    ]
    assert [loop.span(s) for s in (45, 725, 11220)] == ["45s", "12m05s", "3h07m"]


def test_a_long_cpu_run_warns_once_after_three_steps_with_advice(monkeypatch, caplog):
    now = [0.0]
    monkeypatch.setattr(loop.time, "monotonic", lambda: now[0])
    heartbeat = loop.Heartbeat(total_steps=40_000, first_step=0, enabled=False, advice=loop.CPU_ADVICE)
    for step in range(1, 6):
        now[0] = 2.0 * step  # 2 s a step: 22 hours for 40,000 steps
        heartbeat.pace(step)
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"this run needs about 22h13m more at 0.5 steps/s; {loop.CPU_ADVICE}"]
    quick = loop.Heartbeat(total_steps=100, first_step=0, enabled=False, advice=loop.CPU_ADVICE)
    for step in range(1, 6):
        now[0] = 10.0 + step
        quick.pace(step)
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1  # 100 steps: no warning


def test_a_sigterm_whose_exception_was_swallowed_still_stops_the_next_step(tmp_path, demo_root, monkeypatch):
    """The handler raises at once, but a finaliser can swallow that exception (here one collected as the
    progress bar starts); the flag it leaves stops the run at its next step, exit 143, with no "Exception
    ignored" traceback, and a later command in the same process starts unstopped."""
    bar = loop.tqdm

    class StoppedWhenCollected:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)

    def bar_after_a_finaliser(*args, **kwargs):
        StoppedWhenCollected()  # collected at once: Terminated is raised inside __del__ and swallowed there
        return bar(*args, **kwargs)

    reported = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)
    monkeypatch.setattr(loop, "tqdm", bar_after_a_finaliser)
    output = tmp_path / "stopped"
    assert main(demo_run("pretrain", demo_root, output)) == 143
    assert not output.exists()  # stopped in its first step: nothing worth resuming is left
    assert reported == [] and sys.unraisablehook == reported.append and STOPPED["by"] is None


def test_only_a_swallowed_terminated_goes_unreported():
    reported = []
    for error in (Terminated(), ValueError("a real problem")):
        _quiet_when_terminated(reported.append, SimpleNamespace(exc_value=error))
    assert [type(u.exc_value) for u in reported] == [ValueError]
