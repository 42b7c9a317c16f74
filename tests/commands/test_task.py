"""``medmae task init``: a task file inferred from a dataset, each inference printed, that works at once."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import yaml

from medmae.cli import main
from medmae.tasks import load_task
from tests.helpers import hippocampus_as_nnunet


def test_real_hippocampus_in_nnunet_layout_gives_the_shipped_task_facts(capsys, tmp_path, monkeypatch):
    root = hippocampus_as_nnunet(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["task", "init", str(root)]) == 0
    out = capsys.readouterr().out
    assert "spacing: [1.0, 1.0, 1.0] mm and roi: [48, 64, 48] (median of 10 images" in out
    assert "wrote hippocampus.yaml; check the data with: medmae data check --task hippocampus.yaml" in out
    task, shipped = load_task(tmp_path / "hippocampus.yaml"), load_task("msd_hippocampus")
    for fact in ("channels", "labels", "orientation", "spacing", "roi", "intensity", "crop_foreground"):
        assert getattr(task, fact) == getattr(shipped, fact), fact
    assert (task.name, task.layout, task.manifest) == ("hippocampus", "nnunet", None)
    assert (tmp_path / "hippocampus.yaml").read_text().startswith("# Written by medmae task init")
    check = ["data", "check", "--quiet", "--task", "hippocampus.yaml", "--data-root", str(root)]
    assert main(check) == 0 and "split fold0" in capsys.readouterr().out
    assert main(["task", "init", str(root)]) == 2
    assert "hippocampus.yaml: already exists; choose another --output or pass --force" in capsys.readouterr().err


def test_ct_gets_a_window_from_its_labelled_voxels(capsys, demo_root, tmp_path):
    output = tmp_path / "ct.yaml"
    assert main(["task", "init", str(demo_root), "--name", "ct", "--output", str(output)]) == 0
    task = load_task(output)
    assert task.layout == "btcv" and task.intensity["rule"] == "window"  # air at -1000 HU: CT
    low, high = task.intensity["window"]
    assert -200 < low < high < 400  # the demo's organs lie between about -100 and 250 HU
    assert task.labels == ("background", "liver", "spleen", "right_kidney", "left_kidney")
    assert main(["data", "check", "--quiet", "--task", str(output), "--data-root", str(demo_root)]) == 0


def test_nnunet_region_labels_become_regions(capsys, tmp_path):
    root = tmp_path / "Dataset001_Tumour"
    for folder, name in (("imagesTr", "a_0000.nii.gz"), ("labelsTr", "a.nii.gz")):
        (root / folder).mkdir(parents=True)
        volume = np.arange(8000, dtype=np.uint8).reshape(20, 20, 20) % 3
        nib.save(nib.Nifti1Image(volume, np.eye(4)), root / folder / name)
    spec = {
        "channel_names": {"0": "T2"},
        "labels": {"background": 0, "whole tumour": [1, 2], "core": [2]},
        "regions_class_order": [1, 2],
        "numTraining": 1,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(spec))
    output = tmp_path / "tumour.yaml"
    assert main(["task", "init", str(root), "--output", str(output)]) == 0
    record = yaml.safe_load(output.read_text())
    assert record["labels"] == ["background", "label1", "label2"] and record["name"] == "tumour"
    assert record["regions"] == {"whole_tumour": [1, 2], "core": [2]} and load_task(output).regions


def tiny_nnunet(root, labels: dict, label_map: np.ndarray, **more):
    """One case of ``label_map`` (20^3) as an nnU-Net v2 dataset whose ``labels`` are ``labels``."""
    for folder, name, volume in (("imagesTr", "a_0000.nii.gz", label_map * 10.0), ("labelsTr", "a.nii.gz", label_map)):
        (root / folder).mkdir(parents=True)
        nib.save(
            nib.Nifti1Image(volume.astype(np.float32 if folder == "imagesTr" else np.uint8), np.eye(4)),
            root / folder / name,
        )
    spec = {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 1, "file_ending": ".nii.gz", **more}
    (root / "dataset.json").write_text(json.dumps(spec))
    return root


def test_kits23_regions_keep_the_single_value_tumour_its_order_and_the_ignore_label(capsys, tmp_path):
    labels = {"background": 0, "kidney": [1, 2, 3], "masses": [2, 3], "tumor": 2, "ignore": 4}
    root = tiny_nnunet(
        tmp_path / "Dataset220_KiTS2023", labels, np.arange(8000).reshape(20, 20, 20) % 5, regions_class_order=[1, 3, 2]
    )
    output = tmp_path / "kits.yaml"
    assert main(["task", "init", str(root), "--output", str(output)]) == 0
    assert (
        "regions kidney, masses, tumor (dataset.json, nnU-Net's labels; regions written in" in capsys.readouterr().out
    )
    task = load_task(output)
    assert task.regions == {"kidney": (1, 2, 3), "masses": (2, 3), "tumor": (2,)}
    assert (task.region_values, task.ignore_label, task.labels) == (
        (1, 3, 2),
        4,
        ("background", "label1", "tumor", "label3"),
    )
    assert main(["data", "check", "--quiet", "--task", str(output), "--data-root", str(root)]) == 0


def test_label_values_that_are_not_consecutive_are_refused_with_the_remapping(capsys, tmp_path):
    lesion = np.zeros((20, 20, 20), np.uint8)
    lesion[5:10, 5:10, 5:10] = 255
    root = tiny_nnunet(tmp_path / "Dataset300_Lesion", {"background": 0, "lesion": 255}, lesion)
    assert main(["task", "init", str(root), "--output", str(tmp_path / "lesion.yaml")]) == 2
    error = capsys.readouterr().err
    assert "dataset.json: label values [0, 255] in dataset.json's labels are not consecutive" in error
    assert "remap 255 -> 1 in every label map (and in dataset.json)" in error
    assert not (tmp_path / "lesion.yaml").exists()


def test_a_folder_without_a_dataset_description_is_refused(capsys, tmp_path):
    assert main(["task", "init", str(tmp_path)]) == 2
    assert "no dataset_0.json or dataset.json here" in capsys.readouterr().err


def test_anisotropic_spacing_gets_a_note_from_task_init_and_data_check(capsys, tmp_path):
    root, entries = tmp_path / "Thick", []
    for k in range(3):
        image, label = np.full((40, 40, 12), -1000.0, np.float32), np.zeros((40, 40, 12), np.uint8)
        image[10:30, 10:30, 3:9], label[10:30, 10:30, 3:9] = 40.0 + k, 1
        for folder, array in (("imagesTr", image), ("labelsTr", label)):
            (root / folder).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(array, np.diag([0.8, 0.8, 5.0, 1.0])), root / folder / f"c{k}.nii.gz")
        entries.append({"image": f"imagesTr/c{k}.nii.gz", "label": f"labelsTr/c{k}.nii.gz"})
    (root / "dataset_0.json").write_text(json.dumps({"training": entries}))
    output = tmp_path / "thick.yaml"
    assert main(["task", "init", str(root), "--output", str(output)]) == 0
    note = "note: spacing 0.8 x 0.8 x 5 mm is anisotropic: the third axis is 6.25x coarser than the others"
    assert note in capsys.readouterr().out and f"#   {note}" in output.read_text()
    assert "the ROI [48, 48, 16] spans 38.4 x 38.4 x 80 mm" in output.read_text()
    assert main(["data", "check", "--quiet", "--task", str(output), "--data-root", str(root)]) == 0
    assert note in capsys.readouterr().out
