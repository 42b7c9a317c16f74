"""Cases and splits: case ids from file names, every case once, and cases sitting in two parts noted."""

from __future__ import annotations

from pathlib import Path

import pytest

from medmae.data.cases import Case, Split, case_id


@pytest.mark.parametrize(
    "name, expected",
    [
        ("img0001.nii.gz", "img0001"),
        ("hippocampus_003.nii", "hippocampus_003"),
        ("00000001_000.png", "00000001_000"),
        ("ct.nrrd", "ct"),
        ("scan.mha", "scan"),
        ("slice.dcm", "slice"),
        ("series_folder", "series_folder"),
    ],
)
def test_case_ids_are_file_names_without_their_image_suffix(name, expected):
    assert case_id(Path("/data") / name) == expected


def test_every_case_once_in_order_and_overlaps_are_noted():
    a, b, c, d = (Case(name, Path(f"{name}.nii.gz"), Path(f"{name}_label.nii.gz")) for name in "abcd")
    split = Split("custom", "test", train=[c, a], validation=[b], test=[b, d], unlabelled=[Case("e", Path("e.nii"))])
    assert [case.id for case in split.all_cases()] == ["a", "b", "c", "d", "e"]
    assert list(split.parts) == ["train", "validation", "test", "unlabelled"]
    split.note_overlaps()
    assert split.notes == ["cases in both validation and test: b"]
