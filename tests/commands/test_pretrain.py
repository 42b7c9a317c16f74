"""``medmae pretrain`` from the command line: it says where the checkpoints are, in runs/<task>_pretrain
unless ``--output-dir`` is given."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys

from medmae.checkpoint import load_checkpoint
from medmae.cli import main
from tests.helpers import TINY, convert_image, demo_run, write_dicom_series


def test_pretraining_writes_its_run_folder_and_says_where(capsys, demo_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["pretrain", "--task", "demo", "--data-root", str(demo_root), "--config", TINY]) == 0
    assert "pretraining finished; checkpoints in runs/demo_pretrain/checkpoints" in capsys.readouterr().out
    last = load_checkpoint(tmp_path / "runs" / "demo_pretrain" / "checkpoints" / "last.pt")
    assert (last["stage"], last["epoch"], last["config"]["name"]) == ("pretrain", 2, "mae_vit_tiny_patch16_3d")


def test_pretraining_on_plain_folders_of_nrrd_and_dicom_holds_a_share_out(capsys, caplog, demo_root, tmp_path):
    caplog.set_level(logging.INFO, logger="medmae")
    scans = tmp_path / "scans"
    for k, case in enumerate(("img0001", "img0002", "img0003")):
        (scans / f"patient{k}").mkdir(parents=True)
        convert_image(demo_root / "imagesTr" / f"{case}.nii.gz", scans / f"patient{k}" / "ct.nrrd")
    write_dicom_series(demo_root / "imagesTr" / "img0004.nii.gz", scans / "patient3" / "series")
    (scans / "notes.txt").write_text("not an image")
    shutil.copy(demo_root / "imagesTr" / "img0005.nii.gz", tmp_path / "extra.nii.gz")
    output = tmp_path / "pretrain"
    argv = ["pretrain", "--task", "demo", "--config", TINY, "--output-dir", str(output)]
    assert main([*argv, "--images", str(scans), "--images", str(tmp_path / "*.nii.gz")]) == 0
    assert "on 4 images of task demo (1 more held out for the reconstruction figure)" in caplog.text
    assert "GDCM" not in capsys.readouterr().err  # folders without a series are checked quietly
    last = load_checkpoint(output / "checkpoints" / "last.pt")
    assert last["split"] == {"task": "demo", "split": "images", "source": f"--images {scans} {tmp_path / '*.nii.gz'}"}
    assert (output / "figures").is_dir()
    assert main([*argv, "--images", str(scans), "--data-root", str(demo_root)]) == 2
    assert "--images replaces --data-root: give one or the other" in capsys.readouterr().err


def test_a_log_file_gets_time_stamped_lines(demo_root, tmp_path):
    command = [sys.executable, "-m", "medmae", *demo_run("pretrain", demo_root, tmp_path / "run")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)  # stderr: a pipe
    assert done.returncode == 0, done.stderr
    epochs = [line for line in done.stderr.splitlines() if " epoch 1/2: " in line or " epoch 2/2: " in line]
    assert len(epochs) == 2 and all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d epoch", line) for line in epochs)
