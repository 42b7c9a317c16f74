"""Test-time averaging: an ensemble of one model is that model, mirroring a flip-equivariant model changes
nothing, members are averaged in probability, mismatched checkpoints are refused, and predict and evaluate
take several checkpoints and --mirror."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from medmae.checkpoint import load_checkpoint, save_checkpoint
from medmae.cli import main
from medmae.errors import UserError
from medmae.inference.ensemble import AveragedModel, check_members, mirror_flips
from medmae.inference.predict import load_averaged, load_finetuned


class Threshold(nn.Module):
    """Per-voxel logits of the image against a threshold: every flip of the input flips the output."""

    def __init__(self, level: float):
        super().__init__()
        self.level = level

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.level - x[:, :1], x[:, :1] - self.level, 0.5 * x[:, :1]], dim=1)


class Lopsided(nn.Module):
    """Logits that depend on position along the first axis: not flip-equivariant."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(-2, 2, x.shape[2]).view(1, 1, -1, *([1] * (x.ndim - 3)))
        return torch.cat([x[:, :1] * ramp, -x[:, :1] * ramp], dim=1)


def unflipped(model: nn.Module, x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """The model's softmax on the flipped input, flipped back."""
    if not dims:
        return torch.softmax(model(x), dim=1)
    return torch.softmax(model(x.flip(dims)), dim=1).flip(dims)


def test_every_combination_of_axes_is_flipped_once():
    assert mirror_flips(3) == [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]
    assert len(mirror_flips(2)) == 4
    assert mirror_flips(3, lateral=True) == [(), (3,), (4,), (3, 4)]  # left and right labels: never axis 0


@pytest.mark.parametrize("sigmoid", [False, True])
def test_an_ensemble_of_one_model_is_that_model_and_mirroring_an_equivariant_model_changes_nothing(sigmoid):
    model, x = Threshold(0.2).eval(), torch.randn(2, 1, 8, 12, 6)
    expected = torch.sigmoid(model(x)) if sigmoid else torch.softmax(model(x), dim=1)
    for flips in ([()], mirror_flips(3)):
        out = AveragedModel([model], sigmoid, flips)(x)
        got = torch.sigmoid(out) if sigmoid else torch.softmax(out, dim=1)
        torch.testing.assert_close(got, expected, atol=2e-6, rtol=1e-5)  # probabilities kept 1e-6 from 0 and 1
        assert torch.isfinite(out).all()


def test_members_and_flips_are_averaged_in_probability():
    members, x = [Threshold(0.0), Threshold(1.0)], torch.randn(1, 1, 6, 4, 4)
    averaged = torch.softmax(AveragedModel(members, False)(x), dim=1)
    torch.testing.assert_close(averaged, sum(torch.softmax(m(x), dim=1) for m in members) / 2)
    lopsided = Lopsided()
    mirrored = torch.softmax(AveragedModel([lopsided], False, mirror_flips(3))(x), dim=1)
    by_hand = sum(unflipped(lopsided, x, dims) for dims in mirror_flips(3)) / 8
    torch.testing.assert_close(mirrored, by_hand)
    assert not torch.allclose(mirrored, torch.softmax(lopsided(x), dim=1))


def test_checkpoints_of_another_task_are_refused_naming_the_difference():
    first = {"task": {"name": "demo", "spacing": [1, 1, 1], "roi": [48, 48, 32]}}
    other = {"task": {"name": "demo", "spacing": [2, 2, 2], "roi": [48, 48, 32]}}
    check_members([first, first], ["a.pt", "b.pt"])
    with pytest.raises(
        UserError, match=r"b.pt: cannot join an ensemble with a.pt: its task differs \(spacing: \[2, 2, 2\]"
    ):
        check_members([first, other], ["a.pt", "b.pt"])


def test_predict_and_evaluate_take_an_ensemble_with_mirroring(demo_root, demo_checkpoint, tmp_path):
    payload = load_checkpoint(demo_checkpoint)
    with torch.no_grad():
        for tensor in payload["state_dict"].values():
            tensor.add_(0.01 * torch.randn_like(tensor) if tensor.is_floating_point() else 0)
    second = save_checkpoint(payload, tmp_path / "second.pt")
    model, payloads, task, _ = load_averaged([str(demo_checkpoint), str(second)], "cpu", mirror=True)
    assert isinstance(model, AveragedModel) and len(model.flips) == 4 and len(payloads) == 2  # demo: left, right
    single, _, _, _ = load_finetuned(str(demo_checkpoint), "cpu")
    assert not isinstance(single, AveragedModel)
    image = demo_root / "imagesTr" / "img0006.nii.gz"
    args = ["predict", "--checkpoint", str(demo_checkpoint), str(second), "--mirror", "--input", str(image)]
    assert main([*args, "--output-dir", str(tmp_path / "pred"), "--save-probabilities", "--quiet"]) == 0
    labels = nib.load(tmp_path / "pred" / "img0006.nii.gz")
    probabilities = np.load(tmp_path / "pred" / "img0006.npz")["probabilities"]
    assert labels.shape == nib.load(image).shape and probabilities.shape == (len(task.class_names), *labels.shape)
    np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, atol=1e-4)  # averaged softmax outputs sum to one
    np.testing.assert_array_equal(np.asarray(labels.dataobj), probabilities.argmax(axis=0))
    evaluate = ["evaluate", "--task", "demo", "--data-root", str(demo_root), "--mirror", "--quiet"]
    assert main([*evaluate, "--checkpoint", str(demo_checkpoint), str(second)]) == 0
    scores = demo_checkpoint.parent.parent / "evaluate_test_ensemble2_mirrored"  # never the single model's folder
    assert pd.read_csv(scores / "per_case.csv", comment="#")["dsc"].dropna().between(0, 1).all()
    notes = (scores / "summary_notes.txt").read_text()
    assert "ensemble of 2 checkpoints" in notes and "mirroring True" in notes
