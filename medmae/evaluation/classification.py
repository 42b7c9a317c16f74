"""Multi-label classification metrics: per-finding ROC AUC by ranks, and the macro mean over the
findings where both classes are present (a finding with no positive or no negative case is undefined,
listed, and left out of the mean)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import rankdata


def roc_auc(scores: np.ndarray, targets: np.ndarray) -> float:
    """Area under the ROC curve by the Mann-Whitney statistic with average ranks for ties: the chance
    that a random positive scores above a random negative, ties counting one half. NaN if one class is
    absent."""
    targets = np.asarray(targets).astype(bool)
    n_pos, n_neg = int(targets.sum()), int((~targets).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[targets].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at every distinct threshold, from (0, 0) to (1, 1)."""
    targets = np.asarray(targets).astype(bool)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    scores, targets = np.asarray(scores)[order], targets[order]
    last_of_ties = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1]
    tp, fp = np.cumsum(targets)[last_of_ties], np.cumsum(~targets)[last_of_ties]
    return np.r_[0, fp / max(fp[-1], 1)], np.r_[0, tp / max(tp[-1], 1)]


def per_finding_auc(probabilities: np.ndarray, targets: np.ndarray, findings: Sequence[str]) -> pd.DataFrame:
    """One row per finding: ``finding, auc, n_positive, n_negative, defined``.

    Args:
        probabilities, targets: ``[N, F]`` scores and 0/1 labels.
    """
    if not np.isin(targets, (0, 1)).all():
        raise ValueError("targets must be 0 or 1 (uncertain labels such as -1 need a rule of their own first)")
    if not np.isfinite(probabilities).all():
        bad = [finding for k, finding in enumerate(findings) if not np.isfinite(probabilities[:, k]).all()]
        raise ValueError(f"non-finite scores for findings {bad}")
    rows = []
    for k, finding in enumerate(findings):
        auc = roc_auc(probabilities[:, k], targets[:, k])
        positives = int(targets[:, k].sum())
        rows.append(
            {
                "finding": finding,
                "auc": auc,
                "n_positive": positives,
                "n_negative": len(targets) - positives,
                "defined": not np.isnan(auc),
            }
        )
    return pd.DataFrame(rows)


def macro_auc(table: pd.DataFrame) -> tuple[float, list[str]]:
    """The mean AUC over defined findings, and the findings left out (one class absent)."""
    return float(table.loc[table["defined"], "auc"].mean()), table.loc[~table["defined"], "finding"].tolist()
