"""Inference: sliding windows with Gaussian blending for 3D, whole images for 2D; predictions mapped back
to each input's original grid (same shape and affine) by inverting the validation transforms."""

from __future__ import annotations

from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference
from monai.transforms import Compose, Invertd
from torch import nn

from medmae.config import InferConfig
from medmae.devices import autocast
from medmae.tasks import TaskSpec


def output_probabilities(task: TaskSpec, logits: torch.Tensor) -> torch.Tensor:
    """Sigmoid per region or finding (overlapping classes), softmax over labels otherwise."""
    return torch.sigmoid(logits) if task.regions or task.is_classification else torch.softmax(logits, dim=1)


@torch.no_grad()
def segment(
    model: nn.Module,
    task: TaskSpec,
    image: torch.Tensor,
    infer: InferConfig,
    precision: str,
    device: torch.device,
    on_device: bool = False,
) -> torch.Tensor:
    """Class probabilities on the preprocessed grid: image ``[C, *S]`` -> ``[K, *S]`` float32, on the CPU
    (through pinned memory from a GPU), or left on ``device`` with ``on_device`` (validation reduces them
    there to masks, a quarter of the bytes per class to copy)."""
    with autocast(precision, device):
        logits = sliding_window_inference(
            torch.as_tensor(image).as_subclass(torch.Tensor)[None].to(device),  # metadata stays with the item
            task.roi,
            infer.sw_batch_size,
            model,
            overlap=infer.overlap,
            mode=infer.blend,
        )
    probabilities = output_probabilities(task, logits.float())[0]
    return probabilities if on_device else to_host(probabilities)


def to_host(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor on the CPU: from a GPU through pinned memory (the caching host allocator's, reused across
    calls), about twice as fast as a copy to pageable memory."""
    if tensor.device.type != "cuda":
        return tensor.cpu()
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    torch.cuda.current_stream(tensor.device).synchronize()
    return host


def to_label_map(task: TaskSpec, probabilities: torch.Tensor) -> torch.Tensor:
    """``[K, *S]`` -> label map ``[*S]`` (uint8) in the task's label values (never its ignore label). Regions
    are painted in the task's order, each with its value of ``task.region_values`` where its probability
    exceeds 0.5, a later region overwriting an earlier one (nnU-Net's ``regions_class_order``): MSD brain's
    whole tumour -> 1 (edema), tumour core -> 2 (non-enhancing), enhancing -> 3."""
    if not task.regions:
        return probabilities.argmax(dim=0).to(torch.uint8)
    labels = torch.zeros(probabilities.shape[1:], dtype=torch.uint8, device=probabilities.device)
    for channel, value in enumerate(task.region_values):
        labels[probabilities[channel] > 0.5] = value
    return labels


def predicted_masks(task: TaskSpec, probabilities: torch.Tensor) -> torch.Tensor:
    """``[K, *S]`` probabilities -> ``[F, *S]`` booleans, one per scored class (regions or foreground labels)."""
    if task.regions:
        return probabilities > 0.5
    labels = probabilities.argmax(dim=0)
    return torch.stack([labels == value for (value,) in task.scored_classes.values()])


def reference_masks(task: TaskSpec, label: torch.Tensor) -> torch.Tensor:
    """The training target (``[R, *S]`` regions, ``[R + 1, *S]`` with the ignore mask last, or ``[1, *S]``
    labels) -> ``[F, *S]`` booleans."""
    if task.regions:
        return label[: len(task.regions)] > 0.5
    return torch.stack([label[0] == value for (value,) in task.scored_classes.values()])


def ignored_voxels(task: TaskSpec, label: torch.Tensor) -> torch.Tensor:
    """The training target (as :func:`reference_masks` takes it) -> ``[*S]`` booleans: the voxels under the
    task's ignore label, which no class is scored on (all False without one)."""
    if task.ignore_label is None:
        return torch.zeros(label.shape[1:], dtype=torch.bool, device=label.device)
    return label[-1] > 0.5 if task.regions else label[0] == task.ignore_label


def to_original_grid(transform: Compose, item: dict[str, Any], probabilities: torch.Tensor) -> torch.Tensor:
    """Invert the validation chain on ``probabilities`` ``[K, *S]``: back to the original file's grid
    (bilinear for the probabilities, then the label decision is made on the original grid)."""
    image = item["image"]
    pred = MetaTensor(probabilities, meta=dict(image.meta), applied_operations=list(image.applied_operations))
    inverter = Invertd(keys="pred", transform=transform, orig_keys="image", nearest_interp=False)
    return torch.as_tensor(inverter({"image": image, "pred": pred})["pred"])


def background_outside(task: TaskSpec, probabilities: torch.Tensor) -> torch.Tensor:
    """Label probabilities ``[K, *S]`` on the original grid with the mass that inverting a crop or pad
    left out (zeros outside the processed region, partial sums at its border) given to the background,
    so that every voxel's probabilities sum to 1; region (sigmoid) probabilities are returned as they are."""
    if task.regions:
        return probabilities
    missing = (1 - probabilities.sum(dim=0)).clamp(min=0)
    return torch.cat([probabilities[:1] + missing, probabilities[1:]])
