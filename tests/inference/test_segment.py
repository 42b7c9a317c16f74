"""Segmentation outputs: sliding-window probabilities on the image grid, label maps in the task's values,
and the masks of prediction and target per scored class."""

from __future__ import annotations

import pytest
import torch

from medmae.data.transforms import LabelToRegionsd
from medmae.inference.segment import background_outside, to_label_map
from medmae.tasks import load_task, task_from_record


def test_brain_regions_become_msd_labels():
    task = load_task("msd_brain")
    probabilities = torch.zeros(3, 4, 1, 1)
    probabilities[0, 1:] = 0.9  # whole tumour
    probabilities[1, 2:] = 0.9  # tumour core
    probabilities[2, 3:] = 0.9  # enhancing
    assert to_label_map(task, probabilities)[:, 0, 0].tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("task_name", ["demo", "msd_brain"])
def test_masks_of_prediction_and_target_follow_the_scored_classes(task_name):
    from medmae.inference.segment import predicted_masks, reference_masks

    task = load_task(task_name)
    probabilities = torch.softmax(torch.randn(len(task.class_names), 4, 5, 6), dim=0)
    if task.regions:
        probabilities = torch.rand(len(task.regions), 4, 5, 6)
        target = (torch.rand(len(task.regions), 4, 5, 6) > 0.5).float()
        expected_pred, expected_ref = probabilities > 0.5, target > 0.5
    else:
        target = torch.randint(0, len(task.labels), (1, 4, 5, 6)).float()
        labels = probabilities.argmax(0)
        expected_pred = torch.stack([labels == v for v in range(1, len(task.labels))])
        expected_ref = torch.stack([target[0] == v for v in range(1, len(task.labels))])
    assert predicted_masks(task, probabilities).shape[0] == len(task.scored_classes)
    assert torch.equal(predicted_masks(task, probabilities), expected_pred)
    assert torch.equal(reference_masks(task, target), expected_ref)


def test_sliding_window_segmentation_gives_probabilities_on_the_image_grid():
    from medmae.config import InferConfig
    from medmae.inference.segment import segment
    from medmae.models import create_model

    task = load_task("demo")
    model = create_model("unetr_vit_tiny_patch16_3d", img_size=task.roi, out_channels=len(task.labels)).eval()
    probabilities = segment(model, task, torch.randn(1, 60, 50, 40), InferConfig(), "fp32", torch.device("cpu"))
    assert probabilities.shape == (5, 60, 50, 40) and probabilities.device.type == "cpu"
    torch.testing.assert_close(probabilities.sum(0), torch.ones(60, 50, 40))


def test_what_a_crop_left_out_of_the_original_grid_is_background():
    labels = load_task("demo")
    inside = torch.softmax(torch.randn(5, 4, 4, 4), dim=0)
    on_grid = torch.zeros(5, 6, 4, 4)  # two planes outside the crop, then its border plane blended halfway
    on_grid[:, 1], on_grid[:, 2:] = 0.5 * inside[:, 0], inside[:, :4]
    completed = background_outside(labels, on_grid)
    assert torch.allclose(completed.sum(dim=0), torch.ones(6, 4, 4))
    assert (completed[0, 0] == 1).all() and torch.equal(completed[1:], on_grid[1:])
    assert torch.allclose(completed[0, 1], 0.5 + 0.5 * inside[0, 0])
    regions = load_task("msd_brain")
    assert torch.equal(background_outside(regions, on_grid[:3]), on_grid[:3])  # sigmoid: nothing to give


def test_batched_windows_and_device_resident_probabilities_equal_one_window_at_a_time():
    """``infer.sw_batch_size`` (8 by default) changes how many windows share a forward pass, not the result;
    ``on_device`` leaves the same probabilities where they were computed."""
    from medmae.config import InferConfig
    from medmae.inference.segment import segment
    from medmae.models import create_model

    task = load_task("demo")
    model = create_model("unetr_vit_tiny_patch16_3d", img_size=task.roi, out_channels=len(task.labels)).eval()
    image, cpu = torch.randn(1, 60, 50, 40), torch.device("cpu")
    batched = segment(model, task, image, InferConfig(), "fp32", cpu, on_device=True)
    single = segment(model, task, image, InferConfig(sw_batch_size=1), "fp32", cpu)
    assert InferConfig().sw_batch_size == 8
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-6)


def kits23(**keys):
    """KiTS23 as nnU-Net converts it: regions kidney {1, 2, 3}, masses {2, 3}, tumour {2}, written 1, 3, 2."""
    record = dict(load_task("demo").record) | {
        "labels": ["background", "kidney", "tumor", "cyst"],
        "regions": {"kidney": [1, 2, 3], "masses": [2, 3], "tumor": [2]},
        "regions_class_order": [1, 3, 2],
        "mean_groups": {},
    }
    return task_from_record(record | keys, "kits23.yaml")


def test_regions_are_painted_in_order_with_their_regions_class_order_values():
    probabilities = torch.zeros(3, 4, 1, 1)
    probabilities[0, 1:] = 0.9  # kidney
    probabilities[1, 2:] = 0.9  # masses
    probabilities[2, 3:] = 0.9  # tumour
    assert to_label_map(kits23(), probabilities)[:, 0, 0].tolist() == [0, 1, 3, 2]  # a cyst is a mass, not tumour


def test_voxels_under_the_ignore_label_are_found_in_either_kind_of_target():
    from medmae.inference.segment import ignored_voxels, reference_masks

    labels = torch.tensor([0, 1, 3, 4, 2]).reshape(1, 5, 1, 1)
    assert ignored_voxels(kits23(), labels).flatten().tolist() == [False] * 5  # no ignore label
    task = kits23(ignore_label=4)
    regions = LabelToRegionsd("label", task.regions, task.ignore_label)({"label": labels})["label"]
    assert regions.shape == (4, 5, 1, 1)  # the ignore mask last
    assert ignored_voxels(task, regions).flatten().tolist() == [False, False, False, True, False]
    assert reference_masks(task, regions)[:, :, 0, 0].tolist() == [
        [False, True, True, False, True],
        [False, False, True, False, True],
        [False, False, False, False, True],
    ]
    plain = task_from_record(dict(load_task("demo").record) | {"ignore_label": 5}, "demo.yaml")
    ignored = ignored_voxels(plain, torch.tensor([0, 5, 4]).reshape(1, 3, 1, 1))
    assert ignored.flatten().tolist() == [False, True, False]
