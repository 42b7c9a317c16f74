"""What ``medmae task init`` infers: names from folders, spacing and ROI from headers, the intensity rule
from the voxels (each with the reason it prints)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from medmae.data.cases import Case
from medmae.data.describe import dataset_name, geometry, intensity_rule


def case(
    tmp_path: Path, name: str, image: np.ndarray, spacing=(1.0, 1.0, 1.0), label: np.ndarray | None = None
) -> Case:
    affine = np.diag([*spacing, 1.0])
    nib.save(nib.Nifti1Image(image, affine), tmp_path / f"{name}.nii.gz")
    labels = np.zeros(image.shape, np.uint8) if label is None else label
    nib.save(nib.Nifti1Image(labels, affine), tmp_path / f"{name}_label.nii.gz")
    return Case(name, tmp_path / f"{name}.nii.gz", tmp_path / f"{name}_label.nii.gz")


def test_names_drop_the_dataset_or_task_number_and_become_snake_case():
    assert dataset_name(Path("Dataset004_Hippocampus")) == "hippocampus"
    assert dataset_name(Path("Task01_BrainTumour")) == "braintumour"
    assert dataset_name(Path("My Liver CT (2024)")) == "my_liver_ct_2024"


def test_spacing_is_the_median_and_the_roi_the_median_size_rounded_up_to_16_at_most_128(tmp_path):
    cases = [
        case(tmp_path, "a", np.zeros((40, 50, 20), np.float32), (0.8, 0.8, 3.0)),
        case(tmp_path, "b", np.zeros((40, 300, 30), np.float32), (0.8, 0.8, 2.0)),
        case(tmp_path, "c", np.zeros((40, 300, 30), np.float32), (1.0, 0.8, 2.0)),
    ]
    spacing, roi, said = geometry(cases)
    assert spacing == [0.8, 0.8, 2.0] and roi == [48, 128, 32] and "median of 3 images" in said


def test_ct_gets_a_window_mri_with_a_zero_background_a_nonzero_zscore_else_clipped_percentiles(tmp_path):
    body = np.full((20, 20, 20), -1000.0, np.float32)
    body[5:15, 5:15, 5:15] = np.linspace(-100, 200, 1000).reshape(10, 10, 10)
    organ = np.zeros((20, 20, 20), np.uint8)
    organ[5:15, 5:15, 5:15] = 1
    ct = case(tmp_path, "ct", body, label=organ)
    rule, crop, said = intensity_rule(["image"], [ct])
    assert rule["rule"] == "window" and -100 <= rule["window"][0] < rule["window"][1] <= 200 and not crop
    assert "CT in Hounsfield units" in said
    brain = np.zeros((20, 20, 20), np.float32)
    brain[5:15, 5:15, 5:15] = 300.0
    assert intensity_rule(["T1"], [case(tmp_path, "mr", brain)])[:2] == ({"rule": "zscore_nonzero"}, True)
    noisy = np.random.default_rng(0).uniform(10, 500, (20, 20, 20)).astype(np.float32)
    assert intensity_rule(["T2"], [case(tmp_path, "t2", noisy)])[0] == {
        "rule": "percentile_zscore",
        "percentiles": [0.5, 99.5],
    }


def test_spacing_and_roi_follow_the_ras_axes_that_training_sees(tmp_path):
    stored = case(tmp_path, "p", np.zeros((40, 60, 20), np.float32))
    affine = np.array([[0, 0.9, 0, 0], [0.8, 0, 0, 0], [0, 0, 2.5, 0], [0, 0, 0, 1]])  # axis 0 runs A-P
    nib.save(nib.Nifti1Image(np.zeros((40, 60, 20), np.float32), affine), stored.image)
    spacing, roi, _ = geometry([stored])
    assert spacing == [0.9, 0.8, 2.5] and roi == [64, 48, 32]  # R-L: 60 voxels, A-P: 40, S-I: 20
