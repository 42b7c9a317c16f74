"""Seconds per case of each prediction mode: one model, an ensemble of five, mirroring, both. Prints one
JSON line per mode.

    python benchmarks/prediction_modes.py --device cpu --output docs/results/prediction_modes/cpu.jsonl

The model is the demo's tiny UNETR fine-tuned for a few steps on generated CT-like volumes (64 x 64 x 48
voxels at 4.5 mm, ROI 48 x 48 x 32; left and right kidneys, so mirroring flips two axes: 4 passes); the five
ensemble members are that checkpoint read five times, so the
times are what the modes cost, not what they score. Each mode predicts the same cases (``--cases``) through
``predict_volumes`` (sliding windows, inversion to the image grid, label maps written), after one warm-up
case; the median seconds per case are reported with the ratio to one model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from harness import device_name, write_lines
from medmae.data.manifests import load_split
from medmae.data.synthetic import write_demo_dataset
from medmae.inference.predict import load_averaged, predict_volumes
from medmae.tasks import load_task
from medmae.training import finetune
from medmae.training.session import RunRequest

MODES = {
    "one model": (1, False),
    "ensemble of 5": (5, False),
    "mirroring": (1, True),
    "ensemble of 5, mirrored": (5, True),
}
TINY = str(Path(__file__).resolve().parents[1] / "configs" / "test" / "tiny.yaml")


def seconds_per_case(
    checkpoint: Path, members: int, mirror: bool, cases, output: Path, device: str
) -> tuple[list[float], int]:
    """Seconds per case of a mode, and its forward passes per window (members x flips)."""
    model, payloads, task, device = load_averaged([str(checkpoint)] * members, device, mirror)
    passes = members * len(getattr(model, "flips", [()]))
    times = []
    for case in [cases[0], *cases]:  # the first is a warm-up
        started = time.perf_counter()
        predict_volumes(model, task, payloads[0]["run_config"], [case], output, device, progress=False)
        times.append(time.perf_counter() - started)
    return times[1:], passes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cases", type=int, default=6, help="cases timed per mode")
    parser.add_argument("--output", type=Path, default=None, help="also write the lines to this JSON-lines file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        data = write_demo_dataset(root / "data", cases=args.cases + 4, validation=args.cases, seed=0)
        run = RunRequest(task="demo", data_root=str(data), config_file=TINY, output_dir=str(root / "run"))
        finetune.run(run)
        cases = load_split(load_task("demo"), data).test
        lines, single = [], None
        for mode, (members, mirror) in MODES.items():
            best = root / "run" / "checkpoints" / "best.pt"
            times, passes = seconds_per_case(best, members, mirror, cases, root / "out", args.device)
            median = statistics.median(times)
            single = single or median
            lines.append(
                {
                    "case": "prediction_mode",
                    "mode": mode,
                    "forward_passes_per_window": passes,
                    "seconds_per_case": round(median, 3),
                    "ratio_to_one_model": round(median / single, 2),
                    "cases_timed": len(times),
                    "device": device_name(torch.device(args.device)),
                }
            )
            print(json.dumps(lines[-1]), flush=True)
    if args.output:
        write_lines(args.output, lines)


if __name__ == "__main__":
    main()
