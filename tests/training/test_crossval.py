"""Cross-validation: one run per fold, each scored on its validation fold, a summary over the folds, a
killed cross-validation going on at the fold it stopped in, and the parent folder predicting as the
ensemble of its folds."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from medmae.cli import main
from medmae.evaluation.postprocessing import write_decision
from medmae.training import crossval
from tests.helpers import demo_run


@pytest.mark.slow
def test_folds_run_resume_at_the_fold_that_stopped_and_predict_as_an_ensemble(tmp_path, demo_root, monkeypatch):
    parent = tmp_path / "cv"
    assert main(demo_run("finetune", demo_root, parent, "--folds", "0", "1")) == 0
    finished = {k: (parent / f"fold_{k}" / "checkpoints" / "best.pt").stat().st_mtime_ns for k in (0, 1)}
    scores = pd.read_csv(parent / "crossval" / "per_case.csv", comment="#")
    assert sorted(scores["fold"].unique()) == [0, 1] and scores["case_id"].nunique() == 2  # one case per fold
    run = crossval.finetune.run

    def killed_in_fold_3(request):
        if request.split.endswith("_cv3"):
            raise KeyboardInterrupt
        return run(request)

    monkeypatch.setattr(crossval.finetune, "run", killed_in_fold_3)
    assert main(demo_run("finetune", demo_root, parent, "--folds", "all")) == 130
    assert (parent / "fold_2" / "validation" / "per_case.csv").is_file() and not (parent / "fold_4").exists()
    monkeypatch.setattr(crossval.finetune, "run", run)
    assert main(demo_run("finetune", demo_root, parent, "--folds", "all")) == 0
    assert {k: (parent / f"fold_{k}" / "checkpoints" / "best.pt").stat().st_mtime_ns for k in (0, 1)} == finished
    scores = pd.read_csv(parent / "crossval" / "per_case.csv", comment="#")
    assert sorted(scores["fold"].unique()) == [0, 1, 2, 3, 4] and scores["case_id"].nunique() == 5
    summary = pd.read_csv(parent / "crossval" / "summary.csv", comment="#")
    assert "foreground mean" in set(summary["class"])
    evaluate = ["evaluate", "--task", "demo", "--data-root", str(demo_root), "--checkpoint", str(parent), "--quiet"]
    assert main(evaluate) == 0
    notes = (parent / "evaluate_datalist_test_ensemble5" / "summary_notes.txt").read_text()
    assert "ensemble of 5 checkpoints" in notes
    assert json.loads((parent / "crossval" / "postprocessing.json").read_text())["cases"] == 5
    write_decision({"largest_component": ["liver"]}, parent / "crossval" / "postprocessing.json")
    image = demo_root / "imagesTr" / "img0006.nii.gz"
    predict = ["predict", "--checkpoint", str(parent), "--input", str(image), "--output-dir", str(tmp_path / "p")]
    assert main([*predict, "--quiet"]) == 0
    liver = np.asarray(nib.load(tmp_path / "p" / "img0006.nii.gz").dataobj) == 1
    assert ndimage.label(liver, structure=np.ones((3, 3, 3)))[1] <= 1  # the chosen postprocessing was applied


def test_a_fold_finished_on_another_split_is_refused(tmp_path, demo_root, capsys):
    finished = tmp_path / "cv" / "fold_0" / "validation" / "finished.json"
    finished.parent.mkdir(parents=True)
    finished.write_text(json.dumps({"split": "fold3_cv0", "checkpoint": "best.pt"}))
    assert main(demo_run("finetune", demo_root, tmp_path / "cv", "--folds", "0")) == 2
    assert "fold 0 of split fold3_cv0, not datalist_cv0; use another --output-dir" in capsys.readouterr().err
