"""Evaluating a split's part: predictions on each image's grid, scored as ``medmae score`` scores them."""

from __future__ import annotations

import logging

import pandas as pd
import pytest

from medmae.errors import UserError
from medmae.inference.evaluate import evaluate


def test_the_test_part_is_predicted_and_scored(demo_root, demo_checkpoint, tmp_path):
    summary, notes, written = evaluate(
        str(demo_checkpoint), "demo", str(demo_root), None, None, "test", str(tmp_path / "out"), progress=False
    )
    assert list(summary["class"]) == ["liver", "spleen", "right_kidney", "left_kidney", "foreground mean"]
    per_case = pd.read_csv(tmp_path / "out" / "per_case.csv")
    assert set(per_case["case_id"]) == {"img0006"} and per_case["dsc"].dropna().between(0, 1).all()
    assert (
        notes[0].startswith("task demo: 1 cases of the test part") and written[0] == tmp_path / "out" / "per_case.csv"
    )


def test_the_default_output_is_beside_the_checkpoints_folder_and_the_task_must_match(demo_root, demo_checkpoint):
    with pytest.raises(UserError, match="trained on task demo, not msd_hippocampus"):
        evaluate(str(demo_checkpoint), "msd_hippocampus", str(demo_root), None, None, "val", None)
    evaluate(str(demo_checkpoint), "demo", str(demo_root), None, None, "val", None, progress=False)
    assert (demo_checkpoint.parent.parent / "evaluate_val" / "summary.csv").is_file()


def test_a_store_holding_every_test_case_is_read_and_the_scores_do_not_change(
    demo_root, demo_checkpoint, tmp_path, caplog
):
    from medmae.cli import main

    caplog.set_level(logging.INFO, logger="medmae")
    chain, _, _ = evaluate(str(demo_checkpoint), "demo", str(demo_root), None, None, "test", str(tmp_path / "chain"))
    assert "from the store" not in caplog.text  # fine-tuning stored its training and validation cases only
    assert main(["data", "preprocess", "--task", "demo", "--data-root", str(demo_root), "--quiet"]) == 0
    stored, _, _ = evaluate(str(demo_checkpoint), "demo", str(demo_root), None, None, "test", str(tmp_path / "store"))
    assert "reading the 1 preprocessed cases from the store" in caplog.text
    pd.testing.assert_frame_equal(chain, stored)
