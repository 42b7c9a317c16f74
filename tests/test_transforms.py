import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import shared

from medmae.data.loaders import CaseDataset, case_dict
from medmae.data.manifests import load_split
from medmae.data.transforms import LabelToRegionsd, RandResizedCropd, build_transform
from medmae.tasks import load_task

REAL = [
    ("msd_hippocampus", "msd_hippocampus"),
    ("btcv", "btcv_layout_sample"),
    ("msd_brain", "msd_brain_case"),
    ("chestxray14", "chestxray14_nih_subset"),
]


def first_item(task, root, stage, samples=2):
    split = load_split(task, root)
    out = CaseDataset(task, split.all_cases()[:1], stage, samples=samples)[0]
    return out if isinstance(out, list) else [out]


@pytest.mark.parametrize("name,folder", REAL)
def test_real_train_and_pretrain_items_have_the_roi_shape_and_channels(name, folder):
    task = load_task(name)
    root = shared(folder)
    for stage in ("train", "pretrain"):
        items = first_item(task, root, stage)
        for item in items:
            image = item["image"]
            assert tuple(image.shape) == (task.in_channels, *task.roi), (stage, image.shape)
            assert image.dtype == torch.float32 and torch.isfinite(image).all()
            if stage == "train" and task.is_classification:
                assert item["label"].shape == (14,)
            elif stage == "train":
                assert item["label"].shape == (len(task.regions) or 1, *task.roi)
            else:
                assert "label" not in item
        assert len(items) == (1 if task.is_classification else 2)


def test_brain_regions_have_the_voxel_counts_of_the_msd_labels():
    root = shared("msd_brain_case")
    raw = np.asarray(nib.load(root / "labelsTr" / "BRATS_001.nii.gz").dataobj)
    item = first_item(load_task("msd_brain"), root, "validation")[0]
    counts = item["label"].sum(dim=(1, 2, 3)).tolist()
    assert counts == [np.isin(raw, [1, 2, 3]).sum(), np.isin(raw, [2, 3]).sum(), (raw == 3).sum()]
    assert counts[0] > counts[1] > counts[2] > 0


@pytest.mark.parametrize("name", ["demo", "btcv", "msd_hippocampus"])
def test_validation_items_invert_exactly_to_the_original_grid(name, demo_root):
    """A prediction on a validation item maps back to the original file's grid: here the label itself."""
    task = load_task(name)
    root = (
        demo_root
        if name == "demo"
        else shared({"btcv": "btcv_layout_sample", "msd_hippocampus": "msd_hippocampus"}[name])
    )
    case = load_split(task, root).all_cases()[0]
    transform = build_transform(task, "validation")
    item = transform(case_dict(case))
    assert tuple(item["image"].shape[1:]) != nib.load(case.image).shape  # the chain did change the grid
    back = transform.inverse({"image": item["image"], "label": item["label"].float()})["label"]
    original = nib.load(case.label)
    labels, reference = np.round(back[0].numpy()), np.asarray(original.dataobj)
    assert labels.shape == reference.shape and np.allclose(back.affine.numpy(), original.affine)
    if name == "demo":  # 3 mm -> 4.5 mm -> 3 mm by nearest neighbour: the grid returns exactly, small organs lose edges
        for value in range(1, 5):
            both = np.sum((labels == value) & (reference == value))
            assert 2 * both / (np.sum(labels == value) + np.sum(reference == value)) > 0.85
    else:
        assert np.array_equal(labels, reference)


def test_label_to_regions_overlap_as_named():
    label = torch.tensor([0, 1, 2, 3, 3]).reshape(1, 5, 1, 1)
    regions = LabelToRegionsd("label", {"wt": [1, 2, 3], "tc": [2, 3], "et": [3]})({"label": label})["label"]
    assert regions[:, :, 0, 0].tolist() == [[0, 1, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 1, 1]]


def test_random_resized_crop_stays_inside_and_resizes():
    transform = RandResizedCropd("image", size=(32, 32), scale=(0.3, 0.6))
    transform.set_random_state(0)
    image = torch.arange(100 * 80, dtype=torch.float32).reshape(1, 100, 80)
    areas = []
    for _ in range(20):
        out = transform({"image": image})["image"]
        top, left, h, w = transform.box
        assert out.shape == (1, 32, 32) and 0 <= top <= 100 - h and 0 <= left <= 80 - w
        areas.append(h * w / 8000)
    assert 0.28 < min(areas) and max(areas) < 0.62


def test_unknown_stage_raises():
    with pytest.raises(ValueError, match="stage 'test'"):
        build_transform(load_task("demo"), "test")
