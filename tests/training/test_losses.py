"""Segmentation losses: MONAI's DiceCE unchanged without an ignore label; with one, the ignored voxels take
part in neither term, as in nnU-Net."""

from __future__ import annotations

import torch
from monai.losses import DiceCELoss

from medmae.tasks import load_task, task_from_record
from medmae.training.losses import IgnoringDiceCELoss, segmentation_loss


def with_ignore(name: str):
    task = load_task(name)
    return task_from_record(dict(task.record) | {"ignore_label": len(task.labels)}, f"{name}.yaml")


def test_without_an_ignore_label_the_loss_is_monai_dicece():
    for name, sigmoid in (("demo", False), ("msd_brain", True)):
        loss = segmentation_loss(load_task(name))
        assert type(loss) is DiceCELoss and loss.dice.sigmoid is sigmoid and loss.dice.softmax is not sigmoid


def test_with_nothing_ignored_the_ignoring_loss_equals_dicece():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 4, 4, 3)
    labels = torch.randint(0, 5, (2, 1, 4, 4, 3))
    expected = DiceCELoss(to_onehot_y=True, softmax=True)(logits, labels)
    torch.testing.assert_close(segmentation_loss(with_ignore("demo"))(logits, labels), expected)
    regions = (torch.rand(2, 3, 4, 4, 3) > 0.5).float()
    expected = DiceCELoss(sigmoid=True)(logits[:, :3], regions)
    nothing_ignored = torch.cat([regions, torch.zeros(2, 1, 4, 4, 3)], dim=1)
    torch.testing.assert_close(segmentation_loss(with_ignore("msd_brain"))(logits[:, :3], nothing_ignored), expected)


def test_ignored_voxels_change_neither_the_loss_nor_get_a_gradient():
    torch.manual_seed(0)
    labels = torch.randint(0, 5, (2, 1, 4, 4, 3))
    labels[:, :, :2] = 5  # the ignore label
    regions = torch.cat([(torch.rand(2, 3, 4, 4, 3) > 0.5).float(), (labels == 5).float()], dim=1)
    for target, loss in (
        (labels, IgnoringDiceCELoss(5, regions=False)),
        (regions, IgnoringDiceCELoss(5, regions=True)),
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
    value = IgnoringDiceCELoss(5, regions=False)(logits, torch.full((1, 1, 2, 2, 2), 5))
    assert torch.isfinite(value) and 0 <= value <= 1  # the Dice of empty masks only
