"""``medmae evaluate`` from the command line: the summary table, the files written, and refusals."""

from __future__ import annotations

import json
import logging
import shutil

from medmae.checkpoint import load_checkpoint
from medmae.cli import main
from tests.helpers import TINY, convert_image, demo_run


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
    assert "1 of the 1 test cases of split fold1 were seen by" in err
    assert "img0003: picked the weights on (split datalist)" in err
    assert "or pass --allow-seen-cases" in err and not (tmp_path / "run" / "evaluate_fold1_test").exists()
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


def test_seen_cases_are_found_by_id_and_by_file_whatever_the_split_is_called(
    capsys, demo_root, demo_checkpoint, tmp_path
):
    """A data root whose split keeps the checkpoint's name (``datalist``) but whose test part holds a
    training case, and one whose test case is a training image under another name: both refused."""
    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    datalist = json.loads((root / "dataset_0.json").read_text())
    datalist["training"], datalist["validation"] = (
        datalist["training"][:1] + datalist["validation"],
        [datalist["training"][1]],
    )
    (root / "dataset_0.json").write_text(json.dumps(datalist))
    argv = ["evaluate", "--task", "demo", "--data-root", str(root), "--checkpoint", str(demo_checkpoint), "--quiet"]
    assert main([*argv, "--output-dir", str(tmp_path / "out")]) == 2
    assert "img0002: fine-tuned on (split datalist)" in capsys.readouterr().err
    for suffix in ("img", "label"):
        shutil.copy(
            root / "imagesTr/img0002.nii.gz" if suffix == "img" else root / "labelsTr/label0002.nii.gz",
            root / ("imagesTr/img0099.nii.gz" if suffix == "img" else "labelsTr/label0099.nii.gz"),
        )
    datalist["validation"] = [{"image": "imagesTr/img0099.nii.gz", "label": "labelsTr/label0099.nii.gz"}]
    (root / "dataset_0.json").write_text(json.dumps(datalist))
    assert main([*argv, "--output-dir", str(tmp_path / "out")]) == 2
    assert "img0099: fine-tuned on (split datalist)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_images_the_encoder_was_pretrained_on_are_refused_or_noted(capsys, demo_root, tmp_path):
    """An MAE pretrained with ``--images imagesTr`` (the test image among them), fine-tuned and evaluated:
    the fine-tuned checkpoint carries what its encoder saw, and evaluate refuses the test case; with
    ``--allow-seen-cases`` it scores it and says so in the summary's notes."""
    one_step = [
        f for key in ("train.epochs=1", "optim.warmup_epochs=0", "train.steps_per_epoch=1") for f in ("--set", key)
    ]
    mae, unetr = tmp_path / "mae", tmp_path / "unetr"
    pretrain = ["pretrain", "--task", "demo", "--images", str(demo_root / "imagesTr"), "--config", TINY]
    assert main([*pretrain, "--output-dir", str(mae), *one_step]) == 0
    mae_checkpoint = mae / "checkpoints" / "last.pt"
    assert "img0006" in load_checkpoint(mae_checkpoint)["pretrained_on"]["cases"]
    assert main(demo_run("finetune", demo_root, unetr, "--pretrained", str(mae_checkpoint), *one_step)) == 0
    record = load_checkpoint(unetr / "checkpoints" / "best.pt")["pretrained_on"]
    assert record["source"] == str(mae_checkpoint) and len(record["files"]) == len(record["cases"]) == 5
    capsys.readouterr()
    argv = [
        "evaluate",
        "--task",
        "demo",
        "--data-root",
        str(demo_root),
        "--checkpoint",
        str(unetr / "checkpoints" / "best.pt"),
    ]
    assert main([*argv, "--quiet"]) == 2
    assert f"img0006: its encoder has seen the image ({mae_checkpoint})" in capsys.readouterr().err
    assert main([*argv, "--quiet", "--allow-seen-cases"]) == 0
    assert "seen cases scored (--allow-seen-cases)" in capsys.readouterr().out


def test_a_case_that_only_shares_an_id_with_a_training_case_is_scored_with_a_note(
    capsys, demo_root, demo_checkpoint, tmp_path
):
    """Another cohort under the same task and split name: ``img0002`` there is another image."""
    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    shutil.copy(root / "imagesTr" / "img0006.nii.gz", root / "imagesTr" / "img0002.nii.gz")
    shutil.copy(root / "labelsTr" / "label0006.nii.gz", root / "labelsTr" / "label0002.nii.gz")
    datalist = json.loads((root / "dataset_0.json").read_text())
    datalist["validation"] = [{"image": "imagesTr/img0002.nii.gz", "label": "labelsTr/label0002.nii.gz"}]
    (root / "dataset_0.json").write_text(json.dumps(datalist))
    argv = ["evaluate", "--task", "demo", "--data-root", str(root), "--checkpoint", str(demo_checkpoint), "--quiet"]
    assert main([*argv, "--output-dir", str(tmp_path / "out")]) == 0
    assert (
        "note: img0002 has the id of a case the checkpoint fine-tuned on, but other images" in capsys.readouterr().out
    )


def test_a_fine_tuned_model_started_from_another_carries_what_that_one_saw(
    capsys, caplog, demo_root, demo_checkpoint, tmp_path
):
    """Fine-tune B from fine-tuned A: a test case that A trained on is refused when B is evaluated, and B's
    fine-tuning warns about it at its start."""
    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    datalist = json.loads((root / "dataset_0.json").read_text())
    datalist["validation"] = [datalist["training"].pop(1)]  # img0002, which A trained on, is B's test case
    (root / "dataset_0.json").write_text(json.dumps(datalist))
    one_step = [
        f for key in ("train.epochs=1", "optim.warmup_epochs=0", "train.steps_per_epoch=1") for f in ("--set", key)
    ]
    caplog.set_level(logging.WARNING, logger="medmae")
    assert main(demo_run("finetune", root, tmp_path / "b", "--pretrained", str(demo_checkpoint), *one_step)) == 0
    assert "1 of the 1 test cases of split datalist were among the images the encoder has seen (img0002)" in caplog.text
    capsys.readouterr()
    argv = [
        "evaluate",
        "--task",
        "demo",
        "--data-root",
        str(root),
        "--checkpoint",
        str(tmp_path / "b" / "checkpoints" / "best.pt"),
    ]
    assert main([*argv, "--quiet"]) == 2
    assert f"img0002: its encoder has seen the image ({demo_checkpoint})" in capsys.readouterr().err
