"""``medmae data check`` on the real sets, on broken copies (exit 2 naming the file and the problem), and
on the synthetic demo set; the loader's handling of a bad case."""

import gzip
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from conftest import shared

from medmae.cli import main
from medmae.data.loaders import CaseDataset
from medmae.data.manifests import load_split
from medmae.data.synthetic import write_demo_dataset
from medmae.errors import DataError
from medmae.tasks import load_task


def check(capsys, *args):
    code = main(["data", "check", "--quiet", *args])
    out = capsys.readouterr()
    return code, out.out + out.err


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


def test_the_demo_set_passes_and_is_deterministic(capsys, tmp_path):
    assert main(["data", "demo", "--output-dir", str(tmp_path / "a"), "--cases", "4"]) == 0
    code, out = check(capsys, "--task", "demo", "--data-root", str(tmp_path / "a"))
    assert code == 0 and "cases                4" in out
    write_demo_dataset(tmp_path / "b", cases=4)
    write_demo_dataset(tmp_path / "c", cases=4, seed=1)
    for name in ("imagesTr/img0003.nii.gz", "labelsTr/label0003.nii.gz"):
        a, b, c = (np.asarray(nib.load(tmp_path / d / name).dataobj) for d in "abc")
        assert np.array_equal(a, b) and not np.array_equal(a, c)
    label = np.asarray(nib.load(tmp_path / "a" / "labelsTr" / "label0001.nii.gz").dataobj)
    assert set(np.unique(label)) == {0, 1, 2, 3, 4}


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


@pytest.mark.parametrize("problem", BROKEN)
def test_broken_copies_exit_2_naming_file_and_problem(capsys, demo_root, tmp_path, problem):
    root = copy_of(demo_root, tmp_path)
    breaking, message = BROKEN[problem]
    breaking(root)
    code, out = check(capsys, "--task", "demo", "--data-root", str(root))
    assert code == 2 and message in out, out
    assert "Traceback" not in out


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


def test_a_3_channel_brain_image_is_an_error_and_a_missing_class_a_warning(capsys, tmp_path):
    write_brain(tmp_path / "three", channels=3)
    code, out = check(capsys, "--task", "msd_brain", "--data-root", str(tmp_path / "three"))
    assert code == 2 and "imagesTr/BRATS_001.nii.gz: 3 channels, task msd_brain needs 4 (FLAIR, T1w, T1gd, T2w)" in out
    write_brain(tmp_path / "four", channels=4)
    code, out = check(capsys, "--task", "msd_brain", "--data-root", str(tmp_path / "four"))
    assert code == 0 and "warning BRATS_001" in out and "no non_enhancing_tumour in this label" in out


def test_cli_exit_codes(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("MEDMAE_DATA", raising=False)
    code, out = check(capsys, "--task", "nosuchtask", "--data-root", str(tmp_path))
    assert code == 2 and "unknown task 'nosuchtask'" in out
    code, out = check(capsys, "--task", "btcv")
    assert code == 2 and "synapse.org" in out and "imagesTr/img0001.nii.gz" in out
    assert main(["data"]) == 2 and main([]) == 2
    with pytest.raises(SystemExit) as error:
        main(["data", "check"])
    assert error.value.code == 2


def test_the_loader_names_a_bad_case_or_skips_it_when_asked(demo_root, tmp_path, caplog):
    root = copy_of(demo_root, tmp_path)
    (root / "imagesTr/img0002.nii.gz").write_bytes(b"\x1f\x8b broken")
    task = load_task("demo")
    cases = load_split(task, root, split="fold0").all_cases()
    dataset = CaseDataset(task, cases, "validation")
    with pytest.raises(DataError, match=r"img0002.nii.gz: case img0002: unreadable NIfTI .*data.skip_bad_cases=true"):
        [dataset[i] for i in range(len(dataset))]
    skipping = CaseDataset(task, cases, "validation", skip_bad_cases=True)
    assert list(skipping.skipped) == ["img0002"] and len(skipping) == len(cases) - 1
    assert "skipped case img0002" in caplog.text
    assert all(item["image"].shape[0] == 1 for item in skipping)
    (root / "labelsTr/label0003.nii.gz").unlink()  # pretraining reads no labels: only the bad image is left out
    assert list(CaseDataset(task, cases, "pretrain", skip_bad_cases=True).skipped) == ["img0002"]


def test_demo_anatomy_sits_on_the_right_sides(tmp_path):
    """RAS+ world x grows towards the patient's right: the liver and right kidney have positive x."""
    write_demo_dataset(tmp_path, cases=2, validation=1)
    image = nib.load(tmp_path / "labelsTr" / "label0001.nii.gz")
    label = np.asarray(image.dataobj)
    world_x = {value: (image.affine @ [*np.argwhere(label == value).mean(0), 1])[0] for value in (1, 2, 3, 4)}
    assert world_x[1] > 0 > world_x[2] and world_x[3] > 0 > world_x[4]  # liver, spleen; right, left kidney
