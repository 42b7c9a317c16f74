"""The GPU check: every speed case of benchmarks/speed.py in one prepared run of at most about 8 minutes.

    python benchmarks/gpu_check.py --output docs/results/speed/gpu_check.jsonl       # an H100 or H200
    python benchmarks/gpu_check.py --device cpu --tiny --seconds 0.3 --no-compile     # dry run (CI)

Runs the cases in order of what they decide (the MAE step alone with the bf16 matmul rate, the 3D ViT-B/16
pretraining end to end at batch 192, the BTCV recipe, 2D at batch 512, UNETR with and without cuDNN
benchmarking against MONAI, sliding windows against MONAI), eager and compiled (regional compilation, CUDA
graphs for the BTCV recipe). Each case's variants take turns in ``--rounds`` windows, so a drift of clocks
hits them alike; each record gives the rate over all windows, the median and every window's rate. Before
and after each case one line records the GPU's SM and memory clocks, power, temperature and active
throttle reasons (``nvidia-smi``). A case that would start after ``--budget`` seconds (460) is skipped
and says so. Volumes are generated (CT-sized), so no data has to travel to the GPU machine. Prints one
JSON line per record, then speed.py's ratios and the summary against issue 20's targets.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from dataclasses import asdict, replace
from pathlib import Path

import speed
import torch

from harness import device_name, write_lines

CASES = ("model", "pretrain", "btcv", "pretrain2d", "unetr", "inference")
SMI_FIELDS = ("clocks.sm", "clocks.mem", "power.draw", "temperature.gpu", "clocks_throttle_reasons.active")


def gpu_state(device: torch.device) -> dict:
    """The GPU's clocks (MHz), power (W), temperature (C) and active throttle reasons (a bit mask) now."""
    if device.type != "cuda":
        return {"gpu_state": None}
    query = ["nvidia-smi", f"--query-gpu={','.join(SMI_FIELDS)}", "--format=csv,noheader,nounits"]
    query.append(f"-i={device.index or 0}")
    try:
        values = subprocess.run(query, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError) as error:
        return {"gpu_state": f"nvidia-smi failed: {error}"}
    return {"gpu_state": dict(zip(SMI_FIELDS, (v.strip() for v in values.split(","))))}


def run_case(name: str, s: speed.Settings, device: torch.device, volumes: list[dict]) -> list[dict]:
    """speed.py's case ``name``; the 3D pretraining cases on ``volumes``."""
    if name in ("pretrain", "btcv"):
        return {"pretrain": speed.case_pretrain, "btcv": speed.case_btcv}[name](s, device, volumes)
    return {
        "model": speed.case_model,
        "pretrain2d": speed.case_pretrain2d,
        "unetr": speed.case_unetr,
        "inference": speed.case_inference,
    }[name](s, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny models and small inputs (the CPU dry run)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {', '.join(CASES)}")
    parser.add_argument("--seconds", type=float, default=None, help="timed seconds per variant, all windows")
    parser.add_argument("--rounds", type=int, default=3, help="windows per variant, taken in turns")
    parser.add_argument("--budget", type=float, default=460.0, help="seconds after which no case starts")
    parser.add_argument("--no-compile", action="store_true", help="eager variants only (a quick dry run)")
    parser.add_argument("--output", type=Path, default=None, help="also write every line to this JSON-lines file")
    args = parser.parse_args()
    cases = args.cases.split(",")
    if unknown := set(cases) - set(CASES):
        parser.error(f"unknown cases {sorted(unknown)}; choose from {', '.join(CASES)}")
    started, device = time.monotonic(), torch.device(args.device)
    base = speed.TINY if args.tiny else speed.GPU
    s = replace(base, seconds=args.seconds or base.seconds, rounds=args.rounds, compile=not args.no_compile)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # MONAI's fp32 anchor as TF32
    torch.manual_seed(0)
    header = {"case": "setup", "device": device_name(device), "torch": torch.__version__, **asdict(s)}
    header |= {"cuda": torch.version.cuda, "budget_s": args.budget, **gpu_state(device)}
    lines, records = [header], []
    print(json.dumps(header), flush=True)
    volumes = speed.synthetic_volumes(8, (64, 64, 48)) if args.tiny else speed.synthetic_volumes(48, (160, 160, 128))
    for name in cases:
        elapsed = time.monotonic() - started
        if elapsed > args.budget:
            spent = f"not started: {elapsed:.0f} s of the {args.budget:.0f} s budget spent"
            lines.append({"case": name, "skipped": spent})
            print(json.dumps(lines[-1]), flush=True)
            continue
        before = {"case": name, "when": "before", **gpu_state(device)}
        print(json.dumps(before), flush=True)
        measured = run_case(name, s, device, volumes)
        after = {"case": name, "when": "after", "seconds": round(time.monotonic() - started - elapsed, 1)}
        after |= gpu_state(device)
        print(json.dumps(after), flush=True)
        records += measured
        lines += [before, *measured, after]
    ratio_lines = speed.ratios(records)
    closing = [*ratio_lines, speed.summary(records, ratio_lines, device)]
    closing.append({"case": "end", "wall_seconds": round(time.monotonic() - started, 1)})
    for line in closing:
        print(json.dumps(line), flush=True)
    if args.output is not None:
        write_lines(args.output, lines + closing)


if __name__ == "__main__":
    main()
