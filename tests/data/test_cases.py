"""Cases and splits: case ids from file names, every case once, cases sitting in two parts noted, and the
fingerprints that tell which images a model has seen."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medmae.data.cases import Case, Split, case_id, file_identity, merged_record


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


def test_file_identity_tells_scans_apart_that_share_size_header_and_margins(tmp_path):
    """Uncompressed co-registered volumes: the same size, header and empty margins, another body."""
    for seed in (0, 1):
        volume = np.zeros((120, 120, 80), np.int16)
        volume[30:90, 30:90, 20:60] = np.random.default_rng(seed).integers(0, 1000, (60, 60, 40))
        nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / f"scan{seed}.nii")
    shutil.copy(tmp_path / "scan0.nii", tmp_path / "copy.nii")
    identity = file_identity(tmp_path / "scan0.nii")
    assert file_identity(tmp_path / "scan1.nii") != identity and file_identity(tmp_path / "copy.nii") == identity


def test_file_identity_of_a_detached_header_covers_its_data_file(tmp_path):
    header = tmp_path / "scan.mhd"
    header.write_text("ObjectType = Image\nNDims = 3\nElementDataFile = scan.raw\n")
    (tmp_path / "scan.raw").write_bytes(bytes(1000))
    before = file_identity(header)
    (tmp_path / "scan.raw").write_bytes(bytes(999) + b"\x01")
    assert file_identity(header) != before


def test_merged_records_lose_their_files_where_one_recorded_none():
    a, b = {"cases": ["x"], "files": ["1"]}, {"cases": ["y"], "files": ["2", "1"]}
    assert merged_record(a, b) == {"cases": ["x", "y"], "files": ["1", "2"]}
    assert merged_record(a, {"cases": [], "files": None})["files"] is None
    assert merged_record(None, a) == a
