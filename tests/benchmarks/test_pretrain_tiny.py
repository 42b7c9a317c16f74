"""The committed pretraining benchmark: it runs on generated volumes, and on the real hippocampus MRIs a
tiny 3D MAE trained for 300 steps ends at least 10 % below the loss of predicting zero (1.0)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import BENCHMARKS

SCRIPT = BENCHMARKS / "pretrain_tiny.py"


def run(tmp_path, *args):
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--output-dir", str(tmp_path), *args],
        check=True,
        capture_output=True,
        encoding="utf-8",
        errors="replace",
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert json.loads((tmp_path / "result.json").read_text()) == result
    assert (tmp_path / "reconstruction.png").stat().st_size > 10_000
    assert (tmp_path / "checkpoint.pt").is_file()
    return result


def test_synthetic_smoke_run(tmp_path):
    result = run(tmp_path, "--steps", "4")
    assert result["steps"] == 4 and result["heldout_volumes"] == 40


def test_hippocampus_300_steps_beats_predicting_zero_by_10_percent(tmp_path, hippocampus_root):
    result = run(tmp_path, "--data", "hippocampus", "--data-root", str(hippocampus_root), "--steps", "300")
    assert (result["train_volumes"], result["heldout_volumes"]) == (160, 40)
    assert abs(result["heldout_zero_prediction_loss"] - 1.0) < 0.01
    assert result["heldout_loss"] <= 0.9, result


def test_the_convolutional_mae_and_another_patch_size_run_too(tmp_path):
    for model in ("mae_dynunet_tiny_3d", "mae_vit_tiny_patch8_3d"):
        result = run(tmp_path / model, "--steps", "2", "--batch-size", "2", "--model", model)
        assert result["model"] == model and result["heldout_positional_mean_loss"] > 0
