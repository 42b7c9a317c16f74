"""The label-efficiency experiment: the statistics and tables on runs with known answers; every stage (a few
steps each) on the synthetic demo set and on the real X-rays, fair pairing of the arms, the learning rate
chosen on validation, and resuming from the results folder alone."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import label_efficiency
import pandas as pd
import pytest

from medmae.checkpoint import load_checkpoint, model_checkpoint, save_checkpoint
from medmae.models import create_model
from tests.helpers import BENCHMARKS, ROOT, shared


def known_cases() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two seeds x 4 cases: MAE UNETR = scratch UNETR + 0.05 on every case; the U-Net 0.1 below scratch; MAE
    DynUNet has the best validation score although its test scores are the lowest."""
    base = {"c0": 0.6, "c1": 0.7, "c2": 0.8, "c3": 0.9}
    arms = {"mae_unetr": 0.05, "scratch_unetr": 0.0, "scratch_unet": -0.1, "mae_dynunet": -0.2}
    cases = pd.DataFrame(
        [
            {"arm": arm, "label_fraction": 0.1, "seed": seed, "case_id": case, "dsc": dsc + shift + 0.01 * seed}
            for arm, shift in arms.items()
            for seed in (0, 1)
            for case, dsc in base.items()
        ]
    )
    best_val = {"mae_unetr": 0.7, "scratch_unetr": 0.6, "scratch_unet": 0.5, "mae_dynunet": 0.9}
    runs = pd.DataFrame(
        [
            {"arm": arm, "label_fraction": 0.1, "seed": seed, "best_val": best_val[arm]}
            for arm in arms
            for seed in (0, 1)
        ]
    )
    return runs, cases


def test_comparisons_pair_each_backbone_and_pick_the_best_mae_on_validation_not_test():
    runs, cases = known_cases()
    table = label_efficiency.comparisons(runs, cases).set_index(["a", "b"])
    unetr = table.loc[("mae_unetr", "scratch_unetr")]
    assert unetr["mean_difference"] == pytest.approx(0.05) and unetr["ci_low"] == pytest.approx(0.05)
    assert (unetr["cases"], unetr["seeds"], unetr["wins"]) == (4, 2, 4)
    assert ("mae_dynunet", "scratch_unet") in table.index  # best on validation, though worst on test
    assert table.loc[("mae_dynunet", "scratch_unet"), "mean_difference"] == pytest.approx(-0.1)
    assert ("mae_dynunet", "scratch_dynunet") not in table.index  # no scratch DynUNet runs


def test_comparisons_use_only_the_seeds_both_arms_have():
    runs, cases = known_cases()
    cases = cases[~((cases["arm"] == "scratch_unetr") & (cases["seed"] == 1))]
    row = label_efficiency.comparisons(runs, cases).set_index(["a", "b"]).loc[("mae_unetr", "scratch_unetr")]
    assert row["seeds"] == 1 and row["mean_difference"] == pytest.approx(0.05)


def test_the_arm_table_holds_the_seed_averaged_case_mean_inside_its_interval():
    runs, cases = known_cases()
    runs = runs.assign(
        run="r", lr=1e-3, dsc_mean=0.7, hd95_mm_mean=2.0, hd95_penalised=1, collapsed=False, steps=10, train_seconds=1.0
    )
    table = label_efficiency.arm_table(runs, cases).set_index("arm")
    assert table.loc["mae_unetr", "case_dsc"] == pytest.approx(0.75 + 0.05 + 0.005)  # case mean, shift, seeds
    assert table.loc["mae_unetr", "ci_low"] <= table.loc["mae_unetr", "case_dsc"] <= table.loc["mae_unetr", "ci_high"]
    assert (table.loc["mae_unetr", "seeds"], table.loc["mae_unetr", "hd95_penalised"]) == (2, 2)


def test_a_rate_is_chosen_on_validation_once_its_whole_grid_has_run():
    grid = [
        {"run": f"{arm}_{lr}", "arm": arm, "label_fraction": 0.1, "seed": 0, "lr": lr, "best_val": score}
        for arm, lr, score in [("a", 1e-3, 0.5), ("a", 1e-2, 0.7), ("b", 1e-3, 0.9)]
    ]
    table = label_efficiency.selection_table(grid, (1e-3, 1e-2))
    assert table.loc[table["chosen"], "run"].tolist() == ["a_0.01"]  # b has not run at 1e-2 yet
    assert label_efficiency.selection_table([], (1e-3,)).empty


def quick_command(root, output, work, *extra) -> list[str]:
    return [
        *[sys.executable, str(BENCHMARKS / "label_efficiency.py"), "--quick", "--task", "demo"],
        *["--data-root", str(root), "--split", "fold0", "--part", "val", "--output", str(output)],
        *["--work-dir", str(work), *extra],
    ]


@pytest.mark.slow
def test_quick_run_pairs_the_arms_fairly_and_writes_every_output(tmp_path, demo_root):
    """Every stage on the synthetic demo set (scored on its validation part: it has no test part)."""
    output, work = tmp_path / "results", tmp_path / "work"
    command = quick_command(demo_root, output, work, "--fractions", "1.0", "0.5", "--seeds", "2")
    subprocess.run(command, check=True, capture_output=True, encoding="utf-8", errors="replace")
    runs = pd.read_csv(output / "runs.csv")
    arms = label_efficiency.SEGMENTATION_ARMS
    assert sorted(runs["arm"]) == sorted(arms * 3)  # 50 % x 2 seeds, 100 % x 1
    selection = pd.read_csv(output / "lr_selection.csv")
    assert len(selection) == len(arms) * 2 and (selection["label_fraction"] == 0.5).all()
    for arm, part in selection.groupby("arm"):
        chosen = part.loc[part["best_val"].idxmax(), "lr"]
        assert part.loc[part["chosen"], "lr"].tolist() == [chosen]
        assert (runs.loc[runs["arm"] == arm, "lr"] == chosen).all()  # every seed and fraction uses it
    ratio = json.loads((output / "step_ratio.json").read_text())["ratio"]
    for _, row in runs.iterrows():
        kept = output / "runs" / row["run"]
        summary = pd.read_csv(kept / "summary.csv", comment="#").set_index("class")
        assert row["dsc_mean"] == pytest.approx(summary.loc["foreground mean", "dsc_mean"], rel=1e-5)
        saved = load_checkpoint(work / row["run"] / "checkpoints" / "best.pt")
        backbone = row["arm"].split("_", 1)[1]
        pretrained = str(output / "pretrained" / f"mae_{backbone}.pt")
        assert saved["pretrained"] == (pretrained if row["arm"].startswith("mae_") else None)
        config = saved["run_config"]
        assert (config["data"]["label_fraction"], config["data"]["label_seed"], config["train"]["seed"]) == (
            row["label_fraction"],
            row["seed"],
            row["seed"],
        )
        assert config["optim"]["base_lr"] == pytest.approx(row["lr"] * 256 / 2)  # the grid's peak rate at batch 2
        assert (config["train"]["epochs"], config["train"]["patience"]) == (2, 1)
        expected_steps = max(1, round(2 * ratio)) if row["arm"] == "scratch_unet" else 2
        assert config["train"]["steps_per_epoch"] == expected_steps  # the U-Net: scratch UNETR's wall time
        if row["arm"] != "mae_unetr":
            assert config["optim"]["layer_decay"] == 1.0
    compared = pd.read_csv(output / "comparisons.csv")
    assert {("mae_unetr", "scratch_unetr"), ("mae_dynunet", "scratch_dynunet")} <= set(
        zip(compared["a"], compared["b"])
    )
    assert (compared["b"] == "scratch_unet").sum() == 2  # the best MAE on validation against the U-Net, per fraction
    for name in ("dsc_vs_labels.png", "validation_curves.png"):
        assert (output / name).stat().st_size > 10_000
    for backbone, model in (("unetr", "mae_vit_tiny_patch16_3d"), ("dynunet", "mae_dynunet_tiny_3d")):
        assert load_checkpoint(output / "pretrained" / f"mae_{backbone}.pt")["config"]["name"] == model
        assert "optimizer" not in load_checkpoint(output / "pretrained" / f"mae_{backbone}.pt")
        assert (output / "pretrained" / f"mae_{backbone}.heldout.json").is_file()
    assert "## Paired differences" in (output / "results.md").read_text()
    provenance = json.loads((output / "provenance.json").read_text())
    assert (provenance["mode"], provenance["split"], provenance["scored_part"]) == ("quick", "fold0", "val")
    assert provenance["runs_done"] == len(runs) and len(provenance["commit"]) == 40

    (output / "runs.csv").unlink()
    subprocess.run([*command, "--report"], check=True, capture_output=True, encoding="utf-8", errors="replace")
    assert pd.read_csv(output / "runs.csv").equals(runs)  # the tables again, from the kept runs alone

    shutil.rmtree(work)  # another machine: only the committed results folder
    subprocess.run(command, check=True, capture_output=True, encoding="utf-8", errors="replace")
    assert pd.read_csv(output / "runs.csv").equals(runs)
    assert not work.exists() or not any(work.iterdir())  # nothing was trained again

    first = json.loads((output / "pretrained" / "mae_unetr.reproduced.json").read_text())
    assert first["committed_sha256"] is None and first["same_weights"] is None
    (output / "pretrained" / "mae_unetr.pt").unlink()  # the weights are not committed; their SHA-256 is
    subprocess.run(command, check=True, capture_output=True, encoding="utf-8", errors="replace")
    again = json.loads((output / "pretrained" / "mae_unetr.reproduced.json").read_text())
    assert again["committed_sha256"] == first["sha256"] and again["same_weights"] is True  # deterministic on CPU


@pytest.mark.slow
def test_quick_chest_xray_run_scores_auc_without_a_unet(tmp_path):
    root = shared("chestxray14_nih_subset")
    output = tmp_path / "results"
    subprocess.run(
        [
            *[sys.executable, str(BENCHMARKS / "label_efficiency.py"), "--quick", "--task", "chestxray14"],
            *["--data-root", str(root), "--fractions", "1.0", "--output", str(output)],
            *["--work-dir", str(tmp_path / "work")],
        ],
        check=True,
        capture_output=True,
        encoding="utf-8",
        errors="replace",
    )
    runs = pd.read_csv(output / "runs.csv")
    assert list(runs["arm"]) == ["mae_vit", "scratch_vit"]
    assert runs["auc_mean"].between(0, 1).all() and "auc_Effusion" in runs.columns
    assert "| mae_vit | 1.000 | 1 |" in (output / "results.md").read_text()
    assert json.loads((output / "provenance.json").read_text())["split"] is None  # the manifest's default


def test_an_arm_of_another_task_is_refused(tmp_path, demo_root):
    result = subprocess.run(
        quick_command(demo_root, tmp_path / "o", tmp_path / "w", "--arms", "mae_vit"),
        check=False,
        capture_output=True,
        encoding="utf-8",
        errors="replace",
    )
    assert result.returncode == 2 and "--arms mae_vit: demo has the arms mae_unetr" in result.stderr


def test_a_kept_mae_of_another_split_is_refused(tmp_path, demo_root):
    """The results folder's MAE is reused only for the split it was pretrained on: on another, its
    pretraining images could be the scored ones."""
    mae = create_model("mae_vit_tiny_patch16_3d", img_size=(32, 32, 32))
    kept = tmp_path / "o" / "pretrained" / "mae_unetr.pt"
    kept.parent.mkdir(parents=True)
    save_checkpoint(model_checkpoint(mae, split={"task": "demo", "split": "fold1"}), kept)
    command = quick_command(demo_root, tmp_path / "o", tmp_path / "w", "--arms", "mae_unetr")
    result = subprocess.run(command, check=False, capture_output=True, encoding="utf-8", errors="replace")
    assert result.returncode == 2 and "was pretrained on split fold1, not fold0" in result.stderr


def test_a_longer_schedule_without_the_100_percent_runs_is_refused(tmp_path, demo_root):
    command = quick_command(demo_root, tmp_path / "o", tmp_path / "w", "--fractions", "0.5", "--epochs-at-full", "3")
    result = subprocess.run(command, check=False, capture_output=True, encoding="utf-8", errors="replace")
    assert result.returncode == 2 and "--epochs-at-full lengthens the 100 % runs" in result.stderr


def test_git_keeps_the_files_a_resumed_experiment_reads_from_the_results_folder():
    """Each run's ``result.json`` must be committed for another machine to resume; the MAE weights (over
    1 MB) and the work folder's checkpoints stay ignored."""
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout, or no git: nothing decides what is committed")
    folder = "docs/results/msd_hippocampus_label_efficiency"
    kept, weights = f"{folder}/runs/mae_unetr_labels0.1_seed0_lr0.003/result.json", f"{folder}/pretrained/mae_unetr.pt"
    work = "runs/label_efficiency_msd_hippocampus_cpu/mae_unetr_labels0.1_seed0_lr0.003/checkpoints/best.pt"
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", kept, weights, work],
        check=True,
        cwd=ROOT,
        capture_output=True,
        encoding="utf-8",
    ).stdout.split()
    assert ignored == [weights, work]


@pytest.mark.slow
def test_epochs_at_full_adds_a_longer_100_percent_run_beside_the_budgets(tmp_path, demo_root):
    """A longer schedule at 100 % labels is a run of its own (named for its epochs) shown beside the budget's in
    longer_schedule.csv with its step cap and what ended it; the main tables keep the budget's runs."""
    output, work = tmp_path / "results", tmp_path / "work"
    extra = ["--arms", "scratch_dynunet", "--fractions", "0.5", "1.0", "--seeds", "1", "--epochs-at-full", "3"]
    subprocess.run(quick_command(demo_root, output, work, *extra), check=True, capture_output=True, text=True)
    runs = pd.read_csv(output / "runs.csv")
    assert not runs["run"].str.contains("epochs").any() and sorted(runs["label_fraction"]) == [0.5, 1.0]
    schedules = pd.read_csv(output / "longer_schedule.csv").set_index("run")
    budget_run = runs.loc[runs["label_fraction"] == 1, "run"].item()
    assert list(schedules.index) == [budget_run, f"{budget_run}_epochs3"]
    assert list(schedules["step_cap"]) == [2 * 2, 3 * 2]  # --quick: 2 epochs of 2 steps
    assert ((schedules["steps"] < schedules["step_cap"]) == (schedules["ended_by"] == "patience")).all()
    train = load_checkpoint(work / f"{budget_run}_epochs3" / "checkpoints" / "last.pt")["run_config"]["train"]
    assert train["epochs"] == 3
    assert "100 % labels: the budget's schedule and a longer one" in (output / "results.md").read_text()
    assert (output / "longer_schedule_comparisons.csv").is_file()
