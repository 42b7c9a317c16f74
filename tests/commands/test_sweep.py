"""``medmae sweep`` on the demo set: bad points refused before anything runs; the grid run end to end, resumed."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from medmae.cli import main
from tests.helpers import TINY


def test_a_bad_value_is_refused_before_anything_runs(tmp_path, demo_root, capsys):
    output = tmp_path / "sweep"
    code = main(
        [
            "sweep",
            "--task",
            "demo",
            "--data-root",
            str(demo_root),
            "--param",
            "mask_strategy=random,checkered",
            "--output-dir",
            str(output),
        ]
    )
    assert code == 2 and "model.mask_strategy must be one of random, block, grid" in capsys.readouterr().err
    for flags, problem in (
        (
            ["--param", "mask_strategy=random,grid", "--set", "mask_ratio=0.75"],
            "mask_ratio must be 1 - 1/k^3",
        ),  # demo's 48 x 48 x 32 ROI: grid 3 x 3 x 2
        (["--param", "mask_ratio=0.5,0.75", "--linear-probe"], "is for classification tasks"),
    ):
        code = main(["sweep", "--task", "demo", "--data-root", str(demo_root), *flags, "--output-dir", str(output)])
        assert code == 2 and problem in capsys.readouterr().err
    assert not output.exists()


@pytest.mark.slow
def test_a_sweep_shares_pretraining_scores_every_point_and_resumes(tmp_path, demo_root):
    output = tmp_path / "sweep"
    command = [
        "sweep",
        "--task",
        "demo",
        "--data-root",
        str(demo_root),
        "--pretrain-config",
        TINY,
        "--finetune-config",
        TINY,
        "--param",
        "finetune:optim.base_lr=0.01,0.05",
        "--set",
        "train.epochs=1",
        "--set",
        "optim.warmup_epochs=0",
        "--set",
        "finetune:train.steps_per_epoch=1",
        "--output-dir",
        str(output),
    ]
    assert main(command) == 0
    table = pd.read_csv(output / "sweep.csv")
    assert table["finetune:optim.base_lr"].tolist() == [0.01, 0.05]
    assert table["mean_dsc"].between(0, 1).all() and table["pretrain_run"].nunique() == 1  # one MAE for both points
    assert sorted(p.name for p in (output / "finetune").iterdir()) == ["base_lr=0.01", "base_lr=0.05"]
    assert (output / "sweep.png").stat().st_size > 0 and "| finetune:optim.base_lr |" in (
        output / "sweep.md"
    ).read_text()
    mae = output / "pretrain" / "shared" / "checkpoints" / "last.pt"
    stamp = mae.stat().st_mtime_ns
    (output / "finetune" / "base_lr=0.05" / "result.json").unlink()  # as if stopped before its scores were written
    assert main(command) == 0
    again = pd.read_csv(output / "sweep.csv")
    assert mae.stat().st_mtime_ns == stamp  # the finished pretraining was not run again
    assert (
        json.loads((output / "finetune" / "base_lr=0.05" / "result.json").read_text())["mean_dsc"]
        == again["mean_dsc"][1]
    )
    assert again["mean_dsc"].tolist() == table["mean_dsc"].tolist()  # the same best.pt, scored again
    assert main([*command, "--part", "val"]) == 2  # scores of another command are not passed off as these
