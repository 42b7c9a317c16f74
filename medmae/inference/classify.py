"""Classification: sigmoid probabilities per finding over a loader of images."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from medmae.devices import autocast
from medmae.inference.segment import output_probabilities
from medmae.tasks import TaskSpec


@torch.no_grad()
def classify(
    model: nn.Module, loader: DataLoader, task: TaskSpec, precision: str, device: torch.device
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Probabilities ``[N, F]``, targets ``[N, F]`` and image ids over ``loader``."""
    model.eval()
    probabilities, targets, ids = [], [], []
    for batch in tqdm(loader, desc="classifying", unit="batch", leave=False, disable=None):
        with autocast(precision, device):
            logits = model(torch.as_tensor(batch["image"]).to(device))
        probabilities.append(output_probabilities(task, logits.float()).cpu().numpy())
        targets.append(np.asarray(batch["label"]))
        ids += list(batch["case_id"])
    model.train()
    if not probabilities:  # an empty shard of a small validation part
        return np.zeros((0, len(task.class_names))), np.zeros((0, len(task.class_names))), []
    return np.concatenate(probabilities), np.concatenate(targets), ids
