"""Starting and ending a run: the ROI from ``model.img_size``, a run that fails before its first checkpoint
leaves nothing, and a pretraining killed after its first checkpoint resumes where it left off (a resume
that changes the config is refused), with the CPU thread count it started with."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from medmae.checkpoint import load_checkpoint
from medmae.cli import main
from tests.helpers import TINY, demo_run


def _pretrain_command(demo_root: Path, output: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "medmae", *demo_run("pretrain", demo_root, output, *extra)]


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["cached", "monai"])
def test_a_killed_pretraining_resumes_where_its_checkpoint_left_off(tmp_path, demo_root, sampler):
    epochs = ["--set", "train.epochs=12", "--set", f"data.sampler={sampler}"]
    subprocess.run(_pretrain_command(demo_root, tmp_path / "whole", *epochs), check=True, capture_output=True)
    killed = tmp_path / "killed"
    process = subprocess.Popen(
        _pretrain_command(demo_root, killed, *epochs), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    while not (killed / "checkpoints" / "last.pt").exists() and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    saved = load_checkpoint(killed / "checkpoints" / "last.pt")
    assert 1 <= saved["epoch"] < 12
    resumed = subprocess.run(
        _pretrain_command(demo_root, killed, *epochs, "--resume"),
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed at epoch {saved['epoch']}, step {saved['step']}" in resumed.stderr
    whole, after = (pd.read_csv(tmp_path / name / "metrics.csv") for name in ("whole", "killed"))
    assert list(after["epoch"]) == list(range(1, 13)) and list(after["step"]) == list(whole["step"])
    assert np.array_equal(after["lr"], whole["lr"])  # the schedule continues at the saved step
    assert np.array_equal(after["loss"], whole["loss"])  # crops, flips and masks are seeded per sample and pass
    final = [load_checkpoint(tmp_path / name / "checkpoints" / "last.pt")["state_dict"] for name in ("whole", "killed")]
    assert all(torch.equal(final[0][k], final[1][k]) for k in final[0])

    again = main(["pretrain", "--task", "demo", "--data-root", str(demo_root), "--output-dir", str(killed)])
    assert again == 2  # an existing run is not overwritten without --resume
    assert (
        main(demo_run("pretrain", demo_root, killed, "--resume", *epochs, "--set", "optim.base_lr=1")) == 2
    )  # a resumed run keeps its saved config
    assert (
        main(demo_run("pretrain", demo_root, killed, "--resume", *epochs, "--set", "train.dist_timeout_min=5")) == 0
    )  # but may wait longer for other processes
    assert yaml.safe_load((killed / "config.yaml").read_text())["train"]["dist_timeout_min"] == 5


def test_an_img_size_becomes_the_roi_when_it_is_a_multiple_of_the_patch_size():
    from medmae.errors import UserError
    from medmae.tasks import load_task
    from medmae.training.session import with_roi

    task = load_task("demo")
    assert with_roi(task, None) is task
    changed = with_roi(task, [64, 64, 32])
    assert changed.roi == (64, 64, 32) and changed.record["roi"] == [64, 64, 32] and task.roi == (48, 48, 32)
    for img_size in ([40, 48, 32], [48, 48]):
        with pytest.raises(
            UserError, match=rf"model.img_size \[{img_size[0]}, 48.*: task demo needs 3 multiples of 16"
        ):
            with_roi(task, img_size)
    with pytest.raises(
        UserError,
        match=r"task demo: its ROI \[48, 48, 32\] is no multiple of this model's 32; --set "
        r"model.img_size=\[64, 64, 32\]",
    ):
        with_roi(task, None, 32)  # ResEnc L's total stride


def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_folder(tmp_path, demo_root):
    from medmae.training.session import RunRequest, running, start

    request = RunRequest("demo", data_root=str(demo_root), config_file=TINY, output_dir=str(tmp_path / "run"))
    setup = start("pretrain", request)
    assert (tmp_path / "run" / "config.yaml").is_file() and setup.split_record == {"task": "demo", "split": "datalist"}
    with pytest.raises(RuntimeError, match="stopped"), running(setup):
        raise RuntimeError("stopped before any checkpoint")
    assert not (tmp_path / "run").exists()


def test_a_finished_run_is_extended_by_resuming_with_more_epochs(tmp_path, demo_root, caplog):
    caplog.set_level(logging.INFO, logger="medmae")
    run = tmp_path / "run"
    assert main(demo_run("pretrain", demo_root, run)) == 0  # the tiny recipe: 2 epochs
    assert main(demo_run("pretrain", demo_root, run, "--resume", "--set", "train.epochs=4")) == 0
    assert "train.epochs 2 -> 4: the warm-up and cosine schedule are recomputed over 4 epochs" in caplog.text
    assert main(demo_run("pretrain", demo_root, tmp_path / "four", "--set", "train.epochs=4")) == 0
    extended, four = (pd.read_csv(folder / "metrics.csv") for folder in (run, tmp_path / "four"))
    assert list(extended["epoch"]) == [1, 2, 3, 4] and load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 4
    assert np.allclose(extended["lr"][2:], four["lr"][2:])  # epochs 3 and 4 follow the 4-epoch schedule


ONE_STEP = [f for key in ("train.epochs=1", "optim.warmup_epochs=0", "train.steps_per_epoch=1") for f in ("--set", key)]


def test_a_second_run_into_a_live_run_folder_is_refused_naming_the_holder(tmp_path, demo_root, capsys):
    """The hold dies with its process: a run killed with SIGKILL leaves a folder that the next run takes."""
    output = tmp_path / "run"
    hold = (
        f"from pathlib import Path; from medmae.files import lock_folder; held = lock_folder(Path({str(output)!r})); "
        "print('held', flush=True); import time; time.sleep(120)"
    )
    holder = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(demo_run("finetune", demo_root, output, *ONE_STEP)) == 2
        err = capsys.readouterr().err
        assert (
            f"{output}: in use by another run (process {holder.pid} on " in err and "choose another --output-dir" in err
        )
        assert main(demo_run("finetune", demo_root, output, *ONE_STEP, "--resume")) == 2
    finally:
        holder.kill()
        holder.wait()
    assert main(demo_run("finetune", demo_root, output, *ONE_STEP)) == 0
    assert not (output / ".medmae.lock").exists()  # let go when the run ended


def test_a_resume_whose_task_file_changed_is_refused_naming_the_keys(tmp_path, demo_root, capsys):
    task = tmp_path / "demo.yaml"
    text = (Path(__file__).parents[2] / "tasks" / "demo.yaml").read_text()
    task.write_text(text)
    argv = demo_run("finetune", demo_root, tmp_path / "run", *ONE_STEP)
    argv[argv.index("demo")] = str(task)
    assert main(argv) == 0
    task.write_text(text.replace("spacing: [4.5, 4.5, 4.5]", "spacing: [3.0, 3.0, 3.0]"))
    capsys.readouterr()
    assert main([*argv, "--resume", "--set", "train.epochs=2"]) == 2
    err = capsys.readouterr().err
    assert "task demo has changed since: spacing (4.5, 4.5, 4.5) -> (3.0, 3.0, 3.0)" in err
    task.write_text(text.replace("title: ", "title: renamed ").replace("{fraction: 0.2, seed: 0}", "{fraction: 0.2}"))
    assert main([*argv, "--resume", "--set", "train.epochs=2"]) == 0  # a description, or a default left out


def test_the_cpu_thread_count_a_run_starts_with_is_saved_and_its_resume_computes_with_it(
    demo_root, tmp_path, monkeypatch
):
    """Another count changes the float sums: a resume on a machine whose load has changed keeps the saved
    count, unless train.threads asks for another."""
    from medmae import devices

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(devices, "available_cores", lambda: 2)
    monkeypatch.setattr(devices, "others_load", lambda: 5.0)  # busy: one thread
    run, before = tmp_path / "run", torch.get_num_threads()
    no_warmup = ("--set", "optim.warmup_epochs=0")
    try:
        assert main(demo_run("pretrain", demo_root, run, "--set", "train.epochs=1", *no_warmup)) == 0
        assert yaml.safe_load((run / "config.yaml").read_text())["train"]["threads"] == 1
        monkeypatch.setattr(devices, "others_load", lambda: 0.0)  # quiet now: two threads if started afresh
        assert main(demo_run("pretrain", demo_root, run, "--resume", "--set", "train.epochs=2", *no_warmup)) == 0
        assert torch.get_num_threads() == 1 and load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 2
        assert main(demo_run("pretrain", demo_root, run, "--resume", "--set", "train.threads=2", *no_warmup)) == 0
        assert yaml.safe_load((run / "config.yaml").read_text())["train"]["threads"] == 2
    finally:
        torch.set_num_threads(before)
