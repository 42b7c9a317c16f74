"""``medmae score`` on real and synthetic label maps: reports, the empty rule, grids, matching, exit codes."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medmae.cli import main
from medmae.evaluation.metrics import score_masks
from tests.helpers import save_reoriented, shared


def score(capsys, *args):
    code = main(["score", "--quiet", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out + out.err


def resave(path, array=None, affine=None):
    image = nib.load(path)
    nib.save(
        nib.Nifti1Image(
            np.asarray(image.dataobj) if array is None else array, image.affine if affine is None else affine
        ),
        path,
    )


def brain_set(root, labels):
    root.mkdir()
    for k, label in enumerate(labels):
        nib.save(nib.Nifti1Image(label.astype(np.uint8), np.eye(4)), root / f"BRATS_{k:03d}.nii.gz")
    return root


def test_two_copies_of_the_real_btcv_label_score_perfectly(capsys, tmp_path):
    root = shared("btcv_layout_sample")
    shutil.copytree(root / "labelsTr", tmp_path / "pred")
    code, out = score(
        capsys,
        "--task",
        "btcv",
        "--pred",
        tmp_path / "pred",
        "--ref",
        root / "labelsTr",
        "--images",
        root / "imagesTr",
        "--output-dir",
        tmp_path / "out",
    )
    assert code == 0, out
    per_case = pd.read_csv(tmp_path / "out" / "per_case.csv")
    assert per_case.columns.tolist()[:10] == [
        "case_id",
        "class",
        "dsc",
        "hd95_mm",
        "tp",
        "fp",
        "fn",
        "n_ref",
        "n_pred",
        "spacing",
    ]
    present = per_case[per_case["class"] != "esophagus"]
    assert len(present) == 12 and (present["dsc"] == 1.0).all() and (present["hd95_mm"] == 0.0).all()
    assert (present["fp"] == 0).all() and (present["spacing"] == "3x3x3").all()
    esophagus = per_case[per_case["class"] == "esophagus"].iloc[0]
    assert np.isnan(esophagus["dsc"]) and np.isnan(esophagus["hd95_mm"]) and esophagus["empty"] == "both"
    summary = pd.read_csv(tmp_path / "out" / "summary.csv").set_index("class")  # a plain CSV
    assert summary.loc["foreground mean", "dsc_mean"] == 1.0 and summary.loc["eight_organ_mean", "dsc_mean"] == 1.0
    assert summary.loc["esophagus", "dsc_undefined"] == 1
    assert "empty masks: both empty -> DSC and HD95 undefined" in (tmp_path / "out" / "summary_notes.txt").read_text()
    assert (tmp_path / "out" / "figures" / "best_worst.png").stat().st_size > 10_000


def test_pairs_on_different_grids_or_missing_exit_2_naming_the_case(capsys, demo_root, tmp_path):
    refs = demo_root / "labelsTr"
    shutil.copytree(refs, tmp_path / "pred")
    resave(tmp_path / "pred" / "label0002.nii.gz", affine=np.diag([3.0, 3.0, 3.0, 1.0]))
    resave(tmp_path / "pred" / "label0004.nii.gz", array=np.zeros((64, 64, 40), np.uint8))
    (tmp_path / "pred" / "label0005.nii.gz").unlink()
    code, out = score(capsys, "--task", "demo", "--pred", tmp_path / "pred", "--ref", refs)
    assert code == 2 and "Traceback" not in out
    assert "label0002: prediction affine differs" in out
    assert "label0004: prediction shape (64, 64, 40) differs from reference shape (64, 64, 48)" in out
    assert "label0005: no prediction in" in out
    assert not (tmp_path / "pred_scores").exists()  # nothing written


def test_empty_predictions_count_at_the_image_diagonal_or_the_given_penalty(capsys, demo_root, tmp_path):
    refs = demo_root / "labelsTr"
    shutil.copytree(refs, tmp_path / "pred")
    label = np.asarray(nib.load(refs / "label0001.nii.gz").dataobj)
    resave(tmp_path / "pred" / "label0001.nii.gz", array=np.where(label == 2, 0, label).astype(np.uint8))  # no spleen
    shifted = np.roll(np.asarray(nib.load(refs / "label0003.nii.gz").dataobj), 2, axis=0)
    resave(tmp_path / "pred" / "label0003.nii.gz", array=shifted)
    image = nib.load(refs / "label0001.nii.gz")
    diagonal = float(np.linalg.norm((np.array(image.shape) - 1) * np.array(image.header.get_zooms())))
    for extra, expected in (((), diagonal), (("--hd95-penalty", 373.13), 373.13)):
        code, out = score(
            capsys,
            "--task",
            "demo",
            "--pred",
            tmp_path / "pred",
            "--ref",
            refs,
            "--output-dir",
            tmp_path / "out",
            *extra,
        )
        assert code == 0, out
        per_case = pd.read_csv(tmp_path / "out" / "per_case.csv").set_index(["case_id", "class"])
        spleen = per_case.loc[("label0001", "spleen")]
        assert spleen["dsc"] == 0 and spleen["empty"] == "prediction" and spleen["hd95_penalised"]
        assert spleen["hd95_mm"] == pytest.approx(expected, rel=1e-5) == spleen["hd95_penalty_mm"]
        liver = per_case.loc[("label0003", "liver")]
        assert 0.5 < liver["dsc"] < 1 and 0 < liver["hd95_mm"] <= 6.0  # moved by 2 voxels of 3 mm: at most 6 mm
        reference = np.asarray(nib.load(refs / "label0003.nii.gz").dataobj) == 1
        assert liver["hd95_mm"] == pytest.approx(score_masks(shifted == 1, reference, (3.0, 3.0, 3.0)).hd95_mm)
        summary = pd.read_csv(tmp_path / "out" / "summary.csv", comment="#").set_index("class")
        assert summary.loc["spleen", "hd95_penalised"] == 1 and summary.loc["spleen", "hd95_mm_undefined"] == 0
        assert summary.loc["spleen", "hd95_mm_mean"] == pytest.approx(
            per_case.xs("spleen", level="class")["hd95_mm"].mean(), rel=1e-5
        )  # the miss is in the mean


def test_label_values_outside_the_task_exit_2(capsys, demo_root, tmp_path):
    shutil.copytree(demo_root / "labelsTr", tmp_path / "pred")
    resave(tmp_path / "pred" / "label0001.nii.gz", array=np.full((64, 64, 48), 7, np.uint8))
    code, out = score(capsys, "--task", "demo", "--pred", tmp_path / "pred", "--ref", demo_root / "labelsTr")
    assert code == 2 and "label0001.nii.gz: case label0001: label values [7] outside" in out


def test_prediction_shape_orientation_and_image_problems_exit_2(capsys, demo_root, tmp_path):
    refs = demo_root / "labelsTr"
    shutil.copytree(refs, tmp_path / "pred")
    label = np.asarray(nib.load(refs / "label0001.nii.gz").dataobj)
    resave(tmp_path / "pred" / "label0001.nii.gz", array=np.stack([label == k for k in range(5)], -1).astype(np.uint8))
    flipped = nib.load(refs / "label0002.nii.gz")
    lps = flipped.affine @ np.diag([-1.0, -1.0, 1.0, 1.0])
    nib.save(nib.Nifti1Image(np.asarray(flipped.dataobj), lps), tmp_path / "pred" / "label0002.nii.gz")
    shifted = nib.load(refs / "label0003.nii.gz").affine.copy()
    shifted[:3, 3] += 0.01  # 10 micrometres: more than the 1e-3 mm tolerance
    resave(tmp_path / "pred" / "label0003.nii.gz", affine=shifted)
    code, out = score(
        capsys, "--task", "demo", "--pred", tmp_path / "pred", "--ref", refs, "--images", tmp_path / "pred"
    )
    assert code == 2
    assert "label0001: prediction shape (64, 64, 48, 5) is not a 3D label map with one channel" in out
    assert "label0002: prediction axes run LPS, the reference's RAS" in out
    assert "label0003: prediction affine differs from the reference affine by up to 0.01 mm" in out
    assert not (tmp_path / "pred_scores").exists()
    (tmp_path / "pred" / "label0001.nii.gz.bak").write_text("ignored")
    shutil.copy(refs / "label0004.nii.gz", tmp_path / "pred" / "label0004.nii")
    code, out = score(capsys, "--task", "demo", "--pred", tmp_path / "pred", "--ref", refs)
    assert code == 2 and "two files for case label0004: label0004.nii and label0004.nii.gz" in out


def test_every_case_with_bad_values_is_named_and_nothing_written(capsys, demo_root, tmp_path):
    shutil.copytree(demo_root / "labelsTr", tmp_path / "pred")
    shutil.copytree(demo_root / "labelsTr", tmp_path / "ref")
    resave(tmp_path / "pred" / "label0001.nii.gz", array=np.full((64, 64, 48), 7, np.uint8))
    resave(tmp_path / "ref" / "label0003.nii.gz", array=np.full((64, 64, 48), 9, np.uint8))
    code, out = score(capsys, "--task", "demo", "--pred", tmp_path / "pred", "--ref", tmp_path / "ref")
    assert code == 2 and "label0001.nii.gz: case label0001: label values [7]" in out
    assert "ref/label0003.nii.gz: case label0003: label values [9]" in out
    assert not (tmp_path / "pred_scores").exists()


def test_msd_brain_scores_the_three_regions(capsys, tmp_path):
    ref = np.zeros((20, 20, 12), np.uint8)
    ref[4:16, 4:16, 2:10] = 1  # edema
    ref[7:13, 7:13, 4:8] = 2  # non-enhancing core
    ref[9:11, 9:11, 5:7] = 3  # enhancing
    pred = np.where(ref == 2, 1, ref)  # the core called edema: whole tumour still perfect
    brain_set(tmp_path / "ref", [ref])
    brain_set(tmp_path / "pred", [pred])
    code, out = score(
        capsys,
        "--task",
        "msd_brain",
        "--pred",
        tmp_path / "pred",
        "--ref",
        tmp_path / "ref",
        "--output-dir",
        tmp_path / "out",
    )
    assert code == 0, out
    per_case = pd.read_csv(tmp_path / "out" / "per_case.csv").set_index("class")
    assert per_case.index.tolist() == ["whole_tumour", "tumour_core", "enhancing_tumour"]
    assert per_case.loc["whole_tumour", "dsc"] == 1.0 and per_case.loc["enhancing_tumour", "dsc"] == 1.0
    core = (ref >= 2).sum()
    assert per_case.loc["tumour_core", "dsc"] == pytest.approx(
        2 * 8 / (core + 8), rel=1e-5
    )  # CSV: 6 digits; only ET left


def test_default_output_folder_and_figure_rows(capsys, demo_root, tmp_path, monkeypatch):
    shutil.copytree(demo_root / "labelsTr", tmp_path / "pred")
    monkeypatch.chdir(tmp_path / "pred")
    code, out = score(capsys, "--task", "demo", "--pred", ".", "--ref", demo_root / "labelsTr")
    assert code == 0 and (tmp_path / "pred_scores" / "summary.csv").is_file()
    assert "best_worst.png" in out


def test_missing_predictions_are_refused_unless_allowed_then_listed(capsys, demo_root, tmp_path):
    refs = demo_root / "labelsTr"
    shutil.copytree(refs, tmp_path / "pred")
    for case in ("label0005", "label0006"):
        (tmp_path / "pred" / f"{case}.nii.gz").unlink()
    code, out = score(capsys, "--task", "demo", "--pred", tmp_path / "pred", "--ref", refs)
    assert code == 2 and "label0005: no prediction in" in out and "label0006: no prediction in" in out
    code, out = score(capsys, "--task", "demo", "--pred", tmp_path / "pred", "--ref", refs, "--allow-missing")
    assert code == 0 and "note: 2 references have no prediction and are not scored: label0005, label0006" in out
    per_case = pd.read_csv(tmp_path / "pred_scores" / "per_case.csv", comment="#")
    assert sorted(per_case["case_id"].unique()) == ["label0001", "label0002", "label0003", "label0004"]
    empty = tmp_path / "none"
    empty.mkdir()
    (empty / "other.nii.gz").write_bytes((refs / "label0001.nii.gz").read_bytes())
    code, out = score(capsys, "--task", "demo", "--pred", empty, "--ref", refs, "--allow-missing")
    assert code == 2 and "no reference of" in out and "has a prediction in" in out


def test_a_prediction_stored_in_another_orientation_of_the_reference_s_grid_scores_as_itself(
    capsys, demo_root, tmp_path
):
    refs = demo_root / "labelsTr"
    shutil.copytree(refs, tmp_path / "pred")
    for case, codes in (("label0002", "PLS"), ("label0003", "SLP")):
        save_reoriented(refs / f"{case}.nii.gz", tmp_path / "pred" / f"{case}.nii.gz", codes)
    code, out = score(
        capsys, "--task", "demo", "--pred", tmp_path / "pred", "--ref", refs, "--images", tmp_path / "pred"
    )
    assert code == 0, out
    per_case = pd.read_csv(tmp_path / "pred_scores" / "per_case.csv", comment="#")
    present = per_case[per_case["n_ref"] > 0]
    assert set(present["case_id"]) >= {"label0002", "label0003"}
    assert (present["dsc"] == 1.0).all() and (present["hd95_mm"] == 0.0).all() and (present["fp"] == 0).all()
