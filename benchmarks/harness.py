"""What the benchmarks share: timing on a device, peak memory, FLOPs, one optimiser step, records grouped for
ratios, a bar chart of ratios, JSON-lines output, and a task's volumes read through medmae's own pipeline.

Scripts run as ``python benchmarks/<name>.py``, which puts this folder on ``sys.path``, and import it as
``from harness import ...``.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from medmae.data.loaders import CaseDataset
from medmae.data.manifests import load_split
from medmae.devices import autocast
from medmae.tasks import TaskSpec
from medmae.training.optim import build_optimizer

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HIPPOCAMPUS = SHARED_DATA / "msd_hippocampus"
LABELLED = ("train", "validation", "test")

# ------------------------------------------------------------------------------------------- timing


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; the CPU needs nothing)."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_times(
    step: Callable[[], object], device: torch.device, seconds: float, warmup: int = 2, at_least: int = 3
) -> list[float]:
    """Seconds of each call of ``step()`` over about ``seconds`` (``at_least`` calls) after ``warmup``
    untimed ones, the device synchronised before and after each call."""
    for _ in range(warmup):
        step()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < at_least or time.perf_counter() - started < seconds:
        synchronize(device)
        begin = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - begin)
    return times


class PeakMemory:
    """Peak memory in MiB over a ``with`` block: CUDA allocator peak, or sampled process RSS on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0.0
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:  # noqa: PYI034 - typing.Self needs Python 3.11; medmae supports 3.10
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        else:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while not self._stop.wait(0.02):
            resident = int(Path("/proc/self/statm").read_text().split()[1]) * page
            self.peak = max(self.peak, resident / 2**20)

    def __exit__(self, *_) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            self._stop.set()
            self._thread.join()


def quartiles(times: Sequence[float]) -> tuple[float, float, float]:
    """The first quartile, median and third quartile of step ``times`` (one time: that time thrice)."""
    return tuple(statistics.quantiles(times, n=4)) if len(times) > 1 else (times[0],) * 3


def free(device: torch.device) -> None:
    """Collect what nothing refers to any more and hand the CUDA cache back."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU with its thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU, {torch.get_num_threads()} threads"


# -------------------------------------------------------------------------------------------- steps


def train_step(
    model: torch.nn.Module, loss_of: Callable[[], torch.Tensor], precision: str, device: torch.device
) -> Callable[[], None]:
    """One optimiser step (AdamW, fused on GPU) of the scalar ``loss_of()`` under ``precision``'s autocast."""
    optimizer = build_optimizer(model, 1e-4, 0.05, (0.9, 0.95))

    def step() -> None:
        with autocast(precision, device):
            loss = loss_of()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def step_flops(step: Callable[[], object]) -> int:
    """FLOPs of one call of ``step()`` (matrix products and attention, forward and backward)."""
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops()


# ------------------------------------------------------------------------------------------ reports


def grouped(records: list[dict], group: str, member: str) -> dict[str, dict[str, dict]]:
    """``{record[group]: {record[member]: record}}``, groups and members in the order they first appear: the
    implementations of each case, side by side for their ratios."""
    groups: dict[str, dict[str, dict]] = {}
    for record in records:
        groups.setdefault(record[group], {})[record[member]] = record
    return groups


def ratio_chart(path: Path, labels: list[str], series: dict[str, list[float]], title: str, axis: str) -> None:
    """Horizontal bars, one group per label (the first on top) with a bar per series, each marked with its
    value, beside the line of parity at 1; the series are named in a legend when there are several."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height = 0.8 / len(series)
    rows = range(len(labels) - 1, -1, -1)
    figure, axes = plt.subplots(figsize=(7, 0.45 * len(labels) * len(series) + 1.2))
    for k, (name, values) in enumerate(series.items()):
        ys = [row + (len(series) - 1 - 2 * k) * height / 2 for row in rows]
        axes.barh(ys, values, height, label=name)
        for y, value in zip(ys, values):
            axes.text(value, y, f" {value:.2f}x", va="center", fontsize=8)
    axes.set_yticks(list(rows), labels)
    axes.axvline(1.0, color="black", linewidth=1)
    axes.set_xlabel(axis)
    axes.set_xlim(0, max(max(values) for values in series.values()) * 1.25)
    if len(series) > 1:
        axes.legend(fontsize=7)
    axes.set_title(title, fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_lines(path: Path, lines: list[dict]) -> None:
    """``lines`` as a JSON-lines file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


# --------------------------------------------------------------------------------------------- data


def task_volumes(
    task: TaskSpec,
    root: Path,
    stage: str = "validation",
    parts: Sequence[str] = LABELLED,
    split: str | None = None,
) -> list[dict[str, torch.Tensor]]:
    """The cases in ``parts`` of ``split`` (default: the task's default split) at ``root``, in order of case
    id, each through the task's ``stage`` chain, as plain tensors: ``image`` ``[C, *S]`` and, for
    "validation", ``label`` ``[1, *S]``; "inference" gives the image only. Both pad each volume to at least
    the task's ROI."""
    chosen = load_split(task, root, split=split)
    cases = sorted({case.id: case for part in parts for case in chosen.parts[part]}.values(), key=lambda c: c.id)
    dataset = CaseDataset(task, cases, stage)
    keys = ("image", "label") if stage == "validation" else ("image",)
    items = (dataset[k] for k in range(len(dataset)))
    return [{key: item[key].as_subclass(torch.Tensor) for key in keys} for item in items]
