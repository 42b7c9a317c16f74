"""Seconds per training step of the demo's tiny UNETR on the CPU with N intra-op threads while K busy
processes hold cores: what thread oversubscription costs on a shared machine, and which N medmae picks.
Prints one JSON line per case.

    python benchmarks/threads.py                                  # N = 1 and all cores; K = 0, 1, 2, 4
    python benchmarks/threads.py --threads 1,2 --busy 0,3 --seconds 20

A step is one AdamW step of DiceCE on a fixed batch of the demo's shape (2 crops of 48 x 48 x 32, 5
classes) through ``unetr_vit_tiny_patch16_3d`` with the demo's 8 decoder features. Each busy process is a
Python loop that never sleeps, started before the case and ended after it. The thread counts take turns
(``--rounds``), so that a change in the rest of the machine's load falls on each alike. Each line gives the
step-time median and quartiles, the cores this process may use, the 1-minute load average when the script
started (the machine's own load) and after the case, and ``medmae_picks``: the thread count
:func:`medmae.devices.cpu_threads` gives for that many cores with a load of K (what ``medmae`` chooses once
the load average has caught up with K).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from monai.losses import DiceCELoss

from harness import quartiles, step_times, train_step, write_lines
from medmae.devices import available_cores, cpu_threads
from medmae.models import create_model

ROI = (48, 48, 32)  # the demo task's crop
CLASSES = 5  # background and 4 organs
BUSY_LOOP = "while True: pass"


@contextmanager
def busy_processes(count: int) -> Iterator[list[subprocess.Popen]]:
    """``count`` processes that keep a core busy each, for the duration of the ``with`` block."""
    spinners = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(count)]
    try:
        time.sleep(1.0 if count else 0.0)  # let them start spinning
        yield spinners
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def demo_step() -> Callable[[], None]:
    """One training step of the demo's tiny UNETR on a fixed random batch."""
    torch.manual_seed(0)
    model = create_model("unetr_vit_tiny_patch16_3d", img_size=ROI, in_channels=1, out_channels=CLASSES, feature_size=8)
    images = torch.randn(2, 1, *ROI)
    labels = torch.randint(CLASSES, (2, 1, *ROI))
    criterion = DiceCELoss(to_onehot_y=True, softmax=True)
    return train_step(model, lambda: criterion(model(images), labels), "fp32", torch.device("cpu"))


def record(threads: int, busy: int, cores: int, loads: dict[str, float], times: list[float]) -> dict:
    """One JSON line: step-time median and quartiles in seconds, and the conditions."""
    q1, median, q3 = quartiles(times)
    return {
        "case": "tiny_unetr_step",
        "threads": threads,
        "busy_processes": busy,
        "cores": cores,
        "seconds_per_step": round(median, 4),
        "seconds_q1_q3": [round(q1, 4), round(q3, 4)],
        "steps_timed": len(times),
        "medmae_picks": cpu_threads(cores, busy),
        **{key: round(value, 2) for key, value in loads.items()},
        "torch": torch.__version__,
    }


def interleaved_times(step: Callable[[], None], counts: list[int], seconds: float, rounds: int) -> dict[int, list]:
    """Step times per thread count, the counts taking turns for ``rounds`` rounds of ``seconds / rounds``
    each, so that a change in the machine's other load falls on every count alike."""
    times: dict[int, list[float]] = {count: [] for count in counts}
    for _ in range(rounds):
        for count in counts:
            torch.set_num_threads(count)
            times[count] += step_times(step, torch.device("cpu"), seconds / rounds, warmup=1)
    return times


def numbers(text: str) -> list[int]:
    return [int(part) for part in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cores = available_cores()
    parser.add_argument("--threads", type=numbers, default=sorted({1, cores}), help="comma-separated thread counts")
    parser.add_argument("--busy", type=numbers, default=[0, 1, 2, 4], help="comma-separated busy-process counts")
    parser.add_argument("--seconds", type=float, default=12.0, help="timed seconds per case (at least 3 steps a round)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds in which the thread counts take turns")
    parser.add_argument("--output", type=Path, default=None, help="also write every line to this JSON-lines file")
    args = parser.parse_args()
    step, lines = demo_step(), []
    background = os.getloadavg()[0]  # the machine's own load, before this script adds any
    for busy in args.busy:
        with busy_processes(busy):
            times = interleaved_times(step, args.threads, args.seconds, args.rounds)
        loads = {"load_1min_at_start": background, "load_1min_after_case": os.getloadavg()[0]}
        for threads in args.threads:
            lines.append(record(threads, busy, cores, loads, times[threads]))
            print(json.dumps(lines[-1]), flush=True)
    if args.output:
        write_lines(args.output, lines)


if __name__ == "__main__":
    main()
