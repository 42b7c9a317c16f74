"""nnU-Net v2 raw datasets read as they are: one file per channel, case ids without the channel suffix,
labels from labelsTr, imagesTs as unlabelled images; each broken layout named."""

from __future__ import annotations

import json
import re
import shutil

import nibabel as nib
import numpy as np
import pytest

from medmae.cli import main
from medmae.data.manifests import read_datalist
from medmae.data.readers import read_channels
from medmae.errors import DataError
from tests.helpers import hippocampus_as_nnunet, save_reoriented


def save(path, array, affine=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), path)
    return path


def nnunet_dataset(root, cases=("a", "b"), channels=2, test=("t",)):
    """A tiny two-channel nnU-Net raw dataset; its dataset.json starts with a UTF-8 byte-order mark."""
    for case in cases:
        for k in range(channels):
            save(root / "imagesTr" / f"{case}_{k:04d}.nii.gz", np.full((4, 5, 6), k + 1, np.float32))
        save(root / "labelsTr" / f"{case}.nii.gz", np.zeros((4, 5, 6), np.uint8))
    for case in test:
        for k in range(channels):
            save(root / "imagesTs" / f"{case}_{k:04d}.nii.gz", np.zeros((4, 5, 6), np.float32))
    spec = {
        "channel_names": {str(k): f"MRI{k}" for k in range(channels)},
        "labels": {"background": 0, "tumour": 1},
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text("\ufeff" + json.dumps(spec), encoding="utf-8")
    return root / "dataset.json"


def test_an_nnunet_dataset_gives_cases_with_their_channel_files_and_labels(tmp_path):
    parts = read_datalist(nnunet_dataset(tmp_path), tmp_path)
    assert [c.id for c in parts["training"]] == ["a", "b"] and [c.id for c in parts["unlabelled"]] == ["t"]
    first = parts["training"][0]
    assert [p.name for p in first.image_files] == ["a_0000.nii.gz", "a_0001.nii.gz"]
    assert first.label == tmp_path / "labelsTr" / "a.nii.gz" and parts["unlabelled"][0].label is None
    image = read_channels([str(p) for p in first.image_files])
    assert image.array.shape == (2, 4, 5, 6) and image.array[1].min() == 2  # channels stacked in order


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda root: (root / "imagesTr" / "b_0001.nii.gz").unlink(), "case b has channel files [0]"),
        (
            lambda root: (root / "imagesTr" / "b_0001.nii.gz").rename(root / "imagesTr" / "b1.nii.gz"),
            "b1.nii.gz: not named",
        ),
        (lambda root: (root / "labelsTr" / "a.nii.gz").unlink(), "a.nii.gz: missing: the label of training case a"),
        (lambda root: edit(root, numTraining=3), "'numTraining' says 3, imagesTr/ holds 2 cases"),
        (lambda root: edit(root, channel_names={"1": "T1"}), "'channel_names' must map 0, 1, ..."),
        (lambda root: edit(root, file_ending="nii.gz"), "'file_ending' must be a suffix"),
        (
            lambda root: edit(root, file_ending=".nrrd"),
            "'file_ending' is '.nrrd', while the files of imagesTr/ end in .nii.gz (a_0000.nii.gz, ...): set it",
        ),
    ],
)
def test_each_broken_nnunet_layout_is_named(tmp_path, damage, problem):
    manifest = nnunet_dataset(tmp_path)
    damage(tmp_path)
    with pytest.raises(DataError, match=re.escape(problem)):
        read_datalist(manifest, tmp_path)


def edit(root, **changes):
    spec = json.loads((root / "dataset.json").read_text(encoding="utf-8-sig"))
    (root / "dataset.json").write_text(json.dumps(spec | changes))


def test_channel_files_must_share_a_grid(tmp_path):
    first = save(tmp_path / "a_0000.nii.gz", np.zeros((4, 5, 6), np.float32))
    moved = save(tmp_path / "a_0001.nii.gz", np.zeros((4, 5, 6), np.float32), np.diag([1, 1, 2.0, 1]))
    shorter = save(tmp_path / "a_0002.nii.gz", np.zeros((4, 5, 5), np.float32))
    with pytest.raises(DataError, match=r"a_0001.nii.gz: affine differs from a_0000.nii.gz's by up to"):
        read_channels([first, moved])
    with pytest.raises(DataError, match=r"a_0002.nii.gz: shape \(4, 5, 5\) differs from a_0000.nii.gz's"):
        read_channels([first, shorter])


def test_data_check_reads_real_hippocampus_cases_in_nnunet_layout(capsys, tmp_path):
    root = hippocampus_as_nnunet(tmp_path)
    code = main(["data", "check", "--quiet", "--task", "msd_hippocampus", "--data-root", str(root), "--split", "fold0"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "split fold0 from" in out.out and "dataset.json: 6 train, 2 validation, 2 test" in out.out
    assert "\ncases                10\ncases with errors    0\n" in out.out


def test_a_data_set_exported_in_nnunet_layout_reads_back_case_for_case(capsys, demo_root, tmp_path):
    output = tmp_path / "Dataset500_Demo"
    argv = ["data", "export-nnunet", "--task", "demo", "--data-root", str(demo_root), "--output-dir", str(output)]
    assert main([*argv, "--quiet"]) == 0
    assert "wrote 6 labelled and 0 unlabelled cases of task demo" in capsys.readouterr().out
    spec = json.loads((output / "dataset.json").read_text())
    assert spec["channel_names"] == {"0": "CT"} and spec["numTraining"] == 6 and spec["file_ending"] == ".nii.gz"
    assert spec["labels"] == {"background": 0, "liver": 1, "spleen": 2, "right_kidney": 3, "left_kidney": 4}
    exported = read_datalist(output / "dataset.json", output)["training"]
    originals = read_datalist(demo_root / "dataset_0.json", demo_root)
    for case in exported:
        source = next(c for part in originals.values() for c in part if c.id == case.id)
        for exported_file, original_file in ((case.image, source.image), (case.label, source.label)):
            a, b = nib.load(exported_file), nib.load(original_file)
            assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj)) and np.allclose(a.affine, b.affine)
    assert main([*argv, "--quiet"]) == 2 and "a folder that is not empty" in capsys.readouterr().err


def test_an_export_gives_nnunet_the_regions_class_order_and_the_ignore_label(capsys, demo_root, tmp_path):
    import yaml

    from medmae.tasks import load_task

    record = dict(load_task("demo").record) | {
        "regions": {"organs": [1, 2, 3, 4], "kidneys": [3, 4], "left": [4]},
        "regions_class_order": [1, 3, 4],
        "ignore_label": 5,
        "mean_groups": {},
    }
    (tmp_path / "regions.yaml").write_text(yaml.safe_dump(record))
    argv = ["data", "export-nnunet", "--task", str(tmp_path / "regions.yaml"), "--data-root", str(demo_root)]
    assert main([*argv, "--output-dir", str(tmp_path / "out"), "--quiet"]) == 0
    spec = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert spec["labels"] == {"background": 0, "organs": [1, 2, 3, 4], "kidneys": [3, 4], "left": [4], "ignore": 5}
    assert spec["regions_class_order"] == [1, 3, 4]


def test_files_with_an_upper_case_ending_match_the_file_ending(tmp_path):
    manifest = nnunet_dataset(tmp_path)
    for path in list(tmp_path.rglob("*.nii.gz")):
        path.rename(path.with_name(path.name.replace(".nii.gz", ".NII.GZ")))
    parts = read_datalist(manifest, tmp_path)
    assert [c.id for c in parts["training"]] == ["a", "b"] and [c.id for c in parts["unlabelled"]] == ["t"]
    assert parts["training"][0].label == tmp_path / "labelsTr" / "a.NII.GZ"
    assert read_channels([str(p) for p in parts["training"][0].image_files]).array.shape == (2, 4, 5, 6)


def test_a_label_in_another_orientation_is_exported_on_its_image_s_grid(capsys, demo_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    save_reoriented(demo_root / "labelsTr" / "label0002.nii.gz", root / "labelsTr" / "label0002.nii.gz", "PLS")
    output = tmp_path / "Dataset501_Demo"
    argv = ["data", "export-nnunet", "--task", "demo", "--data-root", str(root), "--output-dir", str(output)]
    assert main([*argv, "--quiet"]) == 0, capsys.readouterr().err
    exported, original = (
        nib.load(output / "labelsTr" / "img0002.nii.gz"),
        nib.load(demo_root / "labelsTr" / "label0002.nii.gz"),
    )
    assert np.array_equal(np.asarray(exported.dataobj), np.asarray(original.dataobj))
    assert np.allclose(exported.affine, nib.load(output / "imagesTr" / "img0002_0000.nii.gz").affine)
