"""Does MAE self-pretraining beat training from scratch, and the plain U-Net, when labels are scarce? One
resumable command, on real data, from pretraining to paired statistics on the test cases.

    python benchmarks/label_efficiency.py                  # MSD hippocampus, 2 CPU cores (hours; resumes)
    python benchmarks/label_efficiency.py --quick          # a few steps of every stage (checks the pipeline)
    python benchmarks/label_efficiency.py --full           # ViT-B/16 and DynUNet base recipes for a GPU
    python benchmarks/label_efficiency.py --arms mae_unetr scratch_unetr scratch_unet   # some arms only
    python benchmarks/label_efficiency.py --report         # train nothing: the tables of the runs done so far
    python benchmarks/label_efficiency.py --epochs-at-full 80   # also a longer schedule at 100 % (*_epochs80 runs)
    python benchmarks/label_efficiency.py --task chestxray14 --data-root ../shared/data/chestxray14_nih_subset

Protocol (3D segmentation; ``holdout40`` split of MSD hippocampus: 128 training, 32 validation, 40 test):

1. **Pretraining**: one MAE per pretrained backbone on the images of the training and validation parts (no
   labels): the ViT MAE for UNETR, the sparse convolutional MAE for DynUNet. Its held-out reconstruction loss
   on the test images (never trained on; nothing is chosen on it) is written beside two references: zero and
   the per-position mean patch.
2. **Arms**: ``mae_unetr``/``scratch_unetr`` (the tiny UNETR of issue 11), ``mae_dynunet``/``scratch_dynunet``
   (MONAI's residual DynUNet), ``scratch_unet`` (MONAI's plain U-Net, the reference any pretraining has to
   beat). Within a backbone both arms get the same step budget and stopping rule; the U-Net gets the same
   budget in wall time as scratch UNETR (its steps per epoch scaled by the measured ratio of step times) and
   the same number of validations.
3. **Learning rate**: every arm's peak rate is picked from the same grid (``--lrs``) by its best validation
   mean DSC with the smallest label fraction and seed 0; that rate is then used for every seed and fraction.
4. **Training**: until validation stops improving (``train.patience`` validations without a better score) or
   the step budget ends; ``best.pt`` is picked on validation. Each seed picks the label subset and the
   initialisation, the same subsets for every arm.
5. **Scoring**: ``medmae evaluate`` on the test part. A run whose model never predicts a class on any test
   case is "collapsed" and counts as it is (DSC 0, HD95 at the image-diagonal penalty).
6. **Statistics**: per test case, each arm's mean foreground DSC averaged over seeds (each case counts once),
   then paired differences (MAE minus scratch per backbone; the better MAE arm on validation minus the U-Net):
   mean, percentile-bootstrap 95 % interval, Wilcoxon signed-rank p (``medmae.evaluation.statistics``).

Writes into ``--output`` (default ``docs/results/<task>_label_efficiency``): ``runs/<run>/`` (each run's
``per_case.csv``, ``summary.csv`` with its ``summary_notes.txt``, ``metrics.csv`` with its validation curve,
``config.yaml``, ``result.json``),
``pretrained/`` (each MAE's weights, curve and held-out loss), ``runs.csv``, ``lr_selection.csv``,
``comparisons.csv``, ``results.md``, ``dsc_vs_labels.png``, ``validation_curves.png``, ``provenance.json``; with
``--epochs-at-full N`` also ``longer_schedule.csv``: each arm's 100 % run on the budget's schedule beside one on
N epochs (its own run, ``*_epochsN``), with what ended each, and ``longer_schedule_comparisons.csv``, the paired
differences of the longer runs; the other tables keep the budget's runs.
Checkpoints stay in ``--work-dir``. A run with a ``result.json`` in ``--output`` is done and is not repeated, so
an interrupted experiment continues where it stopped, on this machine from its work folder and on another
from the committed results folder: finished runs are read back; the MAE weights in ``pretrained/`` (over 1 MB,
not committed) are pretrained again where they are missing.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import yaml

from harness import HIPPOCAMPUS, SHARED_DATA, task_volumes
from medmae.checkpoint import checksum_file, load_checkpoint, save_checkpoint, sha256
from medmae.data.manifests import load_split
from medmae.evaluation.statistics import bootstrap_mean_interval, paired_comparison
from medmae.inference.evaluate import evaluate
from medmae.models.registry import rebuild_model
from medmae.tasks import load_task
from medmae.training import finetune, pretrain
from medmae.training.session import RunRequest

DEFAULT_ROOTS = {"msd_hippocampus": HIPPOCAMPUS, "chestxray14": SHARED_DATA / "chestxray14_nih_subset"}
DEFAULT_SPLITS = {"msd_hippocampus": "holdout40"}
SEGMENTATION_ARMS = ["mae_unetr", "scratch_unetr", "mae_dynunet", "scratch_dynunet", "scratch_unet"]
CLASSIFICATION_ARMS = ["mae_vit", "scratch_vit"]
PRETRAINED_VITS = {"mae_unetr", "mae_vit"}  # the arms whose fine-tuning uses layer-wise rate decay
MODEL_SETS = {  # fine-tuning: what picks each backbone
    "unetr": ["model.arch=unetr", "model.feature_size=8"],
    "dynunet": ["model.arch=dynunet"],
    "unet": ["model.arch=unet"],
    "vit": [],
}


@dataclass(frozen=True)
class Budget:
    """One mode's settings: each MAE's pretraining overrides, the fine-tuning overrides every arm shares (the
    learning rate comes from the grid), the grid of peak learning rates, and the fine-tuning batch."""

    pretrain: dict[str, list[str]]
    finetune: list[str]
    lrs: tuple[float, ...]
    batch: int


CPU = Budget(
    pretrain={
        # Both on unflipped crops: with flips their held-out losses stayed above the per-position mean patch's
        # (ViT 0.641, DynUNet 0.733, against 0.635; pretrained_with_flips/ in the results). The ViT: 300 epochs of
        # 10 steps of 16 crops at a peak rate of 3e-3 (0.048 x 16 / 256), as the pretrain_tiny runs.
        "unetr": ["model.size=tiny", "data.batch_size=16", "train.epochs=300", "optim.base_lr=0.048"]
        + ["optim.warmup_epochs=20", "train.figure_every=100", "data.num_workers=1", "data.flips=false"],
        # the sparse convolutional MAE: 300 steps of 8 crops, as its pretrain_tiny run (held-out 0.579 there)
        "dynunet": ["model.arch=dynunet", "model.size=tiny", "data.batch_size=8", "train.epochs=15"]
        + ["optim.base_lr=0.096", "optim.warmup_epochs=1", "train.figure_every=15", "data.num_workers=1"]
        + ["data.flips=false"],
    },
    # at most 800 steps of 4 crops (the earlier 600-step UNETR run was still improving at its end); validation
    # every 50 steps; stop after 4 validations without a better score
    finetune=["model.size=tiny", "data.batch_size=4", "train.epochs=32", "train.steps_per_epoch=25"]
    + ["train.val_every=2", "train.patience=4", "optim.warmup_epochs=1", "optim.clip_grad=1.0"]
    + ["data.num_workers=1", "infer.sw_batch_size=4"],  # 4: the default when the experiment began
    # 3e-2 added after the DynUNet and U-Net arms peaked at 1e-2, the grid's top edge, on validation
    lrs=(1e-3, 3e-3, 1e-2, 3e-2),
    batch=4,
)
QUICK = Budget(
    pretrain={
        backbone: [*extra, "model.size=tiny", "data.batch_size=4", "train.epochs=2", "train.steps_per_epoch=2"]
        + ["optim.warmup_epochs=1", "data.num_workers=0"]
        for backbone, extra in (("unetr", []), ("dynunet", ["model.arch=dynunet"]), ("vit", []))
    },
    finetune=["model.size=tiny", "data.batch_size=2", "train.epochs=2", "train.steps_per_epoch=2"]
    + ["train.val_every=1", "train.patience=1", "optim.warmup_epochs=1", "data.num_workers=0"],
    lrs=(1e-3, 1e-2),
    batch=2,
)
FULL = Budget(
    pretrain={"unetr": ["model.size=base", "train.epochs=400"], "dynunet": ["model.arch=dynunet", "model.size=base"]},
    finetune=["model.size=base", "train.epochs=100", "train.steps_per_epoch=20", "train.val_every=5"]
    + ["train.patience=4"],
    lrs=(1e-4, 3e-4, 1e-3),
    batch=8,
)
CHEST_CPU = Budget(
    pretrain={
        "vit": ["model.size=tiny", "model.img_size=[64,64]", "data.batch_size=64", "train.epochs=300"]
        + ["train.figure_every=100", "optim.base_lr=1.5e-3", "optim.warmup_epochs=20", "data.num_workers=1"]
    },
    finetune=["model.size=tiny", "model.img_size=[64,64]", "data.batch_size=32", "train.epochs=20"]
    + ["train.steps_per_epoch=10", "train.val_every=5", "optim.warmup_epochs=2", "data.num_workers=1"],
    lrs=(1e-3, 3e-3, 1e-2),
    batch=32,
)


def backbone_of(arm: str) -> str:
    return arm.split("_", 1)[1]


def run_name(arm: str, fraction: float, seed: int, lr: float, epochs: int | None = None) -> str:
    """A run's folder name; ``epochs`` names a step cap other than the budget's."""
    return f"{arm}_labels{fraction:g}_seed{seed}_lr{lr:g}" + (f"_epochs{epochs}" if epochs else "")


class Experiment:
    """The experiment's settings, folders and finished runs (``result.json`` files in ``output/runs``)."""

    def __init__(self, args: argparse.Namespace, budget: Budget) -> None:
        self.args, self.budget = args, budget
        self.task = load_task(args.task)
        self.output, self.work = args.output, args.work_dir
        (self.output / "runs").mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)

    def request(self, folder: Path, overrides: list[str], **options) -> RunRequest:
        args = self.args
        return RunRequest(
            args.task, str(args.data_root), split=args.split, output_dir=str(folder), overrides=overrides, **options
        )

    def pretrained(self, backbone: str) -> str:
        """The MAE checkpoint of ``backbone``: the results folder's copy when there is one (another machine's
        run), else pretrained in the work folder (resumed if interrupted), copied without optimiser state.
        The weights are not committed (over 1 MB), only their SHA-256: a copy pretrained again says in
        ``mae_<backbone>.reproduced.json`` whether it is the committed one, so runs that used other weights
        (later code rounds differently) are known."""
        kept = self.output / "pretrained" / f"mae_{backbone}.pt"
        if kept.is_file():
            record = torch.load(kept, map_location="cpu", weights_only=True, mmap=True)  # the split alone is read
            trained, wanted = record["split"]["split"], self.split_name()
            if trained != wanted:
                print(
                    f"error: {kept} was pretrained on split {trained}, not {wanted}: give another --output",
                    file=sys.stderr,
                )
                sys.exit(2)
            return str(kept)
        committed = checksum_file(kept).read_text().split()[0] if checksum_file(kept).is_file() else None
        folder = self.work / f"mae_{backbone}"
        pretrain.run(self.request(folder, self.budget.pretrain[backbone], resume=True))
        payload = load_checkpoint(folder / "checkpoints" / "last.pt")
        slim = {k: v for k, v in payload.items() if k not in ("optimizer", "scaler", "rng")}
        kept.parent.mkdir(exist_ok=True)
        shutil.copy(folder / "metrics.csv", kept.with_suffix(".metrics.csv"))
        figures = sorted((folder / "figures").glob("reconstruction_epoch*.png"))
        if figures:
            shutil.copy(figures[-1], kept.with_suffix(".reconstruction.png"))
        if not self.task.is_classification:
            measured = self.heldout(rebuild_model(payload, kept))
            kept.with_suffix(".heldout.json").write_text(json.dumps(measured, indent=2) + "\n")
        save_checkpoint(slim, kept)
        digest = sha256(kept)
        same = None if committed is None else digest == committed
        if same is False:
            print(f"note: {kept.name} pretrained again differs from the committed weights (SHA-256)", flush=True)
        note = {"committed_sha256": committed, "sha256": digest, "same_weights": same, **git_state()}
        kept.with_suffix(".reproduced.json").write_text(json.dumps(note, indent=2) + "\n")
        return str(kept)

    def split_name(self) -> str:
        """The name of the split the experiment runs on (``--split``, else the task manifest's default)."""
        return load_split(self.task, str(self.args.data_root), None, self.args.split).name

    def heldout(self, mae: torch.nn.Module) -> dict:
        """The MAE's reconstruction loss on the test images (never trained on) against its references."""
        from pretrain_tiny import heldout_loss

        root, split = Path(self.args.data_root), self.args.split
        seen = task_volumes(self.task, root, "inference", ("train", "validation"), split)
        unseen = task_volumes(self.task, root, "inference", ("test",), split)
        shapes = {tuple(item["image"].shape) for item in seen + unseen}
        if len(shapes) > 1:  # the references need aligned, equally sized images (true of hippocampus)
            return {"skipped": f"the images differ in shape ({len(shapes)} shapes), so no positional mean"}
        stack = [torch.stack([item["image"] for item in items]) for items in (seen, unseen)]
        return {**heldout_loss(mae, *stack), "images_seen": len(seen), "images_held_out": len(unseen)}

    def finetune(
        self, arm: str, fraction: float, seed: int, lr: float, extra: list[str] = (), epochs: int | None = None
    ) -> dict | None:
        """Fine-tune one arm (resumed if interrupted) for the budget's epochs, or ``epochs``, and score its
        ``best.pt`` on ``--part``; its row of ``runs.csv``. Done runs (a ``result.json`` in the results
        folder) are read back instead; with ``--report`` a run not done yet is None."""
        name = run_name(arm, fraction, seed, lr, epochs)
        kept = self.output / "runs" / name
        if (kept / "result.json").is_file():
            return json.loads((kept / "result.json").read_text())
        if self.args.report:
            return None
        folder = self.work / name
        overrides = [*self.budget.finetune, *MODEL_SETS[backbone_of(arm)], *extra]
        overrides += [f"train.epochs={epochs}"] if epochs else []
        overrides += [
            f"optim.base_lr={lr * 256 / self.budget.batch:g}",
            f"data.label_seed={seed}",
            f"train.seed={seed}",
        ]
        overrides += [] if arm in PRETRAINED_VITS else ["optim.layer_decay=1.0"]  # layer decay is for pretrained ViTs
        pretrained = self.pretrained(backbone_of(arm)) if arm.startswith("mae_") else None
        finetune.run(self.request(folder, overrides, pretrained=pretrained, label_fraction=fraction, resume=True))
        scored = folder / f"evaluate_{self.args.part}"
        args = self.args
        summary, _, _ = evaluate(
            str(folder / "checkpoints" / "best.pt"), args.task, str(args.data_root), None, args.split, args.part,
            str(scored), progress=False,
        )  # fmt: skip
        metrics = pd.read_csv(folder / "metrics.csv", comment="#")
        score = "val_macro_auc" if self.task.is_classification else "val_mean_dsc"
        row = {
            "run": name, "arm": arm, "label_fraction": fraction, "seed": seed, "lr": lr,
            "steps": int(metrics["step"].iloc[-1]), "train_seconds": round(float(metrics["seconds"].sum()), 1),
            "best_val": float(metrics[score].max()), "best_step": int(metrics.loc[metrics[score].idxmax(), "step"]),
        }  # fmt: skip
        row |= test_scores(summary, scored)
        kept.mkdir(parents=True, exist_ok=True)
        reports = sorted([*scored.glob("*.csv"), *scored.glob("*_notes.txt")])  # the notes beside the CSVs
        for file in [folder / "metrics.csv", folder / "config.yaml", *reports]:
            shutil.copy(file, kept / file.name)
        (kept / "result.json").write_text(json.dumps(row, indent=2) + "\n")
        return row


def test_scores(summary: pd.DataFrame | float, scored: Path) -> dict:
    """A run's test figures: macro AUC and AUC per finding, or mean DSC and HD95 per class and overall, the
    penalised HD95 count and the classes the model never predicted on any test case (a collapsed run)."""
    if isinstance(summary, float):
        findings = pd.read_csv(scored / "per_finding.csv", comment="#")
        return {"auc_mean": summary} | {f"auc_{line.finding}": line.auc for line in findings.itertuples()}
    per_case = pd.read_csv(scored / "per_case.csv", comment="#")
    never = [name for name, part in per_case.groupby("class") if (part["n_pred"] == 0).all()]
    row = {"collapsed_classes": " ".join(never), "collapsed": bool(never)}
    for _, line in summary.iterrows():
        key = "mean" if line["class"] == "foreground mean" else line["class"]
        row |= {f"dsc_{key}": line["dsc_mean"], f"hd95_mm_{key}": line["hd95_mm_mean"]}
    return row | {"hd95_penalised": int(summary.set_index("class").loc["foreground mean", "hd95_penalised"])}


def step_ratio(experiment: Experiment, lr: float) -> float:
    """Seconds per training step of scratch UNETR over the U-Net's, from two short timed runs (their first
    epoch left out), measured once per experiment (``step_ratio.json`` in the results folder)."""
    record = experiment.output / "step_ratio.json"
    if not record.is_file():
        short = ["train.epochs=3", "train.steps_per_epoch=4", "train.val_every=100", "optim.warmup_epochs=1"]
        per_step = {}
        for backbone in ("unetr", "unet"):
            folder = experiment.work / f"calibration_{backbone}"
            shutil.rmtree(folder, ignore_errors=True)
            overrides = [*experiment.budget.finetune, *MODEL_SETS[backbone], *short, f"optim.base_lr={lr:g}"]
            finetune.run(experiment.request(folder, overrides))
            metrics = pd.read_csv(folder / "metrics.csv", comment="#")
            per_step[backbone] = float(metrics["seconds"].iloc[1:].sum()) / (4 * (len(metrics) - 1))
        record.write_text(json.dumps(per_step | {"ratio": per_step["unetr"] / per_step["unet"]}) + "\n")
    return json.loads(record.read_text())["ratio"]


def unet_budget(experiment: Experiment, ratio: float) -> list[str]:
    """The U-Net's steps per epoch: scratch UNETR's, scaled by their step-time ratio (same wall time, same
    epochs and validations)."""
    steps = int(next(o for o in experiment.budget.finetune if o.startswith("train.steps_per_epoch=")).split("=")[1])
    return [f"train.steps_per_epoch={max(1, round(steps * ratio))}"]


def selection_table(grid: list[dict], lrs: tuple[float, ...]) -> pd.DataFrame:
    """The grid runs (seed 0, smallest label fraction) finished so far and their best validation scores; an arm's
    rate is chosen (the best score) once every rate of the grid has run for it."""
    columns = ["run", "arm", "label_fraction", "seed", "lr", "best_val", "best_step", "steps", "train_seconds"]
    table = pd.DataFrame(grid, columns=columns).assign(chosen=False)
    for _, part in table.groupby("arm", sort=False):
        if set(lrs) <= set(part["lr"]):
            table.loc[part["best_val"].idxmax(), "chosen"] = True
    return table


def per_case_dsc(experiment: Experiment, runs: pd.DataFrame) -> pd.DataFrame:
    """``[run x case]`` -> one row per run and test case: the case's mean foreground DSC (a missed class is 0)."""
    frames = []
    for _, run in runs.iterrows():
        table = pd.read_csv(experiment.output / "runs" / run["run"] / "per_case.csv", comment="#")
        means = table.groupby("case_id")["dsc"].mean().rename("dsc").reset_index()
        frames.append(means.assign(arm=run["arm"], label_fraction=run["label_fraction"], seed=run["seed"]))
    return pd.concat(frames, ignore_index=True)


def comparisons(runs: pd.DataFrame, cases: pd.DataFrame) -> pd.DataFrame:
    """Paired per-case differences, each case's DSC averaged over seeds first: MAE minus scratch per backbone,
    and the better MAE arm (by mean validation score, never by test score) minus the U-Net."""
    rows = []
    for fraction, part in cases.groupby("label_fraction"):
        seeds = part.groupby("arm")["seed"].unique().map(set)
        pairs = [(f"mae_{b}", f"scratch_{b}") for b in ("unetr", "dynunet", "vit")]
        maes = runs[(runs["label_fraction"] == fraction) & runs["arm"].str.startswith("mae_")]
        if len(maes):
            pairs.append((maes.groupby("arm")["best_val"].mean().idxmax(), "scratch_unet"))
        for a, b in pairs:
            if a in seeds and b in seeds and (common := seeds[a] & seeds[b]):
                shared = part[part["seed"].isin(common)]  # while runs are missing: the seeds both arms have
                by_arm = shared.groupby(["arm", "case_id"])["dsc"].mean().unstack("case_id")
                result = paired_comparison(by_arm.loc[a], by_arm.loc[b])
                rows.append({"label_fraction": fraction, "a": a, "b": b, "seeds": len(common)} | result.as_row())
    return pd.DataFrame(rows)


def arm_table(runs: pd.DataFrame, cases: pd.DataFrame | None) -> pd.DataFrame:
    """Per arm and label fraction: seeds, collapsed runs, mean DSC (per class and overall, mean over runs), mean
    HD95 with its penalised count, chosen lr; and ``case_dsc``, the mean over test cases of their seed-averaged
    mean DSC, with its bootstrap 95 % interval (``ci_low``, ``ci_high``)."""
    score = "auc_mean" if "auc_mean" in runs else "dsc_mean"
    metrics = [c for c in runs.columns if c.startswith(("dsc_", "hd95_mm_", "auc_"))]
    grouped = runs.groupby(["arm", "label_fraction"], sort=False)
    table = grouped[metrics + ["steps", "train_seconds"]].mean().reset_index()
    table["seeds"] = grouped.size().values
    table["lr"] = grouped["lr"].first().values
    if "collapsed" in runs:
        table["collapsed_runs"] = grouped["collapsed"].sum().astype(int).values
        table["hd95_penalised"] = grouped["hd95_penalised"].sum().astype(int).values
    table[f"{score}_std"] = grouped[score].std().values
    if cases is not None:
        seed_averaged = cases.groupby(["arm", "label_fraction", "case_id"])["dsc"].mean()
        keys = list(zip(table["arm"], table["label_fraction"]))
        table["case_dsc"] = [seed_averaged.loc[key].mean() for key in keys]
        intervals = [bootstrap_mean_interval(seed_averaged.loc[key]) for key in keys]
        table["ci_low"], table["ci_high"] = zip(*intervals)
    return table


def markdown(
    table: pd.DataFrame, compared: pd.DataFrame, selection: pd.DataFrame, more: list[tuple[str, pd.DataFrame]] = ()
) -> str:
    """results.md: the arms, the paired comparisons, the learning-rate selection and ``more`` (title, table)
    as Markdown tables."""

    def fmt(value) -> str:
        return "n/a" if pd.isna(value) else f"{value:.3f}" if isinstance(value, float) else str(value)

    def section(title: str, frame: pd.DataFrame) -> str:
        head = "| " + " | ".join(frame.columns) + " |"
        lines = [f"## {title}", "", head, "|" + "---|" * len(frame.columns)]
        return "\n".join(lines + ["| " + " | ".join(map(fmt, row)) + " |" for row in frame.itertuples(index=False)])

    ordered = table.sort_values(["label_fraction", "arm"])
    shown = ["arm", "label_fraction", "seeds", "lr", "collapsed_runs", "case_dsc", "ci_low", "ci_high"]
    shown += [c for c in table if c.startswith(("dsc_", "auc_"))]
    shown += ["hd95_mm_mean", "hd95_penalised", "steps", "train_seconds"]
    sections = [("Arms (test part; means over seeds)", ordered[[c for c in shown if c in table]])]
    sections += [("Paired differences a - b of per-case mean DSC (seed-averaged)", compared)] if len(compared) else []
    sections += [("Learning rate chosen on validation", selection), *more]
    return "\n\n".join(section(title, frame) for title, frame in sections) + "\n"


def plot_scores(table: pd.DataFrame, path: Path, title: str) -> None:
    """Mean test score against the label fraction, one line per arm, with the 95 % interval (or the std over
    seeds where there is no per-case interval)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    score = "auc_mean" if "auc_mean" in table else "dsc_mean"
    figure, axes = plt.subplots(figsize=(6, 4.2))
    for arm, part in table.groupby("arm", sort=False):
        part = part.sort_values("label_fraction")
        if "ci_low" in part:  # the mean over test cases of their seed-averaged DSC, and its interval
            centre = part["case_dsc"]
            error = [(centre - part["ci_low"]).clip(lower=0), (part["ci_high"] - centre).clip(lower=0)]
        else:
            centre, error = part[score], part[f"{score}_std"].fillna(0)
        axes.errorbar(part["label_fraction"] * 100, centre, yerr=error, marker="o", capsize=3, label=arm)
    axes.set_xscale("log")
    axes.set_xlabel("labelled training cases (%)")
    axes.set_ylabel("test macro AUC" if score == "auc_mean" else "test mean DSC (95 % bootstrap interval)")
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_validation(experiment: Experiment, runs: pd.DataFrame, path: Path) -> None:
    """Every run's validation curve (score against step), one panel per arm; the chosen checkpoint dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(dict.fromkeys(runs["arm"]))
    figure, panels = plt.subplots(1, len(arms), figsize=(3.2 * len(arms), 3), sharey=True, squeeze=False)
    for axes, arm in zip(panels[0], arms):
        for _, run in runs[runs["arm"] == arm].iterrows():
            metrics = pd.read_csv(experiment.output / "runs" / run["run"] / "metrics.csv", comment="#")
            score = "val_macro_auc" if "val_macro_auc" in metrics else "val_mean_dsc"
            valid = metrics.dropna(subset=[score])
            label = f"{run['label_fraction']:.0%} s{run['seed']} lr {run['lr']:g}"
            label += f" {run['run'].rsplit('_', 1)[1]}" if "_epochs" in run["run"] else ""  # a longer schedule
            (line,) = axes.plot(valid["step"], valid[score], marker=".", label=label)
            axes.axvline(run["best_step"], color=line.get_color(), linestyle=":", linewidth=0.8)
        axes.set_title(arm, fontsize=9)
        axes.set_xlabel("step")
        axes.legend(fontsize=5)
    panels[0][0].set_ylabel("validation score")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def git_state() -> dict:
    """The commit of this checkout and whether tracked files differ from it."""
    repo = Path(__file__).resolve().parents[1]
    git = [
        subprocess.run(["git", *command], capture_output=True, text=True, check=False, cwd=repo).stdout.strip()
        for command in (["rev-parse", "HEAD"], ["status", "--porcelain", "--untracked-files=no"])
    ]
    return {"commit": git[0] or None, "uncommitted_changes": bool(git[1])}


def schedule_table(experiment: Experiment, runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run: its step cap (epochs x steps per epoch of its config), the steps it ran, what ended it
    (``patience`` before the cap, else ``step cap``), its best validation step and score and its test scores."""
    shown = ["arm", "run", "label_fraction", "steps", "best_step", "best_val", "dsc_mean", "hd95_mm_mean"]
    rows = []
    for _, run in runs.iterrows():
        train = yaml.safe_load((experiment.output / "runs" / run["run"] / "config.yaml").read_text())["train"]
        cap = train["epochs"] * train["steps_per_epoch"]
        ended = "patience" if run["steps"] < cap else "step cap"
        rows.append(run[[c for c in shown if c in run]].to_dict() | {"step_cap": cap, "ended_by": ended})
    return pd.DataFrame(rows).sort_values(["arm", "step_cap"], kind="stable")


def write_results(
    experiment: Experiment, runs: pd.DataFrame, selection: pd.DataFrame, longer: pd.DataFrame, extra: dict
) -> None:
    """Every table, figure and the provenance, from the runs finished so far (called after each run); ``longer``:
    the 100 % runs on a longer schedule, shown beside the budget's in ``longer_schedule.csv`` and results.md."""
    output = experiment.output
    selection.to_csv(output / "lr_selection.csv", index=False)
    every = pd.concat([selection, runs, longer]).drop_duplicates("run")
    plot_validation(experiment, every, output / "validation_curves.png")
    if runs.empty:  # still choosing learning rates
        return
    runs.to_csv(output / "runs.csv", index=False)
    cases = None if experiment.task.is_classification else per_case_dsc(experiment, runs)
    compared = pd.DataFrame() if cases is None else comparisons(runs, cases)
    compared.to_csv(output / "comparisons.csv", index=False)
    table = arm_table(runs, cases)
    table.to_csv(output / "results.csv", index=False)
    more = []
    if not longer.empty:
        schedules = schedule_table(experiment, pd.concat([runs[runs["label_fraction"] == 1], longer]))
        schedules.to_csv(output / "longer_schedule.csv", index=False)
        more.append(("100 % labels: the budget's schedule and a longer one", schedules))
        if cases is not None:
            paired = comparisons(longer, per_case_dsc(experiment, longer))
            paired.to_csv(output / "longer_schedule_comparisons.csv", index=False)
            more.append(("Paired differences on the longer schedule", paired))
    (output / "results.md").write_text(markdown(table, compared, selection, more))
    title = f"{experiment.args.task}: {len(runs)} runs scored on the {experiment.args.part} part"
    plot_scores(table, output / "dsc_vs_labels.png", title)
    provenance = {
        **extra,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "split": experiment.args.split,
        "scored_part": experiment.args.part,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}",
        "torch": torch.__version__,
        "runs_done": len(runs),
    }
    (output / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")


def parse_args() -> tuple[argparse.Namespace, Budget, str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="msd_hippocampus")
    parser.add_argument("--data-root", type=Path, default=None, help="default: ../shared/data's copy of the task")
    parser.add_argument("--split", default=None, help="default: holdout40 for hippocampus, else the manifest's")
    parser.add_argument("--part", choices=["test", "val"], default="test", help="the part every model is scored on")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 1.0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds for fractions below 1 (1.0 uses one)")
    parser.add_argument("--arms", nargs="+", default=None, help=f"default: {' '.join(SEGMENTATION_ARMS)}")
    parser.add_argument("--lrs", type=float, nargs="+", default=None, help="the grid of peak learning rates")
    parser.add_argument(
        "--epochs-at-full",
        type=int,
        default=None,
        help="also train each arm at 100 %% labels for this many epochs (runs *_epochsN, in longer_schedule.csv)",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="ViT-B/16 and DynUNet base recipes for a GPU")
    size.add_argument("--quick", action="store_true", help="a few steps of everything (checks the pipeline only)")
    parser.add_argument("--output", type=Path, default=None, help="default docs/results/<task>_label_efficiency")
    parser.add_argument("--work-dir", type=Path, default=None, help="default runs/label_efficiency_<task>_<mode>")
    parser.add_argument("--report", action="store_true", help="train nothing: the tables of the runs done so far")
    args = parser.parse_args()
    args.data_root = args.data_root or DEFAULT_ROOTS.get(args.task)
    if args.data_root is None or not args.data_root.is_dir():
        parser.error(f"{args.data_root}: no such data folder; give --data-root")
    args.split = args.split or DEFAULT_SPLITS.get(args.task)
    mode = "full" if args.full else "quick" if args.quick else "cpu"
    classification = load_task(args.task).is_classification
    known = CLASSIFICATION_ARMS if classification else SEGMENTATION_ARMS
    args.arms = args.arms or known
    if unknown := sorted(set(args.arms) - set(known)):
        parser.error(f"--arms {' '.join(unknown)}: {args.task} has the arms {', '.join(known)}")
    if args.epochs_at_full and 1.0 not in args.fractions:
        parser.error("--epochs-at-full lengthens the 100 % runs: add 1.0 to --fractions")
    budget = {"full": FULL, "quick": QUICK, "cpu": CHEST_CPU if classification else CPU}[mode]
    if args.lrs:
        budget = Budget(budget.pretrain, budget.finetune, tuple(args.lrs), budget.batch)
    args.output = args.output or Path("docs/results") / f"{args.task}_label_efficiency"
    args.work_dir = args.work_dir or Path("runs") / f"label_efficiency_{args.task}_{mode}"
    return args, budget, mode


def main() -> None:
    args, budget, mode = parse_args()
    experiment = Experiment(args, budget)
    started, code = time.time(), git_state()  # the code as it was imported, not as it is when the run ends
    fractions = sorted(args.fractions)
    if not args.report:
        for backbone in dict.fromkeys(backbone_of(a) for a in args.arms if a.startswith("mae_")):
            experiment.pretrained(backbone)
    extra: dict[str, list[str]] = {}
    if "scratch_unet" in args.arms and not args.report:  # the U-Net's budget: scratch UNETR's steps x time ratio
        extra["scratch_unet"] = unet_budget(experiment, step_ratio(experiment, budget.lrs[0] * 256 / budget.batch))
    info = {**code, "mode": mode, "lr_grid": list(budget.lrs), "unet_extra": extra.get("scratch_unet")}
    grid: list[dict] = []
    rows: list[dict] = []
    longer: list[dict] = []

    def run(arm: str, fraction: float, seed: int, lr: float, into: list[dict], epochs: int | None = None) -> None:
        """Train (or, with --report, only read back) one run and rewrite every table and figure."""
        if (row := experiment.finetune(arm, fraction, seed, lr, extra.get(arm, []), epochs)) is not None:
            into.append(row)
            elapsed = {"wall_seconds_this_invocation": round(time.time() - started)}
            rates = selection_table(grid, budget.lrs)
            write_results(experiment, pd.DataFrame(rows), rates, pd.DataFrame(longer), info | elapsed)

    for arm in args.arms:
        for lr in budget.lrs:
            run(arm, fractions[0], 0, lr, grid)
    selection = selection_table(grid, budget.lrs)
    chosen = dict(zip(selection.loc[selection["chosen"], "arm"], selection.loc[selection["chosen"], "lr"]))
    ready = [arm for arm in args.arms if arm in chosen]
    for fraction in fractions:
        for seed in range(args.seeds if fraction < 1 else 1):
            for arm in ready:
                run(arm, fraction, seed, chosen[arm], rows)
    for arm in ready if args.epochs_at_full else []:
        run(arm, 1.0, 0, chosen[arm], longer, args.epochs_at_full)
    if (args.output / "results.md").is_file():
        print((args.output / "results.md").read_text())


if __name__ == "__main__":
    main()
