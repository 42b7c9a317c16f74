"""The own-data how-to's five commands, read from docs/how-to/own-data.md and run as written (a tiny
recipe added to the training commands) on real hippocampus cases laid out as nnU-Net's and a plain folder
of unlabelled NRRD files and DICOM series."""

from __future__ import annotations

import re
import shlex

import pandas as pd

from medmae.checkpoint import load_checkpoint
from medmae.cli import main
from medmae.data.manifests import load_split
from medmae.tasks import load_task
from tests.helpers import ROOT, TINY, convert_image, hippocampus_as_nnunet, shared, write_dicom_series


def five_commands() -> list[list[str]]:
    """The command lines of the how-to's first code block."""
    text = (ROOT / "docs" / "how-to" / "own-data.md").read_text(encoding="utf-8")
    block = re.search(r"## Five commands.*?```\n(.*?)```", text, flags=re.DOTALL).group(1)
    return [shlex.split(line) for line in block.strip().splitlines()]


def test_the_five_commands_take_own_scans_to_per_case_reports(tmp_path, monkeypatch):
    commands = five_commands()
    assert [c[1:3] for c in commands] == [
        ["task", "init"],
        ["data", "check"],
        ["pretrain", "--task"],
        ["finetune", "--task"],
        ["evaluate", "--task"],
    ]
    hippocampus_as_nnunet(tmp_path, cases=10, unlabelled=3)
    images = sorted((shared("msd_hippocampus") / "imagesTr").glob("hippocampus_*.nii.gz"))[13:16]
    for k, image in enumerate(images[:2]):
        (tmp_path / "more_scans" / f"site{k}").mkdir(parents=True)
        convert_image(image, tmp_path / "more_scans" / f"site{k}" / "t1.nrrd")
    write_dicom_series(images[2], tmp_path / "more_scans" / "site2" / "series")
    monkeypatch.chdir(tmp_path)
    for command in commands:
        tiny = ["--config", TINY] if command[1] in ("pretrain", "finetune") else []
        assert main([*command[1:], *tiny]) == 0, command
    mae = load_checkpoint(tmp_path / "runs" / "my_mae" / "checkpoints" / "last.pt")
    assert mae["split"]["split"] == "images"  # 3 NRRD/DICOM scans + 3 of imagesTs, 20 % held out
    assert "imagesTr" not in mae["split"]["source"]  # never the cases it is evaluated on
    per_case = pd.read_csv(tmp_path / "runs" / "my_unetr" / "evaluate_test" / "per_case.csv", comment="#")
    test_part = load_split(load_task("hippocampus.yaml"), "Dataset004_Hippocampus").test  # fold0: 2 of 10
    assert sorted(per_case["case_id"].unique()) == [case.id for case in test_part] and len(test_part) == 2
    assert set(per_case["class"]) == {"anterior", "posterior"} and per_case["dsc"].between(0, 1).all()


def test_an_mae_pretrained_on_the_evaluated_images_is_refused_by_evaluate(tmp_path, monkeypatch, capsys):
    """The mistake the guide warns of: ``pretrain --images imagesTr`` with no ``imagesTs``; the encoder saw
    the test images, and ``evaluate`` says so instead of scoring them."""
    hippocampus_as_nnunet(tmp_path, cases=10)
    monkeypatch.chdir(tmp_path)
    init, _check, pretrain, finetune, evaluate = five_commands()
    pretrain = pretrain[: pretrain.index("--images")] + ["--images", "Dataset004_Hippocampus/imagesTr"]
    assert main(init[1:]) == 0
    assert main([*pretrain[1:], "--output-dir", "runs/my_mae", "--config", TINY]) == 0
    assert main([*finetune[1:], "--config", TINY]) == 0
    capsys.readouterr()
    assert main(evaluate[1:]) == 2
    assert "its encoder has seen the image (runs/my_mae/checkpoints/last.pt)" in capsys.readouterr().err
