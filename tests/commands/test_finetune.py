"""``medmae finetune`` from the command line: ImageNet weights given as ``--pretrained imagenet:FILE``; bad
training cases named before the first step."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medmae.cli import main
from medmae.data.manifests import load_split
from medmae.models import ViTEncoder
from medmae.tasks import load_task
from tests.helpers import demo_run
from tests.models.helpers import timm_layout


@pytest.mark.slow
def test_finetune_takes_imagenet_weights_from_the_command_line(tmp_path, demo_root, caplog):
    from medmae.checkpoint import load_checkpoint

    caplog.set_level(logging.INFO, logger="medmae")
    encoder = ViTEncoder(2, 224, 16, 3, 192, 12, 3, 768, cls_token=True, norm_eps=1e-6)
    torch.save(timm_layout(encoder), tmp_path / "vit_tiny.pth")
    code = main(
        demo_run(
            "finetune",
            demo_root,
            tmp_path / "unetr",
            "--set",
            "train.epochs=1",
            "--set",
            "optim.warmup_epochs=0",
            "--pretrained",
            f"imagenet:{tmp_path / 'vit_tiny.pth'}",
        )
    )
    assert code == 0
    log = caplog.text
    assert (
        "read timm ViT weights" in log
        and "inflated the patch embedding [192, 3, 16, 16] -> [192, 3, 16, 16, 16]" in log
    )
    assert "input channels 3 -> 1" in log and "resampled from grid (14, 14, 1) to (3, 3, 2)" in log
    saved = load_checkpoint(tmp_path / "unetr" / "checkpoints" / "last.pt")
    assert saved["config"]["width"] == 192 and saved["config"]["norm_eps"] == 1e-6
    assert saved["pretrained"] == f"imagenet:{tmp_path / 'vit_tiny.pth'}"
    assert (
        main(
            [
                "finetune",
                "--task",
                "demo",
                "--data-root",
                str(demo_root),
                "--pretrained",
                f"imagenet:{tmp_path / 'missing.pth'}",
                "--output-dir",
                str(tmp_path / "other"),
            ]
        )
        == 2
    )


def test_every_bad_training_case_is_named_before_the_first_step(capsys, demo_root, tmp_path):
    root = Path(shutil.copytree(demo_root, tmp_path / "data"))
    train = [case.image.name[: -len(".nii.gz")] for case in load_split(load_task("demo"), root).train]
    for case, value in ((train[0], np.nan), (train[1], np.inf)):
        image = nib.load(root / "imagesTr" / f"{case}.nii.gz")
        array = np.asarray(image.dataobj, dtype=np.float32).copy()
        array[5, 5, 5] = value
        nib.save(nib.Nifti1Image(array, image.affine), root / "imagesTr" / f"{case}.nii.gz")
    output = tmp_path / "run"
    assert main(demo_run("finetune", root, output)) == 2
    err = capsys.readouterr().err
    assert "2 of 5 cases could not be preprocessed, found before training" in err and "Traceback" not in err
    assert f"{train[0]}.nii.gz: 1 non-finite voxels" in err and f"{train[1]}.nii.gz: 1 non-finite voxels" in err
    assert not output.exists()
