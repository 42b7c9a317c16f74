"""What ``medmae task init`` infers: names from folders, spacing and ROI from headers, the intensity rule
from the voxels (each with the reason it prints)."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medmae.data.cases import Case
from medmae.data.describe import dataset_name, geometry, intensity_rule, label_names
from medmae.errors import DataError
from tests.helpers import save_reoriented

KITS23 = {  # nnU-Net's own KiTS2023 conversion: a region written as a single value, cysts as 3
    "channel_names": {"0": "CT"},
    "labels": {"background": 0, "kidney": [1, 2, 3], "masses": [2, 3], "tumor": 2},
    "regions_class_order": [1, 3, 2],
    "file_ending": ".nii.gz",
}


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


def test_a_region_written_as_one_value_beside_list_regions_is_a_region_in_regions_class_order():
    classes, said = label_names(KITS23, [], Path("dataset.json"))
    assert classes == {
        "labels": ["background", "label1", "tumor", "label3"],
        "regions": {"kidney": [1, 2, 3], "masses": [2, 3], "tumor": [2]},
        "regions_class_order": [1, 3, 2],
    }
    assert "regions written in regions_class_order" in said
    brats = {**KITS23, "labels": {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": 3}}
    del brats["regions_class_order"]  # none given: each region is written as its smallest value
    assert label_names(brats, [], Path("dataset.json"))[0]["regions_class_order"] == [1, 2, 3]
    with pytest.raises(DataError, match=r"'regions_class_order' \[1, 3\] must give one label value for each of the 3"):
        label_names({**KITS23, "regions_class_order": [1, 3]}, [], Path("dataset.json"))


def test_the_ignore_label_is_kept_apart_and_must_lie_one_above_the_other_values():
    spec = {**KITS23, "labels": {"background": 0, "liver": 1, "tumour": 2, "ignore": 3}}
    assert label_names(spec, [], Path("dataset.json"))[0] == {
        "labels": ["background", "liver", "tumour"],
        "ignore_label": 3,
    }
    regions = {**KITS23, "labels": {**KITS23["labels"], "ignore": 4}}
    assert label_names(regions, [], Path("dataset.json"))[0]["ignore_label"] == 4
    for wrong in (1, 2, [3], True):
        spec["labels"]["ignore"] = wrong
        above = "the ignore label must be a single value above all the others, 3"
        with pytest.raises(DataError, match=rf"'ignore' is {re.escape(repr(wrong))}: {above}"):
            label_names(spec, [], Path("dataset.json"))
    spec["labels"]["ignore"] = 5
    with pytest.raises(DataError, match=r"label values \[0, 1, 2, 5\] in dataset.json's labels .*remap 5 -> 3"):
        label_names(spec, [], Path("dataset.json"))


def test_label_values_that_are_not_consecutive_are_refused_naming_the_remapping(tmp_path):
    lesion = {**KITS23, "labels": {"background": 0, "lesion": 255}}
    with pytest.raises(
        DataError, match=r"label values \[0, 255\] in dataset.json's labels are not consecutive.*255 -> 1"
    ):
        label_names(lesion, [], tmp_path / "dataset.json")
    msd = {"labels": {"0": "background", "1": "liver", "3": "tumour"}}
    with pytest.raises(DataError, match=r"label values \[0, 1, 3\] .*remap 3 -> 2 in every label map"):
        label_names(msd, [], tmp_path / "dataset.json")
    image = np.zeros((6, 6, 6), np.float32)
    gappy = np.zeros((6, 6, 6), np.uint8)
    gappy[1, 1, 1], gappy[2, 2, 2] = 1, 3
    cases = [case(tmp_path, f"c{k}", image, label=gappy if k == 0 else np.zeros_like(gappy)) for k in range(3)]
    with pytest.raises(DataError, match=r"label values \[0, 1, 3\] in 3 label maps are not consecutive.*3 -> 2"):
        label_names({}, cases, tmp_path / "dataset_0.json")
    rare = np.zeros_like(gappy)
    rare[3, 3, 3] = 2  # a value found beyond the 8 sampled maps closes the gap
    cases += [case(tmp_path, f"c{k}", image, label=rare if k == 8 else np.zeros_like(gappy)) for k in range(3, 9)]
    assert label_names({}, cases, tmp_path / "dataset_0.json")[0] == {
        "labels": ["background", "label1", "label2", "label3"]
    }


def test_a_label_in_another_orientation_gives_the_ct_window_of_the_voxels_it_labels(tmp_path):
    body = np.full((20, 24, 16), -1000.0, np.float32)
    body[5:15, 5:15, 4:12] = np.linspace(-100, 200, 800).reshape(10, 10, 8)
    organ = np.zeros(body.shape, np.uint8)
    organ[5:15, 5:15, 4:12] = 1
    ct = case(tmp_path, "ct", body, label=organ)
    turned = save_reoriented(ct.label, tmp_path / "turned_label.nii.gz", "PLS")
    assert intensity_rule(["CT"], [Case("ct", ct.image, turned)]) == intensity_rule(["CT"], [ct])


def test_the_ct_window_leaves_out_the_voxels_of_the_ignore_label(tmp_path):
    body = np.full((20, 20, 20), -1000.0, np.float32)
    body[5:15, 5:15, 5:15] = np.linspace(-100, 200, 1000).reshape(10, 10, 10)
    label = np.full((20, 20, 20), 2, np.uint8)  # unlabelled (ignore) everywhere, air included
    label[5:15, 5:15, 5:15] = 1
    ct = case(tmp_path, "ct", body, label=label)
    assert intensity_rule(["CT"], [ct], ignore=2)[0]["window"][0] >= -100  # not the air of the ignored voxels
    assert intensity_rule(["CT"], [ct])[0]["window"][0] == -1000  # counted as labelled, the air widens it
