"""Ctrl-C and SIGTERM (a batch scheduler's stop): exit 130 or 143 with one line saying how to go on, no
traceback; a run stopped before its first checkpoint leaves nothing behind, one stopped later keeps it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from medmae.training.run_folder import RunFolder
from tests.helpers import demo_run


def start(demo_root, output, *extra, stage="pretrain"):
    """The command in a session of its own, so that a stop can reach its whole process group."""
    command = [sys.executable, "-m", "medmae", *demo_run(stage, demo_root, output, *extra)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )


def stop_when(process, ready, sig, timeout=180.0, group=False):
    """Send ``sig`` (to the whole process group, as a batch scheduler does, with ``group``) once ``ready()``
    holds, then a moment later (the run is in its loop); return stderr."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "the run never got there"
        time.sleep(0.1)
    time.sleep(1.0)
    os.killpg(process.pid, sig) if group else process.send_signal(sig)
    return process.communicate(timeout=120)[1]


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_run_stopped_before_its_first_checkpoint_leaves_nothing(tmp_path, demo_root, sig, code):
    output = tmp_path / "run"
    process = start(demo_root, output, "--set", "train.steps_per_epoch=100000")
    err = stop_when(process, (output / "config.yaml").exists, sig)
    assert process.returncode == code, err
    assert "Traceback" not in err and "medmae: interrupted; rerun the same command" in err
    assert not output.exists()  # nothing worth resuming: the folder the run made is gone


def test_a_run_stopped_after_a_checkpoint_keeps_it_for_resume(tmp_path, demo_root):
    output = tmp_path / "run"
    process = start(demo_root, output, "--set", "train.epochs=100000")
    err = stop_when(process, (output / "checkpoints" / "last.pt").exists, signal.SIGTERM)
    assert process.returncode == 143 and "add --resume" in err and "Traceback" not in err
    assert RunFolder(output, write=False).latest()["epoch"] >= 1  # last.pt, or previous.pt if stopped mid-save


def test_a_stop_sent_to_the_process_group_with_loader_workers_is_still_a_stop(tmp_path, demo_root):
    output = tmp_path / "run"
    process = start(demo_root, output, "--set", "train.epochs=100000", "--set", "data.num_workers=2", stage="finetune")
    err = stop_when(process, (output / "checkpoints" / "last.pt").exists, signal.SIGTERM, group=True)
    assert process.returncode == 143 and "medmae: interrupted" in err and "Traceback" not in err, err[-2000:]
