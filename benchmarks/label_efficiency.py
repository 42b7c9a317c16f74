"""Does MAE self-pretraining help when labels are scarce? One command, on real data, from pretraining to
the test-set tables.

    python benchmarks/label_efficiency.py                         # MSD hippocampus, 2 CPU cores, about 90 minutes
    python benchmarks/label_efficiency.py --full                  # the same with ViT-B/16 on a GPU
    python benchmarks/label_efficiency.py --quick                 # a smoke run of every step (a minute or two)
    python benchmarks/label_efficiency.py --backbone light_p8     # another pretrained backbone (see BACKBONES)
    python benchmarks/label_efficiency.py --task chestxray14 --data-root ../shared/data/chestxray14_nih_subset

On the ``holdout40`` split (160 labelled cases: 128 for training and 32 for validation, which picks
each run's ``best.pt``; 40 test cases) it pretrains one MAE on the 160 images (no labels), then trains
UNETR from that MAE and from scratch (without layer decay, which is meant for a pretrained encoder)
with each label fraction of the 128 training cases (1.0 and 0.1 by default; the smaller fractions over
``--seeds`` seeds, which pick both the label subset and the initialisation), each for the same steps;
and MONAI's U-Net from scratch on the same label sets for the same training wall time as the scratch
UNETR of that fraction and seed, over as many epochs (its steps come from one timed calibration run;
``time_vs_scratch_unetr`` in ``runs.csv`` says how close the times came). Every model is scored on the
40 test cases with ``medmae evaluate``; ``hd95_undefined`` counts the case-class pairs whose HD95 is
undefined (a class predicted empty) and so left out of the HD95 means.

``--backbone`` swaps UNETR for another pretrained segmentation model in the MAE and in both of its arms
(``unetr_p8``, ``light_p8``: the ViT at patch 8 with UNETR's or the light decoder; ``dynunet``: the residual
DynUNet and its sparse convolutional MAE, at the U-Net's learning rate); the U-Net arm stays as it is.

With ``--task chestxray14`` the same is done in 2D on the official split: a 2D MAE on the train_val
images, the ViT classifier from it and from scratch, scored by per-finding and macro AUC on the test
images (findings without both classes in the test images are left out of the mean and listed); there
is no U-Net there.

Writes into ``--output`` (default ``docs/results/<task>``): ``runs.csv`` (one row per model), ``results.csv``
and ``results.md`` (mean +/- std over seeds), ``score_vs_labels.png``, the pretrained MAE's reconstruction
figure, every run's resolved ``config.yaml`` and ``provenance.json`` (commit, command, machine, wall time).
Checkpoints and predictions stay in ``--work-dir``; every run resumes there, so an interrupted
experiment continues where it stopped (a changed config or split is refused: use another work folder).
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

from harness import HIPPOCAMPUS, SHARED_DATA
from medmae.inference.evaluate import evaluate
from medmae.tasks import load_task
from medmae.training import finetune, pretrain
from medmae.training.session import RunRequest

DEFAULT_ROOTS = {"msd_hippocampus": HIPPOCAMPUS, "chestxray14": SHARED_DATA / "chestxray14_nih_subset"}
# ChestX-ray14 on a CPU: the NIH subset's images are 64 x 64, so the models take 64 x 64 (no upsampling to 224).
CHEST_CPU = (
    [
        "model.size=tiny",
        "model.img_size=[64,64]",
        "data.batch_size=64",
        "train.epochs=300",
        "train.figure_every=100",
        "optim.base_lr=1.5e-3",
        "optim.warmup_epochs=20",
        "data.num_workers=1",
    ],
    [
        "model.size=tiny",
        "model.img_size=[64,64]",
        "data.batch_size=32",
        "train.epochs=20",
        "train.steps_per_epoch=10",
        "train.val_every=5",
        "optim.base_lr=8e-3",
        "optim.warmup_epochs=2",
        "data.num_workers=1",
    ],
)
DEFAULT_SPLITS = {"msd_hippocampus": "holdout40"}
UNET_BASE_LR = 0.064  # AdamW at 1e-3 for a batch of 4 (base_lr x batch / 256); UNETR keeps its recipe's rate
# --backbone: the settings that pick it, for the MAE and for both of its fine-tuned arms (not the U-Net's).
BACKBONES = {
    "unetr": [],
    "unetr_p8": ["model.arch=unetr", "model.patch_size=8"],
    "light_p8": ["model.arch=light", "model.patch_size=8"],
    "dynunet": ["model.arch=dynunet", f"optim.base_lr={UNET_BASE_LR}"],  # the U-Net's AdamW rate
}

# Budgets: (pretraining overrides, fine-tuning overrides shared by every model).
SIZES = {
    "cpu": (
        [
            "model.size=tiny",
            "data.batch_size=16",
            "train.epochs=600",
            "train.figure_every=100",  # about 9 minutes
            "optim.base_lr=1.5e-3",
            "optim.warmup_epochs=30",
            "data.num_workers=1",
        ],
        [
            "model.size=tiny",
            "model.feature_size=8",
            "data.batch_size=4",
            "train.epochs=8",  # 200 steps, about 7 minutes
            "train.steps_per_epoch=25",
            "train.val_every=4",
            "optim.base_lr=0.64",
            "optim.warmup_epochs=1",
            "optim.clip_grad=1.0",
            "data.num_workers=1",
        ],
    ),
    "full": (
        ["model.size=base", "train.epochs=400"],
        ["model.size=base", "train.epochs=100", "train.steps_per_epoch=20", "train.val_every=10"],
    ),
    "quick": (
        [
            "model.size=tiny",
            "data.batch_size=4",
            "train.epochs=2",
            "train.steps_per_epoch=2",
            "optim.warmup_epochs=1",
            "data.num_workers=0",
        ],
        [
            "model.size=tiny",
            "model.feature_size=8",
            "data.batch_size=2",
            "train.epochs=2",
            "train.steps_per_epoch=2",
            "train.val_every=2",
            "optim.warmup_epochs=1",
            "data.num_workers=0",
        ],
    ),
}


def train_seconds(run: Path) -> tuple[float, int]:
    """Training wall time (validation excluded) and optimiser steps of a finished run, from metrics.csv."""
    metrics = pd.read_csv(run / "metrics.csv", comment="#")
    return float(metrics["seconds"].sum()), int(metrics["step"].iloc[-1])


def request(args, run: Path, overrides: list[str], **options) -> RunRequest:
    """A run of the experiment's task, data and split in the folder ``run``; ``options``: resume, pretrained,
    label_fraction."""
    return RunRequest(
        args.task, str(args.data_root), split=args.split, output_dir=str(run), overrides=overrides, **options
    )


def finetune_run(
    args, work: Path, name: str, overrides: list[str], fraction: float, seed: int, pretrained: str | None = None
) -> dict:
    """Fine-tune one model (resuming it if an earlier invocation was interrupted; a changed config or split
    is refused) and score its best checkpoint on ``args.part``; one row of ``runs.csv``."""
    run = work / name
    seeded = [*overrides, f"data.label_seed={seed}", f"train.seed={seed}"]
    finetune.run(request(args, run, seeded, pretrained=pretrained, label_fraction=fraction, resume=True))
    summary, _, _ = evaluate(
        str(run / "checkpoints" / "best.pt"),
        args.task,
        str(args.data_root),
        None,
        args.split,
        args.part,
        str(run / f"evaluate_{args.part}"),
        progress=False,
    )
    seconds, steps = train_seconds(run)
    row = {"run": name, "label_fraction": fraction, "seed": seed, "steps": steps, "train_seconds": round(seconds, 1)}
    if isinstance(summary, float):  # classification: the macro AUC, and each finding's AUC (empty when undefined)
        findings = pd.read_csv(run / f"evaluate_{args.part}" / "per_finding.csv", comment="#")
        row["auc_mean"] = summary
        row |= {
            f"auc_{f}": auc if defined else None for f, auc, defined in findings[["finding", "auc", "defined"]].values
        }
        return row
    classes = summary[summary["cases"].notna()]  # per class rows; the group rows (foreground mean) have no count
    row["hd95_undefined"] = int(classes["hd95_mm_undefined"].sum())  # cases x classes left out of the HD95 means
    for _, line in summary.iterrows():
        key = "mean" if line["class"] == "foreground mean" else line["class"]
        row[f"dsc_{key}"] = line["dsc_mean"]
        row[f"hd95_mm_{key}"] = line["hd95_mm_mean"]
    return row


def unet_seconds_per_step(args, work: Path, overrides: list[str]) -> float:
    """The U-Net's training seconds per step, from a short timed run (its first epoch left out), measured
    once per work folder and kept in ``unet_calibration.json`` so that every U-Net of the experiment gets
    its budget from the same figure."""
    record = work / "unet_calibration.json"
    if record.is_file():
        return json.loads(record.read_text())["seconds_per_step"]
    run = work / "unet_calibration"
    shutil.rmtree(run, ignore_errors=True)
    short = ["train.epochs=3", "train.steps_per_epoch=4", "train.val_every=100", "optim.warmup_epochs=1"]
    finetune.run(request(args, run, [*overrides, *short]))
    metrics = pd.read_csv(run / "metrics.csv", comment="#")
    per_step = float(metrics["seconds"].iloc[1:].sum()) / (4 * (len(metrics) - 1))
    record.write_text(json.dumps({"seconds_per_step": per_step}) + "\n")
    return per_step


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and std (ddof 1) over seeds of every metric, per method and label fraction."""
    metrics = [c for c in runs.columns if c.startswith(("dsc_", "hd95_", "auc_"))] + ["steps", "train_seconds"]
    grouped = runs.groupby(["method", "label_fraction"], sort=False)
    table = grouped[metrics].agg(["mean", "std"])
    table.columns = [f"{metric}_{stat}" for metric, stat in table.columns]
    return table.reset_index().assign(seeds=grouped.size().values)


def markdown(table: pd.DataFrame) -> str:
    """The results as a Markdown table: mean +/- std over seeds of each class's DSC, the mean DSC and HD95."""
    score = "auc" if "auc_mean_mean" in table.columns else "dsc"
    columns = [c.removesuffix("_mean") for c in table.columns if c.startswith(f"{score}_") and c.endswith("_mean")]
    columns += ["hd95_mm_mean", "hd95_undefined"] if score == "dsc" else []
    header = ["method", "labels", "seeds", *columns, "steps", "train s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in table.iterrows():
        cells = [row["method"], f"{row['label_fraction']:.0%}", str(row["seeds"])]
        for column in columns:
            std = row[f"{column}_std"]
            mean, digits = row[f"{column}_mean"], 1 if column.endswith("undefined") else 3
            cells.append(
                "n/a" if pd.isna(mean) else f"{mean:.{digits}f}" + ("" if pd.isna(std) else f" +/- {std:.{digits}f}")
            )
        cells += [f"{row['steps_mean']:.0f}", f"{row['train_seconds_mean']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(table: pd.DataFrame, path: Path, title: str) -> None:
    """Mean foreground DSC against the label fraction, one line per method, std as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    score = "auc" if "auc_mean_mean" in table.columns else "dsc"
    figure, axes = plt.subplots(figsize=(5.5, 4))
    for method, part in table.groupby("method", sort=False):
        part = part.sort_values("label_fraction")
        axes.errorbar(
            part["label_fraction"] * 100,
            part[f"{score}_mean_mean"],
            yerr=part[f"{score}_mean_std"].fillna(0),
            marker="o",
            capsize=3,
            label=method,
        )
    axes.set_xscale("log")
    axes.set_xlabel("labelled training cases (%)")
    axes.set_ylabel("test macro AUC" if score == "auc" else "test mean DSC (foreground classes)")
    axes.set_title(title, fontsize=9)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="msd_hippocampus")
    parser.add_argument(
        "--data-root", type=Path, default=None, help="default: ../shared/data's copy of the task's data"
    )
    parser.add_argument(
        "--split",
        default=None,
        help="the manifest's split (default: holdout40 for hippocampus, else the manifest's default)",
    )
    parser.add_argument("--part", choices=["test", "val"], default="test", help="the part every model is scored on")
    parser.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.1])
    parser.add_argument("--seeds", type=int, default=3, help="seeds for fractions below 1 (1.0 uses one)")
    parser.add_argument(
        "--backbone", choices=list(BACKBONES), default="unetr", help="the pretrained segmentation model (3D tasks)"
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="ViT-B/16 recipes for a GPU")
    size.add_argument("--quick", action="store_true", help="a few steps of everything (checks the pipeline only)")
    parser.add_argument("--output", type=Path, default=None, help="results folder (default docs/results/<task>)")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="runs, checkpoints, predictions (default runs/label_efficiency_<task>_<mode>)",
    )
    args = parser.parse_args()
    args.data_root = args.data_root or DEFAULT_ROOTS.get(args.task)
    if args.data_root is None or not args.data_root.is_dir():
        parser.error(f"{args.data_root}: no such data folder; give --data-root")
    mode = "full" if args.full else "quick" if args.quick else "cpu"
    args.split = args.split or DEFAULT_SPLITS.get(args.task)
    classification = load_task(args.task).is_classification
    pretrain_overrides, finetune_overrides = SIZES[mode]
    if classification and mode == "cpu":
        pretrain_overrides, finetune_overrides = CHEST_CPU
    if classification and args.backbone != "unetr":
        parser.error(f"--backbone {args.backbone}: {args.task} classifies with the ViT classifier")
    backbone = BACKBONES[args.backbone]
    output = args.output or Path("docs/results") / args.task
    work = args.work_dir or Path("runs") / f"label_efficiency_{args.task}_{mode}"
    started, code = time.time(), git_state()  # the code as it was imported, not as it is when the run ends

    mae_run = work / "mae"
    pretrain.run(request(args, mae_run, [*pretrain_overrides, *backbone], resume=True))
    mae = str(mae_run / "checkpoints" / "last.pt")
    epochs = int(next(o for o in finetune_overrides if o.startswith("train.epochs=")).split("=")[1])
    unet = [*finetune_overrides, "model.arch=unet", f"optim.base_lr={UNET_BASE_LR}", "optim.layer_decay=1.0"]
    per_step = None if classification else unet_seconds_per_step(args, work, unet)
    model = "vit" if classification else args.backbone
    tuned = [*finetune_overrides, *backbone]
    scratch = [*tuned, "optim.layer_decay=1.0"]  # layer decay is for a pretrained encoder only
    rows = []
    for fraction in args.fractions:
        for seed in range(args.seeds if fraction < 1 else 1):
            tag = f"labels{fraction:g}_seed{seed}"
            rows.append(
                {
                    "method": f"mae_{model}",
                    **finetune_run(args, work, f"mae_{model}_{tag}", tuned, fraction, seed, pretrained=mae),
                }
            )
            rows.append(
                {
                    "method": f"scratch_{model}",
                    **finetune_run(args, work, f"scratch_{model}_{tag}", scratch, fraction, seed),
                }
            )
            if per_step is not None:  # the U-Net trains as long as the scratch UNETR did, over as many epochs
                per_epoch = max(1, round(rows[-1]["train_seconds"] / per_step / epochs))
                budget = [*unet, f"train.steps_per_epoch={per_epoch}"]
                rows.append(
                    {
                        "method": "scratch_unet",
                        **finetune_run(args, work, f"scratch_unet_{tag}", budget, fraction, seed),
                    }
                )
                rows[-1]["time_vs_scratch_unetr"] = round(rows[-1]["train_seconds"] / rows[-2]["train_seconds"], 2)
            pd.DataFrame(rows).to_csv(work / "runs_so_far.csv", index=False)
    provenance = {**code, "unet_seconds_per_step": per_step, "work_dir": str(work), "data_root": str(args.data_root)}
    write_results(args, mode, output, work, pd.DataFrame(rows), time.time() - started, provenance)


def git_state() -> dict:
    """The commit of this checkout and whether tracked files differ from it."""
    repo = Path(__file__).resolve().parents[1]
    git = [
        subprocess.run(["git", *command], capture_output=True, text=True, check=False, cwd=repo).stdout.strip()
        for command in (["rev-parse", "HEAD"], ["status", "--porcelain", "--untracked-files=no"])
    ]
    return {"commit": git[0] or None, "uncommitted_changes": bool(git[1])}


def write_results(args, mode: str, output: Path, work: Path, runs: pd.DataFrame, seconds: float, extra: dict) -> None:
    output.mkdir(parents=True, exist_ok=True)
    runs.to_csv(output / "runs.csv", index=False)
    table = aggregate(runs)
    table.to_csv(output / "results.csv", index=False)
    (output / "results.md").write_text(markdown(table))
    plot(
        table, output / "score_vs_labels.png", f"{args.task} ({mode} sizes): {len(runs)} models on the {args.part} part"
    )
    figures = sorted((work / "mae" / "figures").glob("reconstruction_epoch*.png"))
    if figures:
        shutil.copy(figures[-1], output / "mae_reconstruction.png")
    configs = output / "configs"
    shutil.rmtree(configs, ignore_errors=True)
    configs.mkdir()
    for name in ["mae", *runs["run"]]:
        shutil.copy(work / name / "config.yaml", configs / f"{name}.yaml")
    provenance = {
        **extra,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "mode": mode,
        "split": args.split,
        "scored_part": args.part,
        "machine": f"{platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, "
        f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}",
        "torch": torch.__version__,
        "wall_seconds_this_invocation": round(seconds),
    }
    (output / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    print(markdown(table))


if __name__ == "__main__":
    main()
