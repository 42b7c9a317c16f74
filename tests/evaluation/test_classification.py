"""AUC against a pairwise count with ties; a finding without positives is undefined and left out."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medmae.evaluation.classification import macro_auc, per_finding_auc, roc_auc, roc_curve
from medmae.evaluation.reports import write_classification_report


def mann_whitney(scores, targets):
    """Independent: count every (positive, negative) pair, ties one half."""
    pos, neg = scores[targets == 1], scores[targets == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_auc_equals_the_pairwise_count_with_ties(seed):
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 2, 200)
    scores = np.round(rng.random(200) + 0.3 * targets, 1)  # rounding makes many ties
    assert len(np.unique(scores)) < 30
    assert roc_auc(scores, targets) == pytest.approx(mann_whitney(scores, targets), abs=1e-12)
    fpr, tpr = roc_curve(scores, targets)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(scores, targets), abs=1e-12)


def test_a_finding_without_positives_is_undefined_and_left_out(tmp_path):
    rng = np.random.default_rng(0)
    targets = np.stack([rng.integers(0, 2, 50), np.zeros(50, int), rng.integers(0, 2, 50)], axis=1)
    probabilities = rng.random((50, 3))
    table = per_finding_auc(probabilities, targets, ["Mass", "Hernia", "Edema"])
    assert table["defined"].tolist() == [True, False, True] and np.isnan(table.loc[1, "auc"])
    assert table.loc[1, ["n_positive", "n_negative"]].tolist() == [0, 50]
    mean, undefined = macro_auc(table)
    assert mean == pytest.approx((table.loc[0, "auc"] + table.loc[2, "auc"]) / 2) and undefined == ["Hernia"]
    written, written_mean, _ = write_classification_report(
        tmp_path, [f"i{k}" for k in range(50)], probabilities, targets, ["Mass", "Hernia", "Edema"], ["seen: i3"]
    )
    assert written.equals(table) and written_mean == mean
    per_image = pd.read_csv(tmp_path / "per_image.csv")
    assert per_image.columns.tolist() == ["image_id", "Mass", "Hernia", "Edema"] and len(per_image) == 50
    text = (tmp_path / "per_finding_notes.txt").read_text()
    assert "macro AUC" in text and "over 2 findings" in text and "left out of the mean): Hernia" in text
    assert text.splitlines()[-1] == "seen: i3"  # evaluate's notes (seen cases scored) travel with the report
    assert pd.read_csv(tmp_path / "per_finding.csv")["finding"].tolist() == ["Mass", "Hernia", "Edema"]
    assert (tmp_path / "figures" / "roc.png").stat().st_size > 10_000
