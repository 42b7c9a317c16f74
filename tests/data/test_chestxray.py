"""ChestX-ray14: the label table's published counts, parsing rules, list files, and a validation part carved
by patient."""

from __future__ import annotations

import gzip

import pytest

from medmae.data.chestxray import read_label_table
from medmae.data.manifests import load_split
from medmae.errors import DataError, UserError
from medmae.tasks import load_task
from tests.helpers import shared

FINDINGS = load_task("chestxray14").findings


def test_full_label_table_gives_the_published_counts():
    table = read_label_table(shared("chestxray14_labels") / "Data_Entry_2017_v2020.csv.gz", FINDINGS)
    counts = table[list(FINDINGS)].sum().to_dict()
    assert counts == {
        "Atelectasis": 11559,
        "Cardiomegaly": 2776,
        "Effusion": 13317,
        "Infiltration": 19894,
        "Mass": 5782,
        "Nodule": 6331,
        "Pneumonia": 1431,
        "Pneumothorax": 5302,
        "Consolidation": 4667,
        "Edema": 2303,
        "Emphysema": 2516,
        "Fibrosis": 1686,
        "Pleural_Thickening": 3385,
        "Hernia": 227,
    }
    assert len(table) == 112120 and int((table[list(FINDINGS)].sum(axis=1) == 0).sum()) == 60361
    assert table["patient"].nunique() == 30805


def test_validation_is_carved_by_patient():
    split = load_split(load_task("chestxray14"), shared("chestxray14_nih_subset"))
    assert (len(split.train) + len(split.validation), len(split.test)) == (600, 200)
    assert not {c.patient for c in split.train} & {c.patient for c in split.validation}
    assert 0.07 < len(split.validation) / 600 < 0.13
    assert all(len(c.targets) == 14 for c in split.all_cases())


def test_table_parsing_rules(tmp_path):
    rows = (
        "Image Index,Finding Labels,Follow-up #,Patient ID\n"
        "a.png,No Finding,0,1\nb.png,Effusion|Hernia,0,1\nc.png,Mass,0,2\n"
    )
    (tmp_path / "t.csv.gz").write_bytes(gzip.compress(rows.encode()))
    table = read_label_table(tmp_path / "t.csv.gz", FINDINGS)
    assert table.loc["a.png", list(FINDINGS)].sum() == 0
    assert table.loc["b.png", "Effusion"] == 1 and table.loc["b.png", "Hernia"] == 1 and table.loc["b.png", "Mass"] == 0
    assert table.loc["c.png", "patient"] == "2"
    (tmp_path / "u.csv").write_text(rows.replace("Mass", "Fracture"))
    with pytest.raises(DataError, match=r"u.csv: unknown findings \['Fracture'\]"):
        read_label_table(tmp_path / "u.csv", FINDINGS)


def test_list_problems_are_named(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "Data_Entry_2017.csv").write_text(
        "Image Index,Finding Labels,Patient ID\na.png,Mass,1\nb.png,No Finding,2\n"
    )
    (tmp_path / "train_val_list.txt").write_text("a.png\na.png\n")
    (tmp_path / "test_list.txt").write_text("b.png\n")
    task = load_task("chestxray14")
    with pytest.raises(DataError, match=r"train_val_list.txt: images listed more than once: a.png"):
        load_split(task, tmp_path)
    (tmp_path / "train_val_list.txt").write_text("a.png\nb.png\n")
    assert "cases in both train and test: b" in load_split(task, tmp_path).notes  # 2 images: no validation
    (tmp_path / "train_val_list.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DataError, match="train_val_list.txt: not a text file"):
        load_split(task, tmp_path)
    with pytest.raises(UserError, match="--manifest is not used by task chestxray14"):
        load_split(task, tmp_path, manifest=tmp_path / "x.json")
