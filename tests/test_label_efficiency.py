"""The label-efficiency experiment: every step runs on the real hippocampus MRIs (a few steps each), and the
tables are the mean and spread of the runs."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import label_efficiency


def test_results_are_the_mean_and_sample_std_over_seeds():
    runs = pd.DataFrame([{"method": "mae_unetr", "label_fraction": 0.1, "seed": s, "dsc_mean": d, "hd95_mm_mean": h,
                          "steps": 10, "train_seconds": 5.0} for s, d, h in ((0, 0.5, 4.0), (1, 0.7, 6.0))]
                        + [{"method": "mae_unetr", "label_fraction": 1.0, "seed": 0, "dsc_mean": 0.8, "hd95_mm_mean": 3.0,
                            "steps": 10, "train_seconds": 5.0}])
    table = label_efficiency.aggregate(runs)
    low = table[table["label_fraction"] == 0.1].iloc[0]
    assert (low["dsc_mean_mean"], low["seeds"]) == (pytest.approx(0.6), 2)
    assert low["dsc_mean_std"] == pytest.approx(2**0.5 * 0.1)  # ddof 1
    text = label_efficiency.markdown(table)
    assert "| mae_unetr | 10% | 2 | 0.600 +/- 0.141 | 5.000 +/- 1.414 | 10 | 5 |" in text
    assert "| mae_unetr | 100% | 1 | 0.800 | 3.000 | 10 | 5 |" in text  # one seed: no spread


@pytest.mark.slow
def test_quick_run_writes_every_table_figure_and_config(tmp_path, demo_root):
    """Every step on the synthetic demo set (scored on its validation part: it has no test part)."""
    output = tmp_path / "results"
    subprocess.run([sys.executable, str(BENCHMARKS / "label_efficiency.py"), "--quick", "--task", "demo", "--data-root",
                    str(demo_root), "--split", "fold0", "--part", "val", "--fractions", "1.0", "0.5", "--seeds", "1",
                    "--output", str(output), "--work-dir", str(tmp_path / "work")], check=True, capture_output=True, text=True)
    runs = pd.read_csv(output / "runs.csv")
    assert sorted(runs["method"]) == sorted(["mae_unetr", "scratch_unetr", "scratch_unet"] * 2)
    assert {"dsc_liver", "dsc_mean", "hd95_mm_mean", "steps", "train_seconds"} <= set(runs.columns)
    assert runs["dsc_mean"].between(0, 1).all() and (runs["steps"] >= 1).all()
    assert (output / "results.md").read_text().count("| mae_unetr |") == 2
    assert (output / "dsc_vs_labels.png").stat().st_size > 10_000 and (output / "mae_reconstruction.png").is_file()
    assert {p.stem for p in (output / "configs").iterdir()} >= {"mae", "mae_unetr_labels0.5_seed0", "scratch_unet_labels1_seed0"}
    provenance = json.loads((output / "provenance.json").read_text())
    assert (provenance["mode"], provenance["split"], provenance["scored_part"]) == ("quick", "fold0", "val")
