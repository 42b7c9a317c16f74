"""Paired comparisons of two models scored on the same cases: the mean difference, its bootstrap confidence
interval and the Wilcoxon signed-rank test.

Both models' scores come per case (e.g. the mean foreground DSC of each test case, averaged over seeds
first so that each case counts once); the differences ``a - b`` are the unit of every figure here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import wilcoxon


@dataclass(frozen=True)
class PairedComparison:
    """``a - b`` over ``cases`` paired cases: mean, percentile-bootstrap interval, two-sided Wilcoxon p
    (zero differences dropped, as Wilcoxon proposed; 1.0 when every difference is zero), and how many
    cases ``a`` won, lost and tied."""

    cases: int
    mean_difference: float
    ci_low: float
    ci_high: float
    p_wilcoxon: float
    wins: int
    losses: int
    ties: int

    def as_row(self) -> dict[str, float | int]:
        return asdict(self)


def bootstrap_mean_interval(
    values: ArrayLike, confidence: float = 0.95, resamples: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of ``values`` ``[N]`` (cases resampled with replacement,
    ``resamples`` times, from a generator seeded with ``seed``)."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def paired_comparison(
    a: ArrayLike, b: ArrayLike, confidence: float = 0.95, resamples: int = 10_000, seed: int = 0
) -> PairedComparison:
    """Compare per-case scores ``a`` and ``b`` ``[N]`` (same cases, same order; finite).

    Raises:
        ValueError: the two differ in length, are empty or hold a non-finite score.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired scores must be two 1D arrays of the same non-zero length: {a.shape}, {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("paired scores must be finite: score a missed case (DSC 0), do not drop it")
    differences = a - b
    low, high = bootstrap_mean_interval(differences, confidence, resamples, seed)
    nonzero = differences[differences != 0]
    p = float(wilcoxon(nonzero).pvalue) if len(nonzero) else 1.0
    return PairedComparison(
        cases=len(differences),
        mean_difference=float(differences.mean()),
        ci_low=low,
        ci_high=high,
        p_wilcoxon=p,
        wins=int((differences > 0).sum()),
        losses=int((differences < 0).sum()),
        ties=int((differences == 0).sum()),
    )
