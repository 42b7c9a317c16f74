"""Test-time averaging, as nnU-Net predicts: an ensemble of fine-tuned models (the folds of a
cross-validation) and mirroring (each prediction averaged over the flips of every spatial axis).

:class:`AveragedModel` averages the members' probabilities over members and flips and returns the logits
of that average (``log p`` for a softmax, ``logit p`` for sigmoids), so that the softmax or sigmoid every
caller applies (:func:`medmae.inference.segment.output_probabilities`) gives back the averaged
probabilities of each window (sliding windows blend logits, as they do for one model); inversion to the
image grid and saved probabilities work unchanged. nnU-Net v2 averages logits; medmae averages
probabilities, so that a confident member cannot outvote the others.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medmae.errors import UserError
from medmae.evaluation.postprocessing import read_decision

FOLDS = 5  # medmae.data.manifests.FOLDS: the folds of a cross-validation
SCORES = Path("validation") / "per_case.csv"  # a fold's validation scores, in its run folder
FINISHED = Path("validation") / "finished.json"  # written last: the fold is trained and scored
PROBABILITY_FLOOR = 1e-6  # averaged probabilities are kept this far from 0 and 1 (finite logits)


def mirror_flips(spatial_dims: int, lateral: bool = False) -> list[tuple[int, ...]]:
    """Every combination of spatial axes to flip, as dims of ``[B, C, *S]``, no flip first: ``2^d`` of them
    (8 in 3D, nnU-Net's mirroring over all axes). A ``lateral`` task (left and right labels) never flips its
    first axis, as its training never does: a flipped body would swap the sides' labels."""
    axes = range(3 if lateral else 2, 2 + spatial_dims)
    return [combo for k in range(len(axes) + 1) for combo in itertools.combinations(axes, k)]


class AveragedModel(nn.Module):
    """The mean probabilities of ``members`` over the flips of ``mirror_flips`` (with ``mirror``), as logits.

    Args:
        members: fine-tuned models of one task, in eval mode, on one device.
        sigmoid: the task's outputs are sigmoids (regions, findings); else a softmax over classes.
        flips: the flips to average over (:func:`mirror_flips`; ``[()]``: none), batched: one forward per
            member on a batch holding every flip, so mirroring in 3D needs 8 times the window batch's memory
            (lower ``infer.sw_batch_size`` where that does not fit).

    Forward: ``[B, C, *S]`` -> ``[B, K, *S]`` (segmentation) or ``[B, K]`` (classification), float32 logits
    whose softmax (sigmoid) is the mean of the members' softmax (sigmoid) outputs over members and flips,
    held within ``[1e-6, 1 - 1e-6]`` so that the logits stay finite where sliding windows blend them.
    """

    def __init__(self, members: Sequence[nn.Module], sigmoid: bool, flips: Sequence[tuple[int, ...]] = ((),)):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.sigmoid = sigmoid
        self.flips = list(flips)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        inputs = torch.cat([x.flip(dims) if dims else x for dims in self.flips])
        total = 0.0
        for member in self.members:
            out = member(inputs).float()
            probabilities = torch.sigmoid(out) if self.sigmoid else torch.softmax(out, dim=1)
            for k, dims in enumerate(self.flips):
                part = probabilities[k * batch : (k + 1) * batch]
                total = total + (part.flip(dims) if dims else part)
        mean = (total / (len(self.members) * len(self.flips))).clamp(PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR)
        return torch.logit(mean) if self.sigmoid else mean.log()


def check_members(payloads: Sequence[dict[str, Any]], paths: Sequence[str | Path]) -> None:
    """Refuse, before anything runs, checkpoints that do not predict one task alike: every task record
    (name, labels, channels, spacing, intensity, ROI) must equal the first's; the error names the
    checkpoint and the keys that differ."""
    first = payloads[0]["task"]
    for payload, path in zip(payloads[1:], paths[1:]):
        record = payload["task"]
        differing = sorted(key for key in set(first) | set(record) if first.get(key) != record.get(key))
        if differing:
            shown = "; ".join(f"{key}: {record.get(key)!r} here, {first.get(key)!r} in {paths[0]}" for key in differing)
            raise UserError(f"{path}: cannot join an ensemble with {paths[0]}: its task differs ({shown})")


def fold_folder(parent: Path, fold: int) -> Path:
    """The run folder of cross-validation fold ``fold`` under ``parent``."""
    return parent / f"fold_{fold}"


def with_folds(checkpoints: Sequence[str]) -> list[str]:
    """``checkpoints`` with each cross-validation parent folder (:mod:`medmae.training.crossval`) replaced by
    the ``best.pt`` of its finished folds, in fold order; a UserError for a folder holding none."""
    expanded = []
    for checkpoint in checkpoints:
        parent = Path(checkpoint)
        if not (parent.is_dir() and any(parent.glob("fold_*"))):
            expanded.append(checkpoint)
            continue
        folds = [fold_folder(parent, k) for k in range(FOLDS)]
        found = [str(f / "checkpoints" / "best.pt") for f in folds if (f / FINISHED).is_file()]
        if not found:
            raise UserError(f"{parent}: a cross-validation folder with no finished fold (fold_<k>/{FINISHED})")
        expanded += found
    return expanded


def chosen_postprocessing(given: Sequence[str]) -> list[str]:
    """The classes cut to their largest component by the decision of the first cross-validation folder
    among ``given`` (``crossval/postprocessing.json``), none when no folder holds one."""
    for path in given:
        decision = Path(path) / "crossval" / "postprocessing.json"
        if decision.is_file():
            return read_decision(decision)
    return []
