"""Data checks (``medmae.data.check``): the real sets pass, broken copies are named with their problem, and
the affine tolerance."""

from __future__ import annotations

import gzip
import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from medmae.cli import main
from medmae.data.cases import Case
from medmae.data.check import anisotropy_note, check_case
from medmae.data.manifests import load_split
from medmae.data.transforms import ReadImaged
from medmae.tasks import load_task
from tests.helpers import save_reoriented, shared


def check(capsys, *args):
    code = main(["data", "check", "--quiet", *args])
    out = capsys.readouterr()
    return code, out.out + out.err


def copy_of(demo_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    return root


def rewrite(path, change):
    image = nib.load(path)
    array = change(np.asarray(image.dataobj).copy())
    nib.save(nib.Nifti1Image(array, image.affine), path)


def corrupt_header(path):
    """Set the NIfTI datatype code (bytes 70-71) to 1234, which no reader knows."""
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[70:72] = (1234).to_bytes(2, "little")
    path.write_bytes(gzip.compress(bytes(raw)))


BROKEN = {
    "corrupt header": (
        lambda r: corrupt_header(r / "imagesTr/img0003.nii.gz"),
        "imagesTr/img0003.nii.gz: unreadable NIfTI",
    ),
    "truncated image": (
        lambda r: (r / "imagesTr/img0002.nii.gz").write_bytes((r / "imagesTr/img0002.nii.gz").read_bytes()[:300]),
        "imagesTr/img0002.nii.gz: unreadable NIfTI",
    ),
    "label of another shape": (
        lambda r: rewrite(r / "labelsTr/label0003.nii.gz", lambda a: a[:-2]),
        "labelsTr/label0003.nii.gz: label shape (62, 64, 48) differs from image shape (64, 64, 48)",
    ),
    "NaN voxel": (
        lambda r: rewrite(
            r / "imagesTr/img0004.nii.gz",
            lambda a: np.where(np.arange(a.size).reshape(a.shape) == 7, np.nan, a.astype(np.float32)),
        ),
        "imagesTr/img0004.nii.gz: 1 non-finite voxels",
    ),
    "missing file": (lambda r: (r / "labelsTr/label0005.nii.gz").unlink(), "labelsTr/label0005.nii.gz: file not found"),
    "all-background label": (
        lambda r: rewrite(r / "labelsTr/label0001.nii.gz", np.zeros_like),
        "labelsTr/label0001.nii.gz: label has no foreground at all",
    ),
    "label value outside the set": (
        lambda r: rewrite(r / "labelsTr/label0002.nii.gz", lambda a: np.where(a == 4, 9, a).astype(np.uint8)),
        "labelsTr/label0002.nii.gz: label values [9] outside the task's [0, 1, 2, 3, 4]",
    ),
    "shifted label affine": (
        lambda r: nib.save(
            nib.Nifti1Image(
                np.asarray(nib.load(r / "labelsTr/label0003.nii.gz").dataobj), np.diag([3.0, 3.0, 3.0, 1.0])
            ),
            r / "labelsTr/label0003.nii.gz",
        ),
        "labelsTr/label0003.nii.gz: label affine differs from the image affine",
    ),
    "2D file for a 3D task": (
        lambda r: nib.save(nib.Nifti1Image(np.zeros((64, 64), np.int16), np.eye(4)), r / "imagesTr/img0001.nii.gz"),
        "imagesTr/img0001.nii.gz: 2D image (64, 64), task demo is 3D",
    ),
}


def write_brain(root, channels):
    """A tiny MSD Task01-like set: one 4D image with ``channels`` channels and an MSD label map."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    label = np.zeros((20, 20, 12), np.uint8)
    label[5:15, 5:15, 3:9], label[8:12, 8:12, 5:7] = 1, 3
    nib.save(
        nib.Nifti1Image(np.random.rand(20, 20, 12, channels).astype(np.float32), np.eye(4)),
        root / "imagesTr/BRATS_001.nii.gz",
    )
    nib.save(nib.Nifti1Image(label, np.eye(4)), root / "labelsTr/BRATS_001.nii.gz")
    entry = {"image": "./imagesTr/BRATS_001.nii.gz", "label": "./labelsTr/BRATS_001.nii.gz"}
    (root / "dataset.json").write_text(json.dumps({"training": [entry], "test": []}))


@pytest.mark.parametrize(
    "task,folder",
    [
        ("msd_hippocampus", "msd_hippocampus"),
        ("msd_brain", "msd_brain_case"),
        ("btcv", "btcv_layout_sample"),
        ("chestxray14", "chestxray14_nih_subset"),
    ],
)
def test_real_sets_pass(capsys, task, folder):
    code, out = check(capsys, "--task", task, "--data-root", str(shared(folder)))
    assert code == 0, out
    assert "cases with errors    0" in out


@pytest.mark.parametrize("problem", BROKEN)
def test_broken_copies_exit_2_naming_file_and_problem(capsys, demo_root, tmp_path, problem):
    root = copy_of(demo_root, tmp_path)
    breaking, message = BROKEN[problem]
    breaking(root)
    code, out = check(capsys, "--task", "demo", "--data-root", str(root))
    assert code == 2 and message in out, out
    assert "Traceback" not in out


def test_a_3_channel_brain_image_is_an_error_and_a_missing_class_a_warning(capsys, tmp_path):
    write_brain(tmp_path / "three", channels=3)
    code, out = check(capsys, "--task", "msd_brain", "--data-root", str(tmp_path / "three"))
    assert code == 2 and "imagesTr/BRATS_001.nii.gz: 3 channels, task msd_brain needs 4 (FLAIR, T1w, T1gd, T2w)" in out
    write_brain(tmp_path / "four", channels=4)
    code, out = check(capsys, "--task", "msd_brain", "--data-root", str(tmp_path / "four"))
    assert code == 0 and "warning BRATS_001" in out and "no non_enhancing_tumour in this label" in out


def test_affine_tolerance_is_a_thousandth_of_a_millimetre(demo_root, tmp_path):
    task = load_task("demo")
    case = load_split(task, demo_root).all_cases()[0]
    source = nib.load(case.label)
    for shift, ok in ((1e-4, True), (1e-2, False)):
        affine = source.affine.copy()
        affine[0, 3] += shift
        nib.save(nib.Nifti1Image(np.asarray(source.dataobj), affine), tmp_path / "l.nii.gz")
        errors = check_case(task, Case("x", case.image, tmp_path / "l.nii.gz")).errors
        assert (errors == []) == ok, errors


def save_with_srow_z(path, srow_z):
    """A NIfTI whose sform (the only transform) has the third row ``srow_z``, as a broken header would."""
    header = nib.Nifti1Header()
    header.set_data_shape((20, 20, 20))
    header.set_data_dtype(np.float32)
    header["sform_code"], header["qform_code"] = 1, 0
    header["srow_x"], header["srow_y"], header["srow_z"] = [1, 0, 0, 0], [0, 1, 0, 0], srow_z
    nib.save(nib.Nifti1Image(np.arange(8000, dtype=np.float32).reshape(20, 20, 20), None, header=header), path)
    return path


def test_a_broken_image_affine_is_named_on_the_image_not_blamed_on_its_label(tmp_path):
    task = load_task("demo")
    label = tmp_path / "label.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((20, 20, 20), np.uint8), np.eye(4)), label)
    for srow_z, problem in (([0, 0, 0, 0], "singular (voxel spacing 1, 1, 0 mm)"), ([0, 0, np.nan, 0], "NaN or inf")):
        image = save_with_srow_z(tmp_path / f"image_{len(problem)}.nii.gz", srow_z)
        report = check_case(task, Case("x", image, label))
        assert len(report.errors) == 1 and report.errors[0].startswith(f"{image}: its affine"), report.errors
        assert problem in report.errors[0]


def test_a_blank_image_warns_and_one_smaller_than_a_patch_is_an_error(tmp_path):
    task = load_task("demo")
    blank, tiny = tmp_path / "blank.nii.gz", tmp_path / "tiny.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((20, 20, 20), np.float32), np.eye(4)), blank)
    nib.save(nib.Nifti1Image(np.ones((1, 1, 1), np.float32), np.eye(4)), tiny)
    report = check_case(task, Case("blank", blank))
    assert not report.errors and report.warnings == [f"{blank}: every voxel is 0 (a blank image?)"]
    assert check_case(task, Case("tiny", tiny)).errors == [
        f"{tiny}: image of shape (1, 1, 1) is smaller than one patch (16 voxels) on every axis: nothing to learn from"
    ]


def test_a_label_in_another_orientation_of_its_image_s_grid_is_read_in_the_image_s(demo_root, tmp_path):
    task = load_task("demo")
    image, original = demo_root / "imagesTr" / "img0002.nii.gz", demo_root / "labelsTr" / "label0002.nii.gz"
    label = save_reoriented(original, tmp_path / "label0002.nii.gz", "PLS")
    report = check_case(task, Case("img0002", image, label))
    said = f"{label}: same physical space as the image, stored in another orientation (axis order PLS vs RAS)"
    assert report.errors == [] and report.warnings == [f"{said}: read in the image's orientation"]
    read = ReadImaged(["image", "label"], task)({"image": str(image), "label": str(label)})
    assert np.array_equal(read["label"][0].numpy(), np.asarray(nib.load(original).dataobj))
    assert np.allclose(read["label"].affine.numpy(), nib.load(image).affine)


def test_spacing_with_an_axis_over_3x_the_others_gets_a_note():
    note = anisotropy_note((0.8, 0.8, 5.0), (128, 128, 32))
    assert note.startswith("spacing 0.8 x 0.8 x 5 mm is anisotropic: the third axis is 6.25x coarser than the others")
    assert "nnU-Net plans such data with that low-resolution axis handled apart" in note
    assert "the ROI [128, 128, 32] spans 102.4 x 102.4 x 160 mm" in note
    assert "the first axis is 3.33x coarser" in anisotropy_note((4.0, 1.0, 1.2))  # than the 1.2 mm axis
    for spacing in ((1.0, 1.0, 3.0), (1.5, 1.5, 2.0), (1.0, 1.0), (0.5, 2.0, 2.0)):
        assert anisotropy_note(spacing) is None, spacing
