"""Reports: the summary's means, medians, undefined counts and groups; the classification report's files."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from medmae.evaluation.classification import per_finding_auc
from medmae.evaluation.reports import summarise, write_classification_report
from medmae.tasks import load_task


def test_report_keeps_each_probability_and_refuses_bad_inputs(tmp_path):
    rng = np.random.default_rng(1)
    probabilities, targets = rng.random((7, 2)), np.array([[0, 1], [1, 0]] * 3 + [[1, 1]])
    write_classification_report(tmp_path, list("abcdefg"), probabilities, targets, ["Mass", "Edema"])
    per_image = pd.read_csv(tmp_path / "per_image.csv")
    assert per_image["image_id"].tolist() == list("abcdefg")
    assert np.allclose(per_image[["Mass", "Edema"]].to_numpy(), probabilities, atol=1e-6)
    with pytest.raises(ValueError, match="targets must be 0 or 1"):
        per_finding_auc(probabilities, np.where(targets == 0, -1, targets), ["Mass", "Edema"])
    probabilities[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"non-finite scores for findings \['Edema'\]"):
        per_finding_auc(probabilities, targets, ["Mass", "Edema"])


def test_summary_means_skip_undefined_and_count_them():
    task = load_task("btcv")
    rows = []
    for case, dsc in (("a", 0.9), ("b", 0.7), ("c", float("nan"))):
        for k, name in enumerate(task.labels[1:]):
            rows.append(
                {
                    "case_id": case,
                    "class": name,
                    "dsc": dsc if k else float("nan"),
                    "hd95_mm": float("nan") if math.isnan(dsc) else 2.0,
                    "hd95_penalised": False,
                }
            )
    summary = summarise(pd.DataFrame(rows), task).set_index("class")
    assert summary.loc["right_kidney", "dsc_mean"] == pytest.approx(0.8)
    assert summary.loc["right_kidney", "dsc_undefined"] == 1 and summary.loc["right_kidney", "cases"] == 3
    assert summary.loc["right_kidney", "dsc_std"] == pytest.approx(np.std([0.9, 0.7], ddof=1))
    assert summary.loc["spleen", "dsc_undefined"] == 3 and np.isnan(summary.loc["spleen", "dsc_mean"])
    assert summary.loc["foreground mean", "dsc_mean"] == pytest.approx(0.8)  # spleen has no mean to count
    assert summary.loc["eight_organ_mean", "dsc_mean"] == pytest.approx(0.8)


def test_summary_median_class_means_and_group_coverage():
    task = load_task("btcv")
    rows = [
        {"case_id": c, "class": "liver", "dsc": d, "hd95_mm": 1.0, "hd95_penalised": False}
        for c, d in (("a", 0.9), ("b", 0.8), ("c", 0.1))
    ]
    rows += [{"case_id": "a", "class": "spleen", "dsc": 0.5, "hd95_mm": 3.0, "hd95_penalised": False}]
    summary = summarise(pd.DataFrame(rows), task).set_index("class")
    assert summary.loc["liver", "dsc_median"] == pytest.approx(0.8) and summary.loc[
        "liver", "dsc_mean"
    ] == pytest.approx(0.6)
    assert summary.loc["foreground mean", "dsc_mean"] == pytest.approx((0.6 + 0.5) / 2)  # class means, not pooled
    assert summary.loc["eight_organ_mean", "classes"] == "2 of 8"
    assert summary.loc["foreground mean", "classes"] == "2 of 13"


def test_btcv_eight_organ_group_is_the_literature_one():
    assert load_task("btcv").mean_groups == {
        "eight_organ_mean": (
            "spleen",
            "right_kidney",
            "left_kidney",
            "gallbladder",
            "liver",
            "stomach",
            "aorta",
            "pancreas",
        )
    }
