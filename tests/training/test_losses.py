"""Segmentation losses: MONAI's DiceCE over labels, Dice and binary cross-entropy per region (nnU-Net's), and
with an ignore label the ignored voxels take part in neither term, as in nnU-Net."""

from __future__ import annotations

import torch
from monai.losses import DiceCELoss, DiceLoss

from medmae.tasks import load_task, task_from_record
from medmae.training.losses import IgnoringDiceCELoss, RegionDiceBCELoss, segmentation_loss


def with_ignore(name: str):
    task = load_task(name)
    return task_from_record(dict(task.record) | {"ignore_label": len(task.labels)}, f"{name}.yaml")


def test_without_an_ignore_label_labels_take_monai_dicece_and_regions_dice_and_bce():
    loss = segmentation_loss(load_task("demo"))
    assert type(loss) is DiceCELoss and loss.dice.softmax
    torch.manual_seed(0)
    logits, regions = torch.randn(2, 3, 4, 4, 3), (torch.rand(2, 3, 4, 4, 3) > 0.5).float()
    expected = DiceLoss(sigmoid=True)(logits, regions) + torch.nn.BCEWithLogitsLoss()(logits, regions)
    torch.testing.assert_close(segmentation_loss(load_task("msd_brain"))(logits, regions), expected)


def test_overlapping_regions_predicted_exactly_cost_almost_nothing():
    """A voxel of enhancing tumour is in all three regions: the binary cross-entropy of each region's
    sigmoid is near 0 where the logits agree, where a softmax cross-entropy over the regions is not."""
    regions = torch.zeros(1, 3, 4, 4, 4)
    regions[:, 0, 1:] = 1  # whole tumour
    regions[:, 1, 2:] = 1  # tumour core
    regions[:, 2, 3:] = 1  # enhancing
    logits = 20 * (2 * regions - 1)
    assert segmentation_loss(load_task("msd_brain"))(logits, regions) < 1e-3
    assert DiceCELoss(sigmoid=True)(logits, regions) > 1  # MONAI's: softmax cross-entropy of the regions


def test_with_nothing_ignored_the_ignoring_losses_equal_the_plain_ones():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 4, 4, 3)
    labels = torch.randint(0, 5, (2, 1, 4, 4, 3))
    expected = DiceCELoss(to_onehot_y=True, softmax=True)(logits, labels)
    torch.testing.assert_close(segmentation_loss(with_ignore("demo"))(logits, labels), expected)
    regions = (torch.rand(2, 3, 4, 4, 3) > 0.5).float()
    expected = RegionDiceBCELoss()(logits[:, :3], regions)
    nothing_ignored = torch.cat([regions, torch.zeros(2, 1, 4, 4, 3)], dim=1)
    torch.testing.assert_close(segmentation_loss(with_ignore("msd_brain"))(logits[:, :3], nothing_ignored), expected)


def test_ignored_voxels_change_neither_the_loss_nor_get_a_gradient():
    torch.manual_seed(0)
    labels = torch.randint(0, 5, (2, 1, 4, 4, 3))
    labels[:, :, :2] = 5  # the ignore label
    regions = torch.cat([(torch.rand(2, 3, 4, 4, 3) > 0.5).float(), (labels == 5).float()], dim=1)
    for target, loss in (
        (labels, IgnoringDiceCELoss(5)),
        (regions, RegionDiceBCELoss(ignore=True)),
    ):
        logits = torch.randn(2, 5 if target is labels else 3, 4, 4, 3, requires_grad=True)
        value = loss(logits, target)
        value.backward()
        assert torch.isfinite(value) and (logits.grad[:, :, :2] == 0).all() and logits.grad[:, :, 2:].abs().sum() > 0
        changed = logits.detach().clone()
        changed[:, :, :2] = 100 * torch.randn_like(changed[:, :, :2])
        torch.testing.assert_close(loss(changed, target), value.detach())


def test_a_crop_that_is_all_ignored_gives_no_loss_from_cross_entropy():
    logits = torch.randn(1, 5, 2, 2, 2)
    value = IgnoringDiceCELoss(5)(logits, torch.full((1, 1, 2, 2, 2), 5))
    assert torch.isfinite(value) and 0 <= value <= 1  # the Dice of empty masks only
