"""Loading a fine-tuned checkpoint for inference, finding the input files, and writing label maps."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from medmae.checkpoint import CheckpointError, load_checkpoint, model_checkpoint, save_checkpoint
from medmae.errors import DataError
from medmae.inference.predict import input_files, load_finetuned, save_label_map
from medmae.models import create_model
from medmae.tasks import load_task


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
    for name in ("b.nii.gz", "a.nii", "._a.nii", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in input_files(tmp_path, task)] == ["a.nii", "b.nii.gz"]
    assert input_files(tmp_path / "a.nii", task) == [tmp_path / "a.nii"]
    with pytest.raises(DataError, match="holds no .png or .dcm files"):
        input_files(tmp_path, load_task("chestxray14"))
    with pytest.raises(DataError, match="no such file or folder"):
        input_files(tmp_path / "missing", task)


def test_a_label_map_is_written_as_uint8_with_the_image_affine(tmp_path):
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), affine), tmp_path / "image.nii.gz")
    labels = np.random.default_rng(0).integers(0, 3, (4, 5, 6))
    written = nib.load(save_label_map(labels, tmp_path / "image.nii.gz", tmp_path / "out" / "image.nii.gz"))
    assert written.get_data_dtype() == np.uint8 and np.array_equal(written.get_fdata(), labels)
    assert np.allclose(written.affine, affine) and int(written.header["qform_code"]) == 1
