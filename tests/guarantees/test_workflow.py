"""The whole workflow on the real hippocampus MRIs: pretrain -> finetune -> evaluate -> predict, with every
file and record each step promises."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd

from medmae.checkpoint import load_checkpoint
from medmae.cli import main
from tests.helpers import TINY


def test_pretrain_finetune_evaluate_predict_on_hippocampus(tmp_path, hippocampus_root):
    common = ["--task", "msd_hippocampus", "--data-root", str(hippocampus_root), "--config", TINY]
    mae, unetr = tmp_path / "mae", tmp_path / "unetr"
    assert main(["pretrain", *common, "--output-dir", str(mae)]) == 0
    assert len(pd.read_csv(mae / "metrics.csv")) == 2 and (mae / "config.yaml").is_file()
    assert sorted(p.name for p in (mae / "figures").glob("*.png")) == [
        "reconstruction_epoch0001.png",
        "reconstruction_epoch0002.png",
    ]
    assert (
        main(
            [
                "finetune",
                *common,
                "--pretrained",
                str(mae / "checkpoints" / "last.pt"),
                "--output-dir",
                str(unetr),
                "--label-fraction",
                "0.5",
                "--set",
                "train.val_every=2",
            ]
        )
        == 0
    )
    best = load_checkpoint(unetr / "checkpoints" / "best.pt")
    assert best["config"]["name"] == "unetr_vit_tiny_patch16_3d" and best["config"]["img_size"] == [48, 64, 48]
    assert best["task"]["spacing"] == [1.0, 1.0, 1.0] and best["task"]["intensity"]["rule"] == "percentile_zscore"
    assert (best["stage"], best["epoch"], best["step"], best["medmae_version"]) == ("finetune", 2, 4, "0.1.0")
    assert best["run_config"]["data"]["label_fraction"] == 0.5 and "optimizer" not in best
    assert set(pd.read_csv(unetr / "metrics.csv").columns) >= {"loss", "lr", "samples_per_s", "val_mean_dsc"}

    evaluation = tmp_path / "evaluation"
    assert (
        main(
            [
                "evaluate",
                "--task",
                "msd_hippocampus",
                "--data-root",
                str(hippocampus_root),
                "--checkpoint",
                str(unetr / "checkpoints" / "best.pt"),
                "--output-dir",
                str(evaluation),
                "--quiet",
            ]
        )
        == 0
    )
    per_case = pd.read_csv(evaluation / "per_case.csv")
    assert len(per_case) == 40 * 2 and set(per_case["class"]) == {"anterior", "posterior"}
    assert (evaluation / "summary.csv").is_file() and len(list((evaluation / "predictions").glob("*.nii.gz"))) == 40

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in ("hippocampus_001.nii.gz", "hippocampus_004.nii.gz"):
        (inputs / name).write_bytes((hippocampus_root / "imagesTr" / name).read_bytes())
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(unetr / "checkpoints" / "best.pt"),
                "--input",
                str(inputs),
                "--output-dir",
                str(tmp_path / "predictions"),
                "--quiet",
            ]
        )
        == 0
    )
    for source in inputs.iterdir():
        image, prediction = nib.load(source), nib.load(tmp_path / "predictions" / source.name)
        assert prediction.shape == image.shape and np.allclose(prediction.affine, image.affine)
        assert set(np.unique(np.asarray(prediction.dataobj))) <= {0, 1, 2}
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(unetr / "checkpoints" / "best.pt"),
                "--input",
                str(inputs),
                "--output-dir",
                str(inputs / "out"),
            ]
        )
        == 2
    )  # never inside the input folder
    (inputs / "hippocampus_004.nii.gz").write_bytes(b"")
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(unetr / "checkpoints" / "best.pt"),
                "--input",
                str(inputs),
                "--output-dir",
                str(tmp_path / "again"),
            ]
        )
        == 2
    )  # an unreadable input is named, not a crash
