"""Does MAE self-pretraining help when labels are scarce? One command, on real data, from pretraining to
the test-set tables.

    python benchmarks/label_efficiency.py                         # MSD hippocampus, 2 CPU cores, about 90 minutes
    python benchmarks/label_efficiency.py --full                  # the same with ViT-B/16 on a GPU
    python benchmarks/label_efficiency.py --quick                 # a smoke run of every step (a minute or two)

On the ``holdout40`` split (160 training cases, 40 test cases) it pretrains one MAE on the training
images (no labels), then trains UNETR from that MAE and from scratch, with each label fraction (1.0 and
0.1 by default; the smaller fractions over ``--seeds`` seeds, which pick both the label subset and the
initialisation), each for the same number of steps; and MONAI's U-Net from scratch on the same label
sets for the same training wall time as the scratch UNETR of that fraction and seed (its steps come
from a timed calibration run). Every model is scored on the 40 test cases with ``medmae evaluate``.

Writes into ``--output`` (default ``docs/results/<task>``): ``runs.csv`` (one row per model), ``results.csv``
and ``results.md`` (mean +/- std over seeds), ``dsc_vs_labels.png``, the pretrained MAE's reconstruction
figure, every run's resolved ``config.yaml`` and ``provenance.json`` (commit, command, machine, wall time).
Checkpoints and predictions stay in ``--work-dir``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from medmae.engine import finetune, pretrain
from medmae.engine.common import RunRequest
from medmae.engine.evaluate import evaluate

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "msd_hippocampus"
UNET_BASE_LR = 0.064  # AdamW at 1e-3 for a batch of 4 (base_lr x batch / 256); UNETR keeps its recipe's rate

# Budgets: (pretraining overrides, fine-tuning overrides shared by every model).
SIZES = {
    "cpu": (["model.size=tiny", "data.batch_size=16", "train.epochs=600", "train.figure_every=100",  # about 9 minutes
             "optim.base_lr=1.5e-3", "optim.warmup_epochs=30", "data.num_workers=1"],
            ["model.size=tiny", "model.feature_size=8", "data.batch_size=4", "train.epochs=8",  # 200 steps, about 7 minutes
             "train.steps_per_epoch=25", "train.val_every=4", "optim.base_lr=0.64", "optim.warmup_epochs=1",
             "optim.clip_grad=1.0", "data.num_workers=1"]),
    "full": (["model.size=base", "train.epochs=400"],
             ["model.size=base", "train.epochs=100", "train.steps_per_epoch=20", "train.val_every=10"]),
    "quick": (["model.size=tiny", "data.batch_size=4", "train.epochs=2", "train.steps_per_epoch=2", "optim.warmup_epochs=1",
               "data.num_workers=0"],
              ["model.size=tiny", "model.feature_size=8", "data.batch_size=2", "train.epochs=2", "train.steps_per_epoch=2",
               "train.val_every=2", "optim.warmup_epochs=1", "data.num_workers=0"]),
}


def train_seconds(run: Path) -> tuple[float, int]:
    """Training wall time (validation excluded) and optimiser steps of a finished run, from metrics.csv."""
    metrics = pd.read_csv(run / "metrics.csv", comment="#")
    return float(metrics["seconds"].sum()), int(metrics["step"].iloc[-1])


def finetune_run(args, work: Path, name: str, overrides: list[str], fraction: float, seed: int,
                 pretrained: str | None = None) -> dict:
    """Fine-tune one model and score its best checkpoint on the test part; one row of ``runs.csv``."""
    run = work / name
    if not (run / "checkpoints" / "best.pt").is_file():  # finished runs are kept: a rerun continues where it stopped
        shutil.rmtree(run, ignore_errors=True)
        finetune.run(RunRequest(args.task, str(args.data_root), split=args.split, output_dir=str(run), pretrained=pretrained,
                                label_fraction=fraction, overrides=[*overrides, f"data.label_seed={seed}", f"train.seed={seed}"]))
    summary, _, _ = evaluate(str(run / "checkpoints" / "best.pt"), args.task, str(args.data_root), None, args.split,
                             args.part, str(run / f"evaluate_{args.part}"), progress=False)
    seconds, steps = train_seconds(run)
    row = {"run": name, "label_fraction": fraction, "seed": seed, "steps": steps, "train_seconds": round(seconds, 1)}
    for _, line in summary.iterrows():
        key = "mean" if line["class"] == "foreground mean" else line["class"]
        row[f"dsc_{key}"] = line["dsc_mean"]
        row[f"hd95_mm_{key}"] = line["hd95_mm_mean"]
    return row


def unet_seconds_per_step(args, work: Path, overrides: list[str]) -> float:
    """The U-Net's training seconds per step, from a short timed run (its first epoch left out)."""
    run = work / "unet_calibration"
    shutil.rmtree(run, ignore_errors=True)
    finetune.run(RunRequest(args.task, str(args.data_root), split=args.split, output_dir=str(run),
                            overrides=[*overrides, "train.epochs=3", "train.steps_per_epoch=4", "train.val_every=100",
                                       "optim.warmup_epochs=1"]))
    metrics = pd.read_csv(run / "metrics.csv", comment="#")
    return float(metrics["seconds"].iloc[1:].sum()) / (4 * (len(metrics) - 1))


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and std (ddof 1) over seeds of every metric, per method and label fraction."""
    metrics = [c for c in runs.columns if c.startswith(("dsc_", "hd95_mm_"))] + ["steps", "train_seconds"]
    grouped = runs.groupby(["method", "label_fraction"], sort=False)
    table = grouped[metrics].agg(["mean", "std"])
    table.columns = [f"{metric}_{stat}" for metric, stat in table.columns]
    return table.reset_index().assign(seeds=grouped.size().values)


def markdown(table: pd.DataFrame) -> str:
    """The results as a Markdown table: mean +/- std over seeds of each class's DSC, the mean DSC and HD95."""
    columns = [c.removesuffix("_mean") for c in table.columns if c.startswith("dsc_") and c.endswith("_mean")]
    columns += ["hd95_mm_mean"]
    header = ["method", "labels", "seeds", *columns, "steps", "train s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in table.iterrows():
        cells = [row["method"], f"{row['label_fraction']:.0%}", str(row["seeds"])]
        for column in columns:
            std = row[f"{column}_std"]
            cells.append(f"{row[f'{column}_mean']:.3f}" + ("" if pd.isna(std) else f" +/- {std:.3f}"))
        cells += [f"{row['steps_mean']:.0f}", f"{row['train_seconds_mean']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(table: pd.DataFrame, path: Path, title: str) -> None:
    """Mean foreground DSC against the label fraction, one line per method, std as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5.5, 4))
    for method, part in table.groupby("method", sort=False):
        part = part.sort_values("label_fraction")
        axes.errorbar(part["label_fraction"] * 100, part["dsc_mean_mean"], yerr=part["dsc_mean_std"].fillna(0),
                      marker="o", capsize=3, label=method)
    axes.set_xscale("log")
    axes.set_xlabel("labelled training cases (%)")
    axes.set_ylabel("test mean DSC (foreground classes)")
    axes.set_title(title, fontsize=9)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="msd_hippocampus")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--split", default="holdout40")
    parser.add_argument("--part", choices=["test", "val"], default="test", help="the part every model is scored on")
    parser.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.1])
    parser.add_argument("--seeds", type=int, default=3, help="seeds for fractions below 1 (1.0 uses one)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="ViT-B/16 recipes for a GPU")
    size.add_argument("--quick", action="store_true", help="a few steps of everything (checks the pipeline only)")
    parser.add_argument("--output", type=Path, default=None, help="results folder (default docs/results/<task>)")
    parser.add_argument("--work-dir", type=Path, default=None, help="runs, checkpoints, predictions (default runs/label_efficiency_<task>)")
    args = parser.parse_args()
    if not args.data_root.is_dir():
        parser.error(f"{args.data_root}: no such data folder; give --data-root")
    mode = "full" if args.full else "quick" if args.quick else "cpu"
    pretrain_overrides, finetune_overrides = SIZES[mode]
    output = args.output or Path("docs/results") / args.task
    work = args.work_dir or Path("runs") / f"label_efficiency_{args.task}"
    started = time.time()

    mae_run = work / "mae"
    if not (mae_run / "checkpoints" / "last.pt").is_file():
        shutil.rmtree(mae_run, ignore_errors=True)
        pretrain.run(RunRequest(args.task, str(args.data_root), split=args.split, output_dir=str(mae_run),
                                overrides=pretrain_overrides))
    mae = str(mae_run / "checkpoints" / "last.pt")
    unet = [*finetune_overrides, "model.arch=unet", f"optim.base_lr={UNET_BASE_LR}", "optim.layer_decay=1.0"]
    per_step = unet_seconds_per_step(args, work, unet)
    rows = []
    for fraction in args.fractions:
        for seed in range(args.seeds if fraction < 1 else 1):
            tag = f"labels{fraction:g}_seed{seed}"
            for method, extra in (("mae_unetr", {"pretrained": mae}), ("scratch_unetr", {})):
                rows.append({"method": method, **finetune_run(args, work, f"{method}_{tag}", finetune_overrides, fraction, seed, **extra)})
            steps = max(1, round(rows[-1]["train_seconds"] / per_step))  # the scratch UNETR's training time
            budget = [*unet, "train.epochs=1", f"train.steps_per_epoch={steps}", "optim.warmup_epochs=0"]
            rows.append({"method": "scratch_unet", **finetune_run(args, work, f"scratch_unet_{tag}", budget, fraction, seed)})
            pd.DataFrame(rows).to_csv(work / "runs_so_far.csv", index=False)
    write_results(args, mode, output, work, pd.DataFrame(rows), time.time() - started)


def write_results(args, mode: str, output: Path, work: Path, runs: pd.DataFrame, seconds: float) -> None:
    output.mkdir(parents=True, exist_ok=True)
    runs.to_csv(output / "runs.csv", index=False)
    table = aggregate(runs)
    table.to_csv(output / "results.csv", index=False)
    (output / "results.md").write_text(markdown(table))
    plot(table, output / "dsc_vs_labels.png", f"{args.task} ({mode} sizes): test mean DSC over {len(runs)} models")
    figures = sorted((work / "mae" / "figures").glob("reconstruction_epoch*.png"))
    if figures:
        shutil.copy(figures[-1], output / "mae_reconstruction.png")
    configs = output / "configs"
    configs.mkdir(exist_ok=True)
    for config in work.glob("*/config.yaml"):
        shutil.copy(config, configs / f"{config.parent.name}.yaml")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False).stdout.strip()
    provenance = {"commit": commit or None, "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "mode": mode,
                  "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                             f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}",
                  "torch": torch.__version__, "wall_seconds": round(seconds), "split": args.split, "scored_part": args.part}
    (output / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    print(markdown(table))


if __name__ == "__main__":
    main()
