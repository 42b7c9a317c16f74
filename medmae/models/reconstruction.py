"""The masked-reconstruction target, loss and figures that every MAE shares (ViT and convolutional).

A model mixes in :class:`PatchReconstruction` and provides ``patch_size`` (the masking unit, per axis),
``img_size`` and ``norm_pix_loss``; predictions are per patch, ``[B, N, prod(p) * C]`` in :func:`patchify` order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medmae.models.patchify import patchify, unpatchify

NORM_PIX_EPS = 1e-6


class PatchReconstruction:
    """Input check, target, loss on hidden patches and reconstruction images, for a model with
    ``patch_size``, ``img_size`` and ``norm_pix_loss``."""

    patch_size: tuple[int, ...]
    img_size: tuple[int, ...]
    norm_pix_loss: bool

    def _check_size(self, x: torch.Tensor) -> None:
        """Raise ValueError unless ``x`` ``[B, C, *S]`` has this model's ``img_size``."""
        if tuple(x.shape[2:]) != self.img_size:
            raise ValueError(f"input of spatial size {tuple(x.shape[2:])} given to an MAE built for {self.img_size}")

    def patch_target(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x ``[B, C, *S]`` -> (target, mean, std), each ``[B, N, L]`` or ``[B, N, 1]``, in float32.

        With ``norm_pix_loss`` the target is each patch minus its mean over its voxels and channels,
        divided by ``sqrt(var + 1e-6)``; otherwise the raw patch with mean 0 and std 1.
        """
        return self._target(patchify(x, self.patch_size))

    def _target(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`patch_target` from patches ``[B, N, L]``, always in float32 (outside autocast).

        Two passes (the mean, then the sum of squares of the centred patch as a batched dot product): exact
        where a one-pass formula cancels, and about a third of ``var_mean``'s time on CPU. Out of place, so
        gradients flow back to the input (saliency, input gradients).
        """
        with torch.autocast(patches.device.type, enabled=False):
            target = patches.float()
            if not self.norm_pix_loss:
                return target, torch.zeros_like(target[..., :1]), torch.ones_like(target[..., :1])
            mean = target.mean(dim=-1, keepdim=True)
            centred = target - mean
            var = torch.einsum("bnl,bnl->bn", centred, centred).unsqueeze(-1) / centred.shape[-1]
            std = (var + NORM_PIX_EPS).sqrt()
            return centred / std, mean, std

    def forward_loss(self, x: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error over the hidden patches only.

        Args:
            x: ``[B, C, *S]`` the input; pred: ``[B, N, L]``; mask: ``[B, N]`` with 1 = hidden.

        Returns:
            scalar float32: ``sum_n mask * mean_L (pred - target)^2 / sum_n mask`` (0 when nothing is hidden).
        """
        return self._loss(patchify(x, self.patch_size), pred, mask)

    def _loss(self, patches: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        target, _, _ = self._target(patches)
        per_patch = F.mse_loss(pred.float(), target, reduction="none").mean(dim=-1)
        return (per_patch * mask).sum() / mask.sum().clamp(min=1)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Turn predictions back into images for figures.

        With ``norm_pix_loss`` each predicted patch is mapped back with the true patch's mean and std.

        Args:
            x: ``[B, C, *S]``; pred: ``[B, N, L]``; mask: ``[B, N]`` with 1 = hidden.

        Returns:
            ``{"masked": input with hidden patches zeroed, "prediction": every patch predicted,
            "composite": visible patches from the input, hidden ones predicted}``, each ``[B, C, *S]``.
        """
        _, mean, std = self.patch_target(x)
        predicted = pred.float() * std + mean
        patches = patchify(x.float(), self.patch_size)
        hidden = mask.unsqueeze(-1).bool()
        images = {
            "masked": patches.masked_fill(hidden, 0.0),
            "prediction": predicted,
            "composite": torch.where(hidden, predicted, patches),
        }
        return {name: unpatchify(p, self.patch_size, x.shape[2:]) for name, p in images.items()}
