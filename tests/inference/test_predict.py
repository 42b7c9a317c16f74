"""Loading a fine-tuned checkpoint for inference, finding the input files, and writing label maps."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from medmae.checkpoint import CheckpointError, load_checkpoint, model_checkpoint, save_checkpoint
from medmae.errors import DataError, UserError
from medmae.inference.predict import input_cases, input_files, load_finetuned
from medmae.models import create_model
from medmae.tasks import load_task
from tests.helpers import write_dicom_series


def test_a_finetuned_checkpoint_loads_in_eval_mode_with_its_task(demo_checkpoint):
    model, payload, task, device = load_finetuned(str(demo_checkpoint), "cpu")
    assert not model.training and task.name == "demo" and str(device) == "cpu"
    assert model.config == load_checkpoint(demo_checkpoint)["config"] and payload["stage"] == "finetune"


def test_pretraining_and_incomplete_checkpoints_are_refused(tmp_path):
    mae = create_model("mae_vit_tiny_patch16_3d", img_size=(32, 32, 32))
    pretrained = save_checkpoint(model_checkpoint(mae, stage="pretrain"), tmp_path / "mae.pt")
    with pytest.raises(
        CheckpointError, match="a pretrain checkpoint; evaluate and predict need one from medmae finetune"
    ):
        load_finetuned(str(pretrained))
    unetr = create_model("unetr_vit_tiny_patch16_3d", img_size=(32, 32, 32), out_channels=2)
    bare = save_checkpoint(model_checkpoint(unetr, stage="finetune"), tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="holds no task, run_config"):
        load_finetuned(str(bare))


def test_input_files_are_the_file_or_the_folder_images_without_hidden_ones(tmp_path):
    task = load_task("demo")
    for name in ("b.nii.gz", "a.nii", "c.nrrd", "d.mha", "._a.nii", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    files, skipped = input_files(tmp_path, task)
    assert [p.name for p in files] == ["a.nii", "b.nii.gz", "c.nrrd", "d.mha"] and [p.name for p in skipped] == [
        "notes.txt"
    ]
    assert input_files(tmp_path / "a.nii", task) == ([tmp_path / "a.nii"], [])
    with pytest.raises(DataError, match="holds no .png or .dcm files"):
        input_files(tmp_path, load_task("chestxray14"))
    with pytest.raises(DataError, match="no such file or folder"):
        input_files(tmp_path / "missing", task)


def test_a_dicom_series_folder_is_one_input_and_a_folder_of_series_is_many(tmp_path):
    image = tmp_path / "image.nii.gz"
    nib.save(nib.Nifti1Image(np.arange(120, dtype=np.int16).reshape(4, 5, 6), np.eye(4)), image)
    write_dicom_series(image, tmp_path / "patients" / "p1")
    write_dicom_series(image, tmp_path / "patients" / "p2")
    task = load_task("demo")
    assert input_files(tmp_path / "patients" / "p1", task) == ([tmp_path / "patients" / "p1"], [])
    assert [p.name for p in input_files(tmp_path / "patients", task)[0]] == ["p1", "p2"]


def test_nnunet_channel_files_become_one_case_named_without_the_channel_suffix(tmp_path):
    files = [tmp_path / name for name in ("a_0000.nii.gz", "a_0001.nii.gz", "b_0000.nii.gz", "b_0001.nii.gz")]
    cases = input_cases(files, channels=2)
    assert [(c.id, c.image_files) for c in cases] == [("a", tuple(files[:2])), ("b", tuple(files[2:]))]
    assert [c.id for c in input_cases(files[::2], channels=1)] == ["a", "b"]
    assert [c.id for c in input_cases(files, channels=1)] == [p.name[:-7] for p in files]  # not nnU-Net's naming
    with pytest.raises(UserError, match=r"x.nii and .*x.nii.gz: two files of case x"):
        input_cases([tmp_path / "x.nii", tmp_path / "x.nii.gz"], channels=1)
    with pytest.raises(DataError, match=r"a_0000.nii and a_0000.nii.gz are both channel 0 of case a"):
        input_cases([tmp_path / "a_0000.nii", tmp_path / "a_0000.nii.gz"], channels=1)
    with pytest.raises(DataError, match=r"case b has channel files \[0\]; expected b_0000, b_0001"):
        input_cases([*files[:2], files[2]], channels=2)
    assert [c.id for c in input_cases([tmp_path / "scan_2019.nii.gz"], channels=1)] == ["scan_2019"]
