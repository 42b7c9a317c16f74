"""Reports: the summary's means, medians, undefined counts and groups; the classification report's files;
every CSV plain, its notes beside it."""

from __future__ import annotations

import csv
import math

import numpy as np
import pandas as pd
import pytest

from medmae.evaluation.classification import per_finding_auc
from medmae.evaluation.metrics import score_masks
from medmae.evaluation.reports import notes_path, per_case_row, summarise, write_classification_report, write_csv
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


def test_a_missed_class_raises_the_mean_hd95_and_is_counted():
    """A model that misses a class on one case must not get a better mean HD95 than one that finds it
    badly: the case counts at its penalty (the image diagonal) and the summary says how many did."""
    task = load_task("msd_hippocampus")
    ref = np.zeros((20, 20, 20), bool)
    ref[5:12, 5:12, 5:12] = True
    found_badly = np.roll(ref, 4, axis=0)
    rows = [
        per_case_row(case, "anterior", score_masks(pred, ref, (1.0, 1.0, 1.0)), (1.0, 1.0, 1.0))
        for case, pred in (("a", ref), ("b", found_badly), ("c", np.zeros_like(ref)))
    ]
    rows += [{**row, "class": "posterior"} for row in rows]
    summary = summarise(pd.DataFrame(rows), task).set_index("class")
    diagonal = np.sqrt(3 * 19.0**2)
    assert summary.loc["anterior", "hd95_mm_mean"] == pytest.approx((0.0 + 4.0 + diagonal) / 3)
    assert summary.loc["anterior", "hd95_penalised"] == 1 and summary.loc["anterior", "hd95_mm_undefined"] == 0
    assert summary.loc["foreground mean", "hd95_penalised"] == 2
    without_the_miss = summarise(pd.DataFrame(rows[:2] + rows[3:5]), task).set_index("class")
    assert summary.loc["anterior", "hd95_mm_mean"] > without_the_miss.loc["anterior", "hd95_mm_mean"]


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


def test_a_report_is_a_plain_csv_and_its_notes_lie_beside_it(tmp_path):
    """pandas (no ``comment=``), R and spreadsheets read the first line as the header."""
    table = pd.DataFrame({"class": ["liver", "foreground mean"], "dsc_mean": [0.9, 0.85]})
    path = write_csv(table, tmp_path / "summary.csv", ["task demo: 4 cases", "std: ddof 1"])
    with path.open(newline="") as handle:
        assert next(csv.reader(handle)) == ["class", "dsc_mean"]
    assert pd.read_csv(path).equals(table)
    assert notes_path(path) == tmp_path / "summary_notes.txt"
    assert notes_path(path).read_text() == "task demo: 4 cases\nstd: ddof 1\n"
    write_csv(table, tmp_path / "per_case.csv")
    assert not (tmp_path / "per_case_notes.txt").exists()  # no notes, no file
    write_csv(table, path)
    assert not notes_path(path).exists()  # a report written again without notes keeps none of the earlier ones
