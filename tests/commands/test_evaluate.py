"""``medmae evaluate`` from the command line: the summary table, the files written, and refusals."""

from __future__ import annotations

import json
import logging
import shutil

from medmae.checkpoint import load_checkpoint
from medmae.cli import main
from tests.helpers import convert_image


def test_evaluate_prints_the_summary_and_what_it_wrote(capsys, demo_root, demo_checkpoint, tmp_path):
    output = tmp_path / "evaluation"
    argv = ["evaluate", "--task", "demo", "--data-root", str(demo_root), "--checkpoint", str(demo_checkpoint)]
    assert main([*argv, "--output-dir", str(output), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "note: task demo: 1 cases of the test part" in out and "foreground mean" in out
    assert f"wrote {output / 'per_case.csv'}, {output / 'summary.csv'}" in out
    assert sorted(p.name for p in (output / "predictions").iterdir()) == ["img0006.nii.gz"]


def test_a_checkpoint_of_another_task_is_refused(capsys, demo_root, demo_checkpoint, tmp_path):
    argv = ["evaluate", "--task", "btcv", "--data-root", str(demo_root), "--checkpoint", str(demo_checkpoint)]
    assert main([*argv, "--output-dir", str(tmp_path / "out")]) == 2
    assert "trained on task demo, not btcv" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cases_the_checkpoint_trained_on_are_refused_or_warned_about(
    capsys, caplog, demo_root, demo_checkpoint, tmp_path
):
    checkpoint = tmp_path / "run" / "checkpoints" / "best.pt"
    checkpoint.parent.mkdir(parents=True)
    shutil.copy(demo_checkpoint, checkpoint)  # trained on the demo's datalist split
    assert load_checkpoint(checkpoint)["cases"] == {
        "train": ["img0001", "img0002", "img0004", "img0005"],
        "validation": ["img0003"],
    }
    argv = ["evaluate", "--task", "demo", "--data-root", str(demo_root), "--checkpoint", str(checkpoint), "--quiet"]
    assert main([*argv, "--fold", "1"]) == 2
    err = capsys.readouterr().err
    assert "test cases of split fold1 were in the training or validation part of split datalist" in err
    assert (
        "evaluate on --split datalist, or pass --allow-seen-cases" in err
        and not (tmp_path / "run" / "evaluate_fold1_test").exists()
    )
    caplog.set_level(logging.WARNING, logger="medmae")
    assert main([*argv, "--fold", "1", "--allow-seen-cases"]) == 0
    assert "WARNING:" in caplog.text and "their scores are not a test of the model" in caplog.text
    assert main(argv) == 0
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "checkpoints",
        "evaluate_fold1_test",
        "evaluate_test",
    ]


def test_a_data_set_of_nrrd_files_is_evaluated_with_nrrd_predictions(capsys, demo_root, demo_checkpoint, tmp_path):
    root = tmp_path / "nrrd"
    datalist = json.loads((demo_root / "dataset_0.json").read_text())
    for part in ("training", "validation"):
        for entry in datalist[part]:
            for key in ("image", "label"):
                target = root / entry[key].replace(".nii.gz", ".nrrd")
                target.parent.mkdir(parents=True, exist_ok=True)
                convert_image(demo_root / entry[key], target)
                entry[key] = entry[key].replace(".nii.gz", ".nrrd")
    (root / "dataset_0.json").write_text(json.dumps(datalist))
    output = tmp_path / "evaluation"
    argv = ["evaluate", "--task", "demo", "--data-root", str(root), "--checkpoint", str(demo_checkpoint)]
    assert main([*argv, "--output-dir", str(output), "--quiet"]) == 0, capsys.readouterr().err
    assert sorted(p.name for p in (output / "predictions").iterdir()) == ["img0006.nrrd"]
    assert (output / "per_case.csv").is_file()
