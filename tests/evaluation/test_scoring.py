"""Scoring helpers: files matched by case id or final number, and the best/worst figure's rows."""

from __future__ import annotations

import matplotlib.text
import nibabel as nib
import numpy as np
import pandas as pd

from medmae.evaluation.scoring import pair_files


def test_files_match_by_id_or_by_their_final_number(tmp_path):
    refs = {
        "label0001": tmp_path / "label0001.nii.gz",
        "label0002": tmp_path / "label0002.nii.gz",
        "case_a": tmp_path / "case_a.nii.gz",
    }
    preds = {
        "img0001": tmp_path / "p/img0001.nii.gz",
        "label0002": tmp_path / "p/label0002.nii.gz",
        "img0002": tmp_path / "p/img0002.nii.gz",
        "case_a": tmp_path / "p/case_a.nii.gz",
    }
    assert pair_files(refs, preds) == {
        "label0002": preds["label0002"],
        "case_a": preds["case_a"],
        "label0001": preds["img0001"],
    }
    # numbers are compared as text, and must be unique on both sides
    assert pair_files({"case_10": "r"}, {"pred_010": "p"}) == {}
    assert pair_files({"label7": "r"}, {"a7": "p1", "b7": "p2"}) == {}
    assert pair_files({"x7": "r1", "y7": "r2"}, {"a7": "p"}) == {}


def test_sheet_shows_the_best_and_worst_cases_on_their_largest_slice(tmp_path):
    from medmae.evaluation.figures import largest_reference_slice, to_ras
    from medmae.evaluation.scoring import _sheet_rows

    reference = np.zeros((4, 4, 6), np.uint8)
    reference[1:3, 1:3, 4], reference[1, 1, 1] = 2, 1
    assert largest_reference_slice(reference) == 4
    volume = np.arange(24).reshape(2, 3, 4)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    assert np.array_equal(to_ras(volume, lps), volume[::-1, ::-1, :]) and np.array_equal(
        to_ras(volume, np.eye(4)), volume
    )
    label = np.zeros((6, 6, 4), np.uint8)
    label[2:4, 2:4, 1:3] = 1
    nib.save(nib.Nifti1Image(label, np.eye(4)), tmp_path / "ref.nii.gz")
    dsc = {f"c{k}": v for k, v in enumerate([0.9, 0.1, 0.5, 0.8, 0.3, 0.7, 0.2, 0.6])}
    per_case = pd.DataFrame({"case_id": list(dsc), "dsc": list(dsc.values())})
    pairs = {case: (tmp_path / "ref.nii.gz", tmp_path / "ref.nii.gz") for case in dsc}
    rows = _sheet_rows(per_case, pairs, {})
    assert [row["case_id"] for row in rows] == ["c0", "c3", "c5", "c4", "c6", "c1"]  # 3 best, then 3 worst


def test_the_case_sheet_names_each_case_inside_the_figure_and_has_a_colour_legend(tmp_path, monkeypatch):
    from medmae.evaluation import figures

    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, path, title="", tight=True: drawn.append(fig))
    label = np.zeros((20, 20, 4), np.uint8)
    label[5:15, 5:15, 2] = 1
    label[8:12, 8:12, 2] = 2
    rows = [
        {
            "case_id": "a_very_long_case_identifier_from_the_hospital_pacs_0001",
            "dsc": 0.9,
            "reference": label,
            "prediction": label,
        },
        {"case_id": "case_0002", "dsc": 0.1, "reference": label, "prediction": label * 0},
    ]
    figures.save_case_sheet(tmp_path / "sheet.png", rows, ("background", "anterior", "posterior"))
    fig = drawn[0]
    fig.canvas.draw()
    boxes = {t.get_text().split("\n")[0]: t.get_window_extent() for t in fig.findobj(matplotlib.text.Text)}
    for case in ("a_very_long_case_identifier_from", "case_0002"):  # the long id wraps at 32 characters
        box = boxes[case]
        assert fig.bbox.contains(*box.p0) and fig.bbox.contains(*box.p1), case  # inside the figure
    reference_titles = [t.get_window_extent() for t in fig.findobj(matplotlib.text.Text) if t.get_text() == "reference"]
    assert not any(boxes["a_very_long_case_identifier_from"].overlaps(box) for box in reference_titles)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["anterior", "posterior"]


def test_voxels_under_the_reference_ignore_label_are_not_counted(tmp_path):
    from medmae.evaluation.scoring import score_pair
    from medmae.tasks import load_task, task_from_record

    task = task_from_record(dict(load_task("demo").record) | {"ignore_label": 5}, "demo.yaml")
    ref = np.zeros((6, 6, 6), np.uint8)
    ref[1:3, 1:3, 1:3] = 1  # 8 liver voxels
    ref[4:, :, :] = 5  # two unlabelled planes
    pred = np.zeros_like(ref)
    pred[1:3, 1:3, 1:2] = 1  # 4 liver voxels found, 4 missed
    pred[4:, :2, :2] = 1  # liver predicted under the ignore label: no false positive
    for name, array in (("pred", pred), ("ref", ref)):
        nib.save(nib.Nifti1Image(array, np.eye(4)), tmp_path / f"{name}.nii.gz")
    liver = score_pair(task, "a", tmp_path / "pred.nii.gz", tmp_path / "ref.nii.gz", None)[0]
    assert (liver["class"], liver["tp"], liver["fp"], liver["fn"], liver["n_pred"]) == ("liver", 4, 0, 4, 4)
    assert liver["dsc"] == 2 * 4 / (4 + 8)
