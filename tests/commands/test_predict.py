"""``medmae predict`` from the command line: one label map per input file, on the input's own grid, in the
input's format; ``medmae score`` reads them back."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medmae.cli import main
from medmae.data.readers import read_image
from tests.helpers import convert_image, write_dicom_series


def test_predict_writes_a_label_map_on_the_input_grid(capsys, demo_root, demo_checkpoint, tmp_path):
    image = demo_root / "imagesTr" / "img0003.nii.gz"
    output = tmp_path / "predictions"
    argv = ["predict", "--checkpoint", str(demo_checkpoint), "--input", str(image), "--output-dir", str(output)]
    assert main([*argv, "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote 1 files to {output}"
    prediction, source = nib.load(output / "img0003.nii.gz"), nib.load(image)
    assert prediction.shape == source.shape and np.allclose(prediction.affine, source.affine)
    assert prediction.get_data_dtype() == np.uint8 and set(np.unique(prediction.get_fdata())) <= {0, 1, 2, 3, 4}


@pytest.mark.parametrize(("kind", "written"), [(".nrrd", ".nrrd"), (".mha", ".mha"), ("dicom", ".nii.gz")])
def test_nrrd_metaimage_and_dicom_input_are_predicted_and_scored_in_their_format(
    capsys, demo_root, demo_checkpoint, tmp_path, kind, written
):
    nifti = demo_root / "imagesTr" / "img0003.nii.gz"
    inputs, references = tmp_path / "inputs", tmp_path / "references"
    inputs.mkdir()
    if kind == "dicom":
        image = write_dicom_series(nifti, inputs / "img0003")
    else:
        image = convert_image(nifti, inputs / f"img0003{kind}")
    output = tmp_path / "predictions"
    argv = ["predict", "--checkpoint", str(demo_checkpoint), "--input", str(inputs), "--output-dir", str(output)]
    assert main([*argv, "--quiet"]) == 0, capsys.readouterr().err
    assert [p.name for p in output.iterdir()] == [f"img0003{written}"]
    prediction, source = read_image(output / f"img0003{written}"), read_image(image)
    assert prediction.array.shape == source.array.shape and np.allclose(prediction.affine, source.affine, atol=1e-4)
    assert prediction.array.dtype == np.uint8
    references.mkdir()
    label = convert_image(demo_root / "labelsTr" / "label0003.nii.gz", references / "img0003.nrrd")
    assert read_image(label).array.shape == prediction.array.shape
    capsys.readouterr()
    assert main(["score", "--quiet", "--pred", str(output), "--ref", str(references), "--task", "demo"]) == 0
    scored = pd.read_csv(tmp_path / "predictions_scores" / "per_case.csv", comment="#")
    assert set(scored["case_id"]) == {"img0003"} and len(scored) == 4  # the demo's four organs


def test_saved_probabilities_lie_on_the_input_grid_and_give_the_label_map(capsys, demo_root, demo_checkpoint, tmp_path):
    image = demo_root / "imagesTr" / "img0003.nii.gz"
    output = tmp_path / "predictions"
    argv = ["predict", "--checkpoint", str(demo_checkpoint), "--input", str(image), "--output-dir", str(output)]
    assert main([*argv, "--save-probabilities", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote 1 files and 1 probability files (.npz) to {output}"
    saved = np.load(output / "img0003.npz")
    probabilities, labels = saved["probabilities"], nib.load(output / "img0003.nii.gz").get_fdata()
    assert list(saved["classes"]) == ["background", "liver", "spleen", "right_kidney", "left_kidney"]
    assert probabilities.dtype == np.float32 and probabilities.shape == (5, *nib.load(image).shape)
    assert np.allclose(probabilities.sum(axis=0), 1, atol=1e-4)
    assert np.array_equal(probabilities.argmax(axis=0), labels)


def test_nnunet_named_inputs_give_predictions_named_as_nnunet_does(capsys, demo_root, demo_checkpoint, tmp_path):
    inputs = tmp_path / "imagesTs"
    inputs.mkdir()
    shutil.copy(demo_root / "imagesTr" / "img0003.nii.gz", inputs / "case_0003_0000.nii.gz")
    output = tmp_path / "predictions"
    argv = ["predict", "--checkpoint", str(demo_checkpoint), "--input", str(inputs), "--output-dir", str(output)]
    assert main([*argv, "--quiet"]) == 0
    assert [p.name for p in output.iterdir()] == ["case_0003.nii.gz"]


def test_earlier_predictions_are_replaced_only_with_overwrite(capsys, demo_root, demo_checkpoint, tmp_path):
    image = demo_root / "imagesTr" / "img0003.nii.gz"
    output = tmp_path / "predictions"
    argv = ["predict", "--checkpoint", str(demo_checkpoint), "--input", str(image), "--output-dir", str(output)]
    assert main([*argv, "--quiet"]) == 0
    earlier = (output / "img0003.nii.gz").stat().st_mtime_ns
    capsys.readouterr()
    assert main([*argv, "--quiet"]) == 2
    assert "already holds 1 of the files this prediction writes (img0003.nii.gz); pass --overwrite" in (
        capsys.readouterr().err
    )
    assert (output / "img0003.nii.gz").stat().st_mtime_ns == earlier
    assert main([*argv, "--quiet", "--overwrite"]) == 0
    assert f"note: replacing 1 files in {output}: img0003.nii.gz" in capsys.readouterr().out


def test_an_overwrite_without_probabilities_removes_the_earlier_ones(capsys, demo_root, demo_checkpoint, tmp_path):
    image = demo_root / "imagesTr" / "img0003.nii.gz"
    output = tmp_path / "predictions"
    argv = ["predict", "--checkpoint", str(demo_checkpoint), "--input", str(image), "--output-dir", str(output)]
    assert main([*argv, "--quiet", "--save-probabilities"]) == 0
    assert main([*argv, "--quiet"]) == 2
    assert main([*argv, "--quiet", "--overwrite"]) == 0
    assert sorted(p.name for p in output.iterdir()) == ["img0003.nii.gz"]
