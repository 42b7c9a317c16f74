"""Classification over a loader: a probability per finding in [0, 1], the targets and ids as given."""

from __future__ import annotations

import numpy as np
import torch

from medmae.inference.classify import classify
from medmae.models import create_model
from medmae.tasks import load_task


def test_probabilities_targets_and_ids_come_back_in_loader_order():
    task = load_task("chestxray14")
    model = create_model("vit_tiny_patch16_2d_cls", img_size=32, num_classes=len(task.findings))
    targets = torch.randint(0, 2, (5, len(task.findings))).float()
    batches = [
        {"image": torch.randn(3, 1, 32, 32), "label": targets[:3], "case_id": ["a", "b", "c"]},
        {"image": torch.randn(2, 1, 32, 32), "label": targets[3:], "case_id": ["d", "e"]},
    ]
    probabilities, seen, ids = classify(model, batches, task, "fp32", torch.device("cpu"))
    assert probabilities.shape == (5, 14) and ((probabilities > 0) & (probabilities < 1)).all()
    assert np.array_equal(seen, targets.numpy()) and ids == ["a", "b", "c", "d", "e"]
    assert model.training  # put back in training mode


def test_an_empty_shard_gives_empty_arrays():
    task = load_task("chestxray14")
    model = create_model("vit_tiny_patch16_2d_cls", img_size=32, num_classes=len(task.findings))
    probabilities, targets, ids = classify(model, [], task, "fp32", torch.device("cpu"))
    assert probabilities.shape == targets.shape == (0, 14) and ids == []
