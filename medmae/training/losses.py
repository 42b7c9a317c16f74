"""Segmentation losses, as nnU-Net trains: Dice plus the cross-entropy of the softmax over labels, or Dice
of the sigmoids plus binary cross-entropy per region for overlapping regions; with the task's ignore label,
its voxels take part in neither term (nnU-Net's rule for sparse annotations)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss
from torch import nn

from medmae.tasks import TaskSpec


def segmentation_loss(task: TaskSpec) -> nn.Module:
    """MONAI's DiceCE (softmax over labels); :class:`RegionDiceBCELoss` for regions (MONAI's DiceCE would
    take the softmax cross-entropy of several region outputs); :class:`IgnoringDiceCELoss` for labels with
    an ignore label."""
    if task.regions:
        return RegionDiceBCELoss(ignore=task.ignore_label is not None)
    if task.ignore_label is not None:
        return IgnoringDiceCELoss(task.ignore_label)
    return DiceCELoss(to_onehot_y=True, softmax=True)


class RegionDiceBCELoss(nn.Module):
    """Overlapping regions: MONAI's Dice of the sigmoids plus the mean binary cross-entropy with logits over
    voxels and regions. Logits ``[B, R, *S]``, target ``[B, R, *S]`` of 0 and 1; with ``ignore``, target
    ``[B, R + 1, *S]`` with the ignore mask last (:class:`medmae.data.transforms.LabelToRegionsd`), whose
    voxels count as empty in the Dice and are left out of the cross-entropy."""

    def __init__(self, ignore: bool = False) -> None:
        super().__init__()
        self.ignore = ignore
        self.dice = DiceLoss()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.ignore:
            target, kept = target[:, :-1], 1 - target[:, -1:]
        else:
            kept = torch.ones_like(target[:, :1])
        dice = self.dice(torch.sigmoid(logits) * kept, target * kept)
        cross_entropy = F.binary_cross_entropy_with_logits(logits, target, reduction="none")  # [B, R, *S]
        return dice + (cross_entropy * kept).sum() / (kept.sum() * logits.shape[1]).clamp(min=1)


class IgnoringDiceCELoss(nn.Module):
    """MONAI's DiceCE over the voxels not under the ignore label: Dice with its defaults plus the mean
    cross-entropy of the softmax against the one-hot target. Logits ``[B, K, *S]``, target ``[B, 1, *S]`` of
    values 0..K-1 and ``ignore`` (= K). Ignored voxels count as empty in the Dice (prediction and target
    zeroed there) and are left out of the cross-entropy."""

    def __init__(self, ignore: int) -> None:
        super().__init__()
        self.ignore = ignore
        self.dice = DiceLoss()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target, kept = self._one_hot(target[:, 0].long(), logits.shape[1], logits.dtype)
        dice = self.dice(torch.softmax(logits, dim=1) * kept, target * kept)
        cross_entropy = -(target * torch.log_softmax(logits, dim=1)).sum(dim=1, keepdim=True)  # [B, 1, *S]
        return dice + (cross_entropy * kept).sum() / kept.sum().clamp(min=1)

    def _one_hot(self, labels: torch.Tensor, classes: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Labels ``[B, *S]`` -> one-hot ``[B, K, *S]`` (all 0 where ignored) and the kept voxels ``[B, 1, *S]``
        (1 where not ignored), both of ``dtype``."""
        kept = (labels != self.ignore).unsqueeze(1)
        one_hot = F.one_hot(labels.masked_fill(~kept[:, 0], 0), classes).movedim(-1, 1) * kept
        return one_hot.to(dtype), kept.to(dtype)
