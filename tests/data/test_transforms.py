"""The MONAI pipelines: each rule pinned on small synthetic data (orientation, spacing, intensity, label
rounding, crop balance, ROI shapes) and on the real sets (shapes, regions, exact inversion)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Compose
from PIL import Image as PILImage

from medmae.data.cases import Case
from medmae.data.check import check_case
from medmae.data.loaders import CaseDataset, case_dict
from medmae.data.manifests import load_split
from medmae.data.transforms import LabelToRegionsd, RandResizedCropd, build_transform, intensity_transforms
from medmae.errors import DataError
from medmae.tasks import load_task, task_from_record
from tests.helpers import shared


def msd_set(root, images, labels, affine=None):
    """An MSD-layout dataset: ``images``/``labels`` are lists of arrays ([x, y, z] or [x, y, z, C])."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    entries = []
    for k, (image, label) in enumerate(zip(images, labels)):
        name = f"case_{k:03d}.nii.gz"
        nib.save(nib.Nifti1Image(image, np.eye(4) if affine is None else affine), root / "imagesTr" / name)
        nib.save(nib.Nifti1Image(label, np.eye(4) if affine is None else affine), root / "labelsTr" / name)
        entries.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    (root / "dataset.json").write_text(json.dumps({"training": entries}))
    return root


def validation_item(task, root):
    case = load_split(task, root).all_cases()[0]
    return build_transform(task, "validation")(case_dict(case))


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


def test_orientation_makes_an_lps_copy_identical_to_the_ras_original(demo_root, tmp_path):
    task = load_task("demo")
    case = load_split(task, demo_root).all_cases()[0]
    image, label = nib.load(case.image), nib.load(case.label)
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = np.array(image.shape[:2]) - 1  # voxel i -> n-1-i
    lps_affine = image.affine @ flip
    for source, name in ((image, "i.nii.gz"), (label, "l.nii.gz")):
        nib.save(nib.Nifti1Image(np.asarray(source.dataobj)[::-1, ::-1], lps_affine), tmp_path / name)
    assert nib.aff2axcodes(lps_affine) == ("L", "P", "S")
    transform = build_transform(task, "validation")
    original = transform(case_dict(case))
    flipped = transform(case_dict(Case("x", tmp_path / "i.nii.gz", tmp_path / "l.nii.gz")))
    assert torch.equal(original["image"], flipped["image"]) and torch.equal(original["label"], flipped["label"])


def test_spacing_resamples_to_the_task_spacing(demo_root, tmp_path):
    task = load_task("demo")  # 4.5 mm; the files have 3 mm
    case = load_split(task, demo_root).all_cases()[0]
    for path, name in ((case.image, "i.nii.gz"), (case.label, "l.nii.gz")):
        source = nib.load(path)
        nib.save(nib.Nifti1Image(np.asarray(source.dataobj), np.diag([6.0, 6.0, 6.0, 1.0])), tmp_path / name)
    transform = build_transform(task, "validation")
    item = transform(case_dict(Case("x", tmp_path / "i.nii.gz", tmp_path / "l.nii.gz")))
    assert torch.allclose(item["image"].pixdim.float(), torch.tensor([4.5, 4.5, 4.5]))
    assert item["image"].shape[1:] != transform(case_dict(case))["image"].shape[1:]


def test_brain_z_score_uses_the_non_zero_voxels_of_each_channel():
    grid = np.stack(np.meshgrid(*[np.arange(24)] * 3, indexing="ij"))
    brain = ((grid - 11.5) ** 2).sum(0) < 10**2  # a ball: its bounding box keeps background corners
    image = np.zeros((4, 24, 24, 24), np.float32)
    image[:, brain] = np.random.default_rng(0).normal([[100], [300], [500], [700]], 20, (4, int(brain.sum())))
    out = Compose(intensity_transforms(load_task("msd_brain")))({"image": torch.from_numpy(image)})["image"]
    for channel in out:
        assert torch.equal(channel[torch.from_numpy(~brain)], torch.zeros(int((~brain).sum())))  # background stays 0
        inside = channel[torch.from_numpy(brain)]
        assert abs(inside.mean().item()) < 1e-3 and abs(inside.std().item() - 1) < 1e-2


def test_percentile_clipping_tames_an_outlier_before_the_z_score(tmp_path):
    image = np.random.default_rng(0).uniform(0, 100, (30, 40, 30)).astype(np.float32)
    image[3, 3, 3] = 1.7e6
    label = np.zeros((30, 40, 30), np.uint8)
    label[10:20, 10:20, 10:20] = 1
    out = validation_item(load_task("msd_hippocampus"), msd_set(tmp_path, [image], [label]))["image"]
    assert out.shape[1:] == (48, 64, 48)
    assert out.max() < 3 and abs(out[out != 0].std() - 1) < 0.05  # unclipped, the outlier would sit at ~150 sigma


def test_histogram_equalisation_spreads_a_dark_x_ray(tmp_path):
    (tmp_path / "images").mkdir()
    pixels = (np.random.default_rng(0).beta(1, 6, (64, 64)) * 255).astype(np.uint8)  # mostly dark
    PILImage.fromarray(pixels).save(tmp_path / "images" / "a.png")
    (tmp_path / "Data_Entry_2017.csv").write_text("Image Index,Finding Labels,Patient ID\na.png,Mass,1\n")
    (tmp_path / "train_val_list.txt").write_text("a.png\n")
    (tmp_path / "test_list.txt").write_text("")
    out = validation_item(load_task("chestxray14"), tmp_path)["image"]
    assert out.shape == (1, 224, 224)
    assert (pixels / 255 < 0.5).mean() > 0.9 and 0.4 < (out < 0.5).float().mean() < 0.6


def test_float_labels_are_rounded_or_refused(demo_root, tmp_path):
    task = load_task("demo")
    case = load_split(task, demo_root).all_cases()[0]
    source = nib.load(case.label)
    nearly = np.asarray(source.dataobj).astype(np.float32) - 2e-7
    nib.save(nib.Nifti1Image(nearly, source.affine), tmp_path / "near.nii.gz")
    near = Case("x", case.image, tmp_path / "near.nii.gz")
    assert check_case(task, near).errors == []
    assert torch.equal(
        build_transform(task, "validation")(case_dict(near))["label"],
        build_transform(task, "validation")(case_dict(case))["label"],
    )
    nib.save(nib.Nifti1Image(nearly + 0.5, source.affine), tmp_path / "half.nii.gz")
    half = Case("y", case.image, tmp_path / "half.nii.gz")
    assert any("non-integer" in e for e in check_case(task, half).errors)
    with pytest.raises(DataError, match="half.nii.gz: case y: label holds non-integer"):
        CaseDataset(task, [half], "validation")[0]


def test_train_crops_are_balanced_between_foreground_and_background_centres(tmp_path):
    """Edema-only brain: positive centres must come from the whole tumour, not from the tumour core."""
    image = np.zeros((40, 40, 40, 4), np.float32)
    image[2:38, 2:38, 2:38] = np.random.default_rng(0).normal(100, 10, (36, 36, 36, 4))
    label = np.zeros((40, 40, 40), np.uint8)
    label[4:8, 4:8, 4:8] = 1  # a small edema, far from the centre
    task = load_task("msd_brain")
    root = msd_set(tmp_path, [image], [label])
    task = type(task)(**{**task.__dict__, "roi": (16, 16, 16)})
    items = CaseDataset(task, load_split(task, root).all_cases(), "train", samples=40)[0]
    with_tumour = sum(bool(item["label"][0].any()) for item in items)
    assert 10 <= with_tumour <= 36, with_tumour  # about half the crops are centred on tumour


def test_train_items_keep_the_roi_shape_of_a_non_cubic_task(tmp_path):
    rng = np.random.default_rng(0)
    label = np.zeros((35, 50, 35), np.uint8)
    label[10:20, 20:30, 10:20] = 1
    root = msd_set(tmp_path, [rng.uniform(0, 100, (35, 50, 35)).astype(np.float32)], [label])
    task = load_task("msd_hippocampus")
    dataset = CaseDataset(task, load_split(task, root).all_cases(), "train", samples=8)
    shapes = {tuple(item["image"].shape) for _ in range(8) for item in dataset[0]}
    assert shapes == {(1, 48, 64, 48)}


@pytest.mark.parametrize(
    "name, lateral", [("btcv", True), ("demo", True), ("msd_brain", False), ("msd_hippocampus", False)]
)
def test_no_left_right_flip_or_axial_turn_where_labels_name_a_side(name, lateral):
    task = load_task(name)
    assert task.lateral == lateral
    chain = build_transform(task, "train").transforms
    flipped_axes = {t.flipper.spatial_axis for t in chain if type(t).__name__ == "RandFlipd"}
    turns = [t for t in chain if type(t).__name__ == "RandRotate90d"]
    assert flipped_axes == ({1, 2} if lateral else {0, 1, 2})
    assert not turns if lateral else len(turns) == (task.roi[0] == task.roi[1])
    pretrain_axes = {
        t.flipper.spatial_axis for t in build_transform(task, "pretrain").transforms if type(t).__name__ == "RandFlipd"
    }
    assert pretrain_axes == {0, 1, 2}  # no labels to swap while pretraining


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


def test_crops_centred_on_foreground_never_aim_at_the_ignore_label(tmp_path):
    """A small liver blob in one corner, unlabelled (ignore) voxels filling the opposite corner: the
    positive half of the crops must hold the blob; counting ignore as foreground would aim them far off."""
    task = load_task("demo")
    task = task_from_record(dict(task.record) | {"ignore_label": len(task.labels)}, "demo.yaml")
    affine = np.diag([4.5, 4.5, 4.5, 1.0])
    label = np.zeros((160, 160, 64), np.uint8)
    label[4:10, 4:10, 4:10] = 1
    label[100:, 100:, :] = task.ignore_label
    nib.save(nib.Nifti1Image(np.full(label.shape, 100, np.int16), affine), tmp_path / "image.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), tmp_path / "label.nii.gz")
    chain = build_transform(task, "train", samples=40)
    chain.set_random_state(seed=0)
    crops = chain({"image": str(tmp_path / "image.nii.gz"), "label": str(tmp_path / "label.nii.gz")})
    holding = [bool((torch.as_tensor(c["label"]) == 1).any()) for c in crops]
    assert sum(holding) >= 0.4 * len(crops) and all("sampling_label" not in c for c in crops)
