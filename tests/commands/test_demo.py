"""``medmae demo`` in a fresh process, as a user runs it: every promised file, and the DSC target."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from medmae.cli import main


def run_demo(output, *flags: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "medmae", "demo", "--output-dir", str(output), *flags],
        check=False,
        capture_output=True,
        encoding="utf-8",
        errors="replace",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def mean_dsc(output) -> float:
    summary = pd.read_csv(output / "evaluate" / "summary.csv")
    return summary.loc[summary["class"] == "foreground mean", "dsc_mean"].item()


@pytest.mark.slow
def test_quick_demo_writes_every_output(tmp_path):
    output = tmp_path / "demo"
    printed = run_demo(output, "--quick").stdout
    for path in (
        "pretrain/figures/reconstruction_epoch0006.png",
        "pretrain/checkpoints/last.pt",
        "finetune/checkpoints/best.pt",
        "finetune/metrics.csv",
        "evaluate/per_case.csv",
        "evaluate/summary.csv",
        "evaluate/summary_notes.txt",
        "evaluate/figures/best_worst.png",
        "evaluate/predictions/img0013.nii.gz",
        "data/dataset_0.json",
    ):
        assert (output / path).is_file(), path
        assert str(output / path.split("/")[0]) in printed
    assert len(pd.read_csv(output / "evaluate" / "per_case.csv")) == 4 * 4  # 4 test cases x 4 organs
    assert f"{mean_dsc(output):.3f}" in printed
    assert main(["demo", "--output-dir", str(output)]) == 2  # a used folder is not overwritten


@pytest.mark.slow
def test_demo_reaches_a_mean_dsc_of_0_7_on_its_test_cases(tmp_path):
    run_demo(tmp_path / "demo")
    assert mean_dsc(tmp_path / "demo") >= 0.7
