"""The label-efficiency experiment: every stage runs (a few steps each) on the synthetic demo set and on the
real X-rays, the runs are paired fairly, and the tables are the mean and spread of the runs."""

from __future__ import annotations

import json
import subprocess
import sys

import label_efficiency
import pandas as pd
import pytest

from medmae.checkpoint import load_checkpoint
from tests.helpers import BENCHMARKS, shared


def test_results_are_the_mean_and_sample_std_over_seeds():
    runs = pd.DataFrame(
        [
            {
                "method": "mae_unetr",
                "label_fraction": 0.1,
                "seed": s,
                "dsc_mean": d,
                "hd95_mm_mean": h,
                "hd95_undefined": 1,
                "steps": 10,
                "train_seconds": 5.0,
            }
            for s, d, h in ((0, 0.5, 4.0), (1, 0.7, 6.0))
        ]
        + [
            {
                "method": "mae_unetr",
                "label_fraction": 1.0,
                "seed": 0,
                "dsc_mean": 0.8,
                "hd95_mm_mean": 3.0,
                "hd95_undefined": 0,
                "steps": 10,
                "train_seconds": 5.0,
            }
        ]
    )
    table = label_efficiency.aggregate(runs)
    low = table[table["label_fraction"] == 0.1].iloc[0]
    assert (low["dsc_mean_mean"], low["seeds"]) == (pytest.approx(0.6), 2)
    assert low["dsc_mean_std"] == pytest.approx(2**0.5 * 0.1)  # ddof 1
    text = label_efficiency.markdown(table)
    assert "| mae_unetr | 10% | 2 | 0.600 +/- 0.141 | 5.000 +/- 1.414 | 1.0 +/- 0.0 | 10 | 5 |" in text
    assert "| mae_unetr | 100% | 1 | 0.800 | 3.000 | 0.0 | 10 | 5 |" in text  # one seed: no spread


@pytest.mark.slow
def test_quick_run_pairs_the_models_fairly_and_writes_every_output(tmp_path, demo_root):
    """Every stage on the synthetic demo set (scored on its validation part: it has no test part)."""
    output, work = tmp_path / "results", tmp_path / "work"
    command = [
        sys.executable,
        str(BENCHMARKS / "label_efficiency.py"),
        "--quick",
        "--task",
        "demo",
        "--data-root",
        str(demo_root),
        "--split",
        "fold0",
        "--part",
        "val",
        "--fractions",
        "1.0",
        "0.5",
        "--seeds",
        "2",
        "--output",
        str(output),
        "--work-dir",
        str(work),
    ]
    subprocess.run(command, check=True, capture_output=True, encoding="utf-8", errors="replace")
    runs = pd.read_csv(output / "runs.csv")
    assert sorted(runs["method"]) == sorted(["mae_unetr", "scratch_unetr", "scratch_unet"] * 3)
    for _, row in runs.iterrows():  # each row holds its own run's foreground mean, as medmae evaluate wrote it
        summary = pd.read_csv(work / row["run"] / "evaluate_val" / "summary.csv", comment="#")
        assert row["dsc_mean"] == pytest.approx(summary.set_index("class").loc["foreground mean", "dsc_mean"], rel=1e-5)
        saved = load_checkpoint(work / row["run"] / "checkpoints" / "best.pt")
        assert saved["pretrained"] == (
            str(work / "mae" / "checkpoints" / "last.pt") if row["method"] == "mae_unetr" else None
        )
        config = saved["run_config"]
        assert (config["data"]["label_fraction"], config["data"]["label_seed"], config["train"]["seed"]) == (
            row["label_fraction"],
            row["seed"],
            row["seed"],
        )
        assert config["optim"]["layer_decay"] == (1.0 if row["method"] != "mae_unetr" else 0.9)  # demo recipe: 0.9
    paired = runs[runs["method"] != "scratch_unet"].groupby(["label_fraction", "seed"])["steps"].nunique()
    assert (paired == 1).all()  # MAE and scratch UNETR: the same steps on the same label set
    assert runs.loc[runs["method"] == "scratch_unet", "time_vs_scratch_unetr"].notna().all()
    assert (output / "results.md").read_text().count("| mae_unetr |") == 2
    assert (output / "score_vs_labels.png").stat().st_size > 10_000 and (output / "mae_reconstruction.png").is_file()
    assert {p.stem for p in (output / "configs").iterdir()} == {"mae", *runs["run"]}
    provenance = json.loads((output / "provenance.json").read_text())
    assert (provenance["mode"], provenance["split"], provenance["scored_part"]) == ("quick", "fold0", "val")
    assert provenance["unet_seconds_per_step"] > 0 and len(provenance["commit"]) == 40
    again = subprocess.run(
        command, check=True, capture_output=True, encoding="utf-8", errors="replace"
    )  # finished runs resume as finished
    assert pd.read_csv(output / "runs.csv")["steps"].tolist() == runs["steps"].tolist()
    assert again.returncode == 0


@pytest.mark.slow
def test_quick_chest_xray_run_scores_auc_without_a_unet(tmp_path):
    root = shared("chestxray14_nih_subset")
    output = tmp_path / "results"
    subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "label_efficiency.py"),
            "--quick",
            "--task",
            "chestxray14",
            "--data-root",
            str(root),
            "--fractions",
            "1.0",
            "--output",
            str(output),
            "--work-dir",
            str(tmp_path / "work"),
        ],
        check=True,
        capture_output=True,
        encoding="utf-8",
        errors="replace",
    )
    runs = pd.read_csv(output / "runs.csv")
    assert list(runs["method"]) == ["mae_vit", "scratch_vit"]
    assert runs["auc_mean"].between(0, 1).all() and "auc_Effusion" in runs.columns
    assert "| mae_vit | 100% | 1 |" in (output / "results.md").read_text()
    assert json.loads((output / "provenance.json").read_text())["split"] is None  # the manifest's default


@pytest.mark.slow
def test_another_backbone_replaces_unetr_in_the_mae_and_both_of_its_arms(tmp_path, demo_root):
    output, work = tmp_path / "results", tmp_path / "work"
    command = [
        *[sys.executable, str(BENCHMARKS / "label_efficiency.py"), "--quick", "--task", "demo"],
        *["--data-root", str(demo_root), "--split", "fold0", "--part", "val", "--fractions", "1.0"],
        *["--backbone", "dynunet", "--output", str(output), "--work-dir", str(work)],
    ]
    subprocess.run(command, check=True, capture_output=True, encoding="utf-8", errors="replace")
    runs = pd.read_csv(output / "runs.csv")
    assert sorted(runs["method"]) == ["mae_dynunet", "scratch_dynunet", "scratch_unet"]
    assert load_checkpoint(work / "mae" / "checkpoints" / "last.pt")["config"]["name"] == "mae_dynunet_tiny_3d"
    for method, name in (("mae_dynunet", "dynunet_tiny_3d"), ("scratch_unet", "unet_3d")):
        (run,) = runs.loc[runs["method"] == method, "run"]
        assert load_checkpoint(work / run / "checkpoints" / "best.pt")["config"]["name"] == name
