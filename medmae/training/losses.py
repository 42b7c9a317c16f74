"""Segmentation losses: MONAI's DiceCE, and DiceCE that leaves out the voxels of the task's ignore label
(nnU-Net's rule for sparse annotations: those voxels take part in neither the Dice nor the cross-entropy)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss
from torch import nn

from medmae.tasks import TaskSpec


def segmentation_loss(task: TaskSpec) -> nn.Module:
    """DiceCE: softmax over labels, or a sigmoid per (overlapping) region; with an ignore label, the
    ignored voxels left out of both terms."""
    if task.ignore_label is not None:
        return IgnoringDiceCELoss(task.ignore_label, regions=bool(task.regions))
    if task.regions:
        return DiceCELoss(sigmoid=True)
    return DiceCELoss(to_onehot_y=True, softmax=True)


class IgnoringDiceCELoss(nn.Module):
    """MONAI's DiceCE over the voxels not under the ignore label: Dice with its defaults plus the mean
    cross-entropy of the softmax against the (one-hot or region) target, which is what MONAI's DiceCELoss
    computes for several output channels, regions included. Labels: logits ``[B, K, *S]``, target
    ``[B, 1, *S]`` of values 0..K-1 and ``ignore`` (= K). Regions: logits ``[B, R, *S]``, target
    ``[B, R + 1, *S]``, the ignore mask last (:class:`medmae.data.transforms.LabelToRegionsd`). Ignored voxels
    count as empty in the Dice (prediction and target zeroed there) and are left out of the cross-entropy."""

    def __init__(self, ignore: int, regions: bool) -> None:
        super().__init__()
        self.ignore, self.regions = ignore, regions
        self.dice = DiceLoss()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.regions:
            target, kept, probabilities = target[:, :-1], 1 - target[:, -1:], torch.sigmoid(logits)
        else:
            target, kept = self._one_hot(target[:, 0].long(), logits.shape[1], logits.dtype)
            probabilities = torch.softmax(logits, dim=1)
        dice = self.dice(probabilities * kept, target * kept)
        cross_entropy = -(target * torch.log_softmax(logits, dim=1)).sum(dim=1, keepdim=True)  # [B, 1, *S]
        return dice + (cross_entropy * kept).sum() / kept.sum().clamp(min=1)

    def _one_hot(self, labels: torch.Tensor, classes: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Labels ``[B, *S]`` -> one-hot ``[B, K, *S]`` (all 0 where ignored) and the kept voxels ``[B, 1, *S]``
        (1 where not ignored), both of ``dtype``."""
        kept = (labels != self.ignore).unsqueeze(1)
        one_hot = F.one_hot(labels.masked_fill(~kept[:, 0], 0), classes).movedim(-1, 1) * kept
        return one_hot.to(dtype), kept.to(dtype)
