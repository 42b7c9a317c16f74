"""Postprocessing chosen on validation: the largest component is kept where it raises a class's mean DSC,
and only there; the decision is written, read back and applied."""

from __future__ import annotations

import numpy as np
import pytest

from medmae.errors import DataError
from medmae.evaluation.postprocessing import (
    choose_postprocessing,
    keep_largest,
    largest_component,
    read_decision,
    write_decision,
)
from medmae.tasks import load_task

TASK = load_task("demo")  # labels 1 liver, 2 spleen, 3 right kidney, 4 left kidney


def test_the_largest_component_is_kept_with_full_connectivity():
    mask = np.zeros((8, 8, 8), dtype=bool)
    mask[0:3, 0:3, 0:3] = True  # 27 voxels
    mask[3, 3, 3] = True  # touches the block at a corner only: the same component
    mask[6:8, 6:8, 6:8] = True  # 8 voxels apart
    kept = largest_component(mask)
    assert kept.sum() == 28 and not kept[6:, 6:, 6:].any()
    assert not largest_component(np.zeros((4, 4), dtype=bool)).any()


def test_only_the_named_classes_are_cut_and_what_is_cut_becomes_background():
    labels = np.zeros((10, 10, 10), dtype=np.uint8)
    labels[0:4, 0:4, 0:4], labels[8:10, 8:10, 8:10] = 1, 1  # liver: a block and a stray bit
    labels[5:7, 0:2, 0:2], labels[0:2, 8:10, 0:2] = 2, 2  # spleen: two bits, left alone
    cut = keep_largest(labels, TASK, ["liver"])
    assert (cut == 1).sum() == 64 and (cut[8:, 8:, 8:] == 0).all() and ((cut == 2) == (labels == 2)).all()


def test_a_class_is_chosen_only_where_its_mean_dsc_rises():
    ref = np.zeros((12, 12, 12), dtype=np.uint8)
    ref[0:4, 0:4, 0:4] = 1  # liver: one organ
    ref[6:8, 0:2, 0:2], ref[6:8, 8:10, 8:10] = 3, 3  # right kidney: two pieces in the reference
    pred = ref.copy()
    pred[10:12, 10:12, 10:12] = 1  # a stray liver blob: cutting it helps
    decision = choose_postprocessing(TASK, [(pred, ref), (pred, ref)])
    assert decision["largest_component"] == ["liver"] and decision["cases"] == 2
    liver = decision["per_class"]["liver"]
    assert liver["dsc_after"] == 1.0 and liver["dsc_before"] < 1.0
    kidney = decision["per_class"]["right_kidney"]
    assert kidney["dsc_after"] < kidney["dsc_before"] == 1.0  # cutting would lose a true piece
    assert decision["per_class"]["spleen"]["dsc_before"] is None  # absent everywhere: no evidence


def test_the_decision_is_written_and_read_back(tmp_path):
    path = write_decision({"largest_component": ["liver"], "per_class": {}, "cases": 3}, tmp_path / "post.json")
    assert read_decision(path) == ["liver"]
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DataError, match="unreadable postprocessing decision"):
        read_decision(tmp_path / "bad.json")
