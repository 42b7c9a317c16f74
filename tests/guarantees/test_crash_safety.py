"""Crash safety: pretraining and fine-tuning runs SIGKILLed again and again, at random moments, between
checkpoints and inside each step of a checkpoint write, each time continued with ``--resume``, end with the
same weights as runs never interrupted (bitwise, on CPU). A byte flipped in ``last.pt`` is caught by its
checksum and the run goes on from ``previous.pt``. Under ``torchrun --max-restarts 1`` a worker killed
mid-run is restarted and resumes from the last checkpoint."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from medmae.checkpoint import load_checkpoint
from tests.helpers import TINY, demo_run, run_torchrun

EPOCHS = 40  # 12 kills at the 1st to 3rd checkpoint passage use up at most 36 epochs


STAGES = {
    "pretrain": ["--set", f"train.epochs={EPOCHS}"],
    "finetune": ["--set", f"train.epochs={EPOCHS}", "--set", "train.val_every=5", "--label-fraction", "0.5"],
}


# Runs medmae's command line after arranging to SIGKILL itself at the COUNT-th passage through POINT:
# write (half-way through torch.save's bytes), checksum (the checkpoint renamed into place, its .sha256
# not yet written), rotate (inside the real move_checkpoint: last.pt renamed to previous.pt, its checksum
# not yet moved), between (on entering the COUNT-th checkpoint save: the one before is whole), or never.
DRIVER = """
import io, os, pathlib, signal, sys
import torch
import medmae.checkpoint as checkpoint
import medmae.training.run_folder as run
point, count, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
passes = [0]

def due():
    passes[0] += 1
    return passes[0] == count

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if point == "write":
    real_save = torch.save
    def save(obj, handle, *args, **kwargs):
        if due():
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            handle.flush()
            die()
        real_save(obj, handle, *args, **kwargs)
    torch.save = save
elif point == "checksum":
    real_write = checkpoint.write_text
    def write_text(path, text):
        if due():
            die()
        return real_write(path, text)
    checkpoint.write_text = write_text
elif point == "rotate":
    real_move, real_replace = run.move_checkpoint, pathlib.Path.replace
    def move(source, target):
        if due():
            def replace(self, other):
                result = real_replace(self, other)
                if self == source:
                    die()
                return result
            pathlib.Path.replace = replace
        real_move(source, target)
    run.move_checkpoint = move
elif point == "between":
    real_run_save = run.RunFolder.save
    def run_save(self, payload, best=False):
        if due():
            die()
        real_run_save(self, payload, best)
    run.RunFolder.save = run_save
from medmae.cli import main
sys.exit(main(argv))
"""


def command(driver: Path, stage: str, root: Path, output: Path, point: str = "never", count: int = 0) -> list[str]:
    return [
        sys.executable,
        str(driver),
        point,
        str(count),
        stage,
        "--task",
        "demo",
        "--data-root",
        str(root),
        "--config",
        TINY,
        "--output-dir",
        str(output),
        "--resume",
        *STAGES[stage],
    ]


def kill_schedule(seed: int, kills: int) -> list[tuple[str, int, float]]:
    """(point, count, delay): checkpoint-write kills at the 1st to 3rd passage, and kills after a random
    delay (seconds from the start, the import and data set-up included)."""
    rng = random.Random(seed)
    points = ["write", "checksum", "rotate", "random"]
    return [(points[k % 4], rng.randint(1, 3), rng.uniform(2.0, 9.0)) for k in range(kills)]


def run_until_done(driver: Path, stage: str, root: Path, output: Path, schedule, corrupt_after: int) -> dict[str, int]:
    """Run ``stage`` under each kill of ``schedule`` (resuming every time), then to the end. Kill number
    ``corrupt_after`` comes between two checkpoints instead, and then a byte of ``last.pt`` is flipped.
    Returns what happened."""
    seen = {"killed": 0, "finished_early": 0, "passed_over": 0}
    for k, (point, count, delay) in enumerate(schedule):
        if k == corrupt_after:
            point, count = "between", 2
        process = subprocess.Popen(
            command(driver, stage, root, output, point if point != "random" else "never", count),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            encoding="utf-8",
            errors="replace",
        )
        if point == "random":
            try:
                process.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGKILL)
        stderr = process.communicate()[1]
        seen["passed_over"] += "passing over" in stderr
        if process.returncode == -signal.SIGKILL:
            seen["killed"] += 1
        else:
            assert process.returncode == 0, stderr[-3000:]
            seen["finished_early"] += 1
            break
        last = output / "checkpoints" / "last.pt"
        if k == corrupt_after:
            assert last.exists() and last.with_name("last.pt.sha256").exists()
            raw = bytearray(last.read_bytes())
            raw[len(raw) // 2] ^= 0xFF
            last.write_bytes(bytes(raw))
            seen["corrupted"] = 1
    final = subprocess.run(
        command(driver, stage, root, output), capture_output=True, encoding="utf-8", errors="replace", check=False
    )
    assert final.returncode == 0, final.stderr[-3000:]
    seen["passed_over"] += "passing over" in final.stderr
    return seen


TORCHRUN_SCRIPT = """
import os, signal, sys, threading, time
from pathlib import Path
from medmae.cli import main
output = Path(sys.argv[sys.argv.index("--output-dir") + 1])
if os.environ["RANK"] == "1" and os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0":
    def kill_after_first_checkpoint():
        while not (output / "checkpoints" / "last.pt.sha256").exists():
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGKILL)
    threading.Thread(target=kill_after_first_checkpoint, daemon=True).start()
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("stage, kills", [("pretrain", 12), ("finetune", 12)])
def test_runs_killed_again_and_again_end_with_the_uninterrupted_weights(tmp_path, demo_root, stage, kills):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    whole = subprocess.run(
        command(driver, stage, demo_root, tmp_path / "whole"),
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        check=False,
    )
    assert whole.returncode == 0, whole.stderr[-3000:]
    output = tmp_path / "killed"
    seen = run_until_done(
        driver,
        stage,
        demo_root,
        output,
        kill_schedule(seed=sorted(STAGES).index(stage), kills=kills),
        corrupt_after=kills // 2,
    )
    assert seen["killed"] >= kills - 2, seen  # a late kill may find the run already finished
    assert seen.get("corrupted") and seen["passed_over"] >= 1, seen
    assert (output / "checkpoints" / "last.pt.corrupt").exists()  # set aside, never rotated over previous.pt
    names = ["last.pt", *(["best.pt"] if stage == "finetune" else [])]
    for name in names:
        reference, resumed = (load_checkpoint(tmp_path / run / "checkpoints" / name) for run in ("whole", "killed"))
        assert (reference["epoch"], reference["step"]) == (resumed["epoch"], resumed["step"])
        assert all(
            torch.equal(reference["state_dict"][key], resumed["state_dict"][key]) for key in reference["state_dict"]
        )
    metrics = [pd.read_csv(tmp_path / run / "metrics.csv") for run in ("whole", "killed")]
    assert metrics[0]["loss"].tolist() == metrics[1]["loss"].tolist()
    assert not list((output / "checkpoints").glob(".*.tmp"))


@pytest.mark.slow
def test_torchrun_restarts_a_killed_worker_and_the_run_resumes(tmp_path, demo_root):
    script = tmp_path / "worker.py"
    script.write_text(TORCHRUN_SCRIPT)
    output = tmp_path / "ddp"
    started = time.time()
    run = run_torchrun(
        [
            "--max-restarts",
            "1",
            str(script),
            *demo_run("pretrain", demo_root, output),
            "--resume",
            "--set",
            "train.epochs=6",
            "--set",
            "train.dist_timeout_min=2",
        ]
    )
    assert run.returncode == 0, run.stderr[-4000:]
    assert "resuming from" in run.stderr and "restart" in run.stderr.lower(), run.stderr[-4000:]
    final = load_checkpoint(output / "checkpoints" / "last.pt")
    assert final["epoch"] == 6 and os.path.getmtime(output / "checkpoints" / "last.pt") > started
    metrics = pd.read_csv(output / "metrics.csv")
    assert metrics["epoch"].tolist() == list(range(1, 7))
