"""Paired statistics on cases with known answers: a known shift, ties, all-equal scores, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import wilcoxon

from medmae.evaluation.statistics import bootstrap_mean_interval, paired_comparison


def test_a_constant_shift_is_found_exactly_and_is_significant():
    rng = np.random.default_rng(0)
    b = rng.uniform(0.6, 0.9, size=40)
    result = paired_comparison(b + 0.02, b)
    assert result.mean_difference == pytest.approx(0.02)
    assert result.ci_low == pytest.approx(0.02) and result.ci_high == pytest.approx(0.02)
    assert (result.wins, result.losses, result.ties, result.cases) == (40, 0, 0, 40)
    assert result.p_wilcoxon < 1e-6  # 40 wins of 40


def test_a_noisy_shift_lies_inside_its_interval_and_zero_outside():
    rng = np.random.default_rng(1)
    b = rng.uniform(0.6, 0.9, size=200)
    a = b + 0.03 + rng.normal(0, 0.02, size=200)
    result = paired_comparison(a, b)
    assert result.ci_low < 0.03 < result.ci_high and result.ci_low > 0
    assert result.p_wilcoxon < 1e-10
    half_width = 1.96 * np.std(a - b, ddof=1) / np.sqrt(200)  # the normal interval, for comparison
    assert result.ci_high - result.ci_low == pytest.approx(2 * half_width, rel=0.1)


def test_no_difference_in_either_direction_gives_p_one_and_an_interval_around_zero():
    b = np.full(6, 0.8)
    a = b + np.array([0.1, -0.1, 0.2, -0.2, 0.0, 0.0])  # symmetric, with two ties
    result = paired_comparison(a, b)
    assert result.mean_difference == pytest.approx(0.0, abs=1e-12)
    assert (result.wins, result.losses, result.ties) == (2, 2, 2)
    assert result.p_wilcoxon == pytest.approx(1.0)
    assert result.ci_low < 0 < result.ci_high


def test_ties_are_dropped_before_the_signed_rank_test():
    differences = np.array([0.0, 0.0, 0.0, 0.05, 0.07, -0.01, 0.04, 0.09, 0.02, 0.03])
    result = paired_comparison(differences, np.zeros(10))
    assert result.ties == 3
    assert result.p_wilcoxon == pytest.approx(wilcoxon(differences[differences != 0]).pvalue)


def test_all_equal_scores_give_zero_difference_and_p_one():
    scores = np.linspace(0.5, 0.9, 12)
    result = paired_comparison(scores, scores.copy())
    assert (result.mean_difference, result.ci_low, result.ci_high) == (0.0, 0.0, 0.0)
    assert result.p_wilcoxon == 1.0 and result.ties == 12


def test_the_bootstrap_is_seeded_and_resamples_cases():
    values = np.arange(10.0)
    assert bootstrap_mean_interval(values, seed=3) == bootstrap_mean_interval(values, seed=3)
    low, high = bootstrap_mean_interval(values)
    assert low < 4.5 < high and low >= 0 and high <= 9


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [([0.5, 0.6], [0.5], "same non-zero length"), ([], [], "same non-zero length"), ([np.nan], [0.5], "finite")],
)
def test_bad_pairs_are_refused(a, b, message):
    with pytest.raises(ValueError, match=message):
        paired_comparison(a, b)
