"""Readers: NIfTI channels first, PNG modes to one grey channel, NRRD and DICOM through SimpleITK (imported
only when needed), broken files named."""

from __future__ import annotations

import itertools
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel import orientations
from PIL import Image as PILImage

from medmae.data.readers import Image, image_entries, on_image_axes, read_header, read_image, reorientation
from medmae.errors import DataError
from tests.helpers import convert_image, write_dicom_series

FLIPPED = dict(zip("RASLPI", "LPIRAS"))


def save_nifti(path, array, affine=None):
    nib.save(nib.Nifti1Image(array, np.diag([1.5, 1.5, 2.0, 1.0]) if affine is None else affine), path)
    return path


def test_nifti_3d_and_4d_come_channels_first(tmp_path):
    volume = np.random.rand(5, 6, 7).astype(np.float64)
    image = read_image(save_nifti(tmp_path / "a.nii.gz", volume))
    assert image.array.shape == (1, 5, 6, 7) and image.array.dtype == np.float32
    assert image.spacing == (1.5, 1.5, 2.0)
    four = np.random.rand(5, 6, 7, 4).astype(np.float32)
    image = read_image(save_nifti(tmp_path / "b.nii.gz", four))
    assert image.array.shape == (4, 5, 6, 7) and np.array_equal(image.array[2], four[..., 2])
    labels = read_image(save_nifti(tmp_path / "l.nii", np.arange(210, dtype=np.uint8).reshape(5, 6, 7) % 3))
    assert labels.array.dtype == np.uint8


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "I;16", "LA"])
def test_any_png_mode_becomes_one_grey_channel(tmp_path, mode):
    rgb = PILImage.fromarray(np.random.randint(0, 255, (9, 11, 3), dtype=np.uint8))
    picture = rgb.convert("I;16") if mode == "I;16" else rgb.convert(mode)
    picture.save(tmp_path / "x.png")
    image = read_image(tmp_path / "x.png")
    assert image.array.shape == (1, 9, 11)  # [C, H, W]: rows first


def test_nrrd_and_dicom_series_through_simpleitk(tmp_path):
    import SimpleITK as sitk

    volume = np.random.randint(-1000, 1000, (4, 5, 6)).astype(np.int16)  # [x, y, z]
    affine = np.diag([0.8, 0.9, 2.5, 1.0])
    affine[:3, 3] = [-10, 20, 30]
    reference = read_image(save_nifti(tmp_path / "r.nii.gz", volume, affine))
    sitk.WriteImage(sitk.ReadImage(str(tmp_path / "r.nii.gz")), str(tmp_path / "r.nrrd"))
    nrrd = read_image(tmp_path / "r.nrrd")
    assert np.array_equal(nrrd.array, reference.array) and np.allclose(nrrd.affine, reference.affine)
    series = write_dicom_series(tmp_path / "r.nii.gz", tmp_path / "series")
    dicom = read_image(series)
    assert np.array_equal(dicom.array, reference.array)
    assert np.allclose(dicom.spacing, (0.8, 0.9, 2.5), atol=1e-3)
    write_dicom_series(tmp_path / "r.nii.gz", series, "1.2.826.0.1.3680043.2.1125.2")  # a second series beside it
    with pytest.raises(DataError, match=r"series: holds 2 DICOM series \(1\.2\..*1125\.1, 1\.2\..*1125\.2\)"):
        read_image(series)


def test_a_header_gives_the_grid_of_every_format_as_reading_the_image_does(tmp_path):
    affine = np.array([[0, -0.9, 0, 5], [0.8, 0, 0, -7], [0, 0, 2.5, 30], [0, 0, 0, 1]])
    nifti = save_nifti(tmp_path / "r.nii.gz", np.arange(120, dtype=np.int16).reshape(4, 5, 6), affine)
    files = [nifti, convert_image(nifti, tmp_path / "r.nrrd"), convert_image(nifti, tmp_path / "r.mha")]
    for path in [*files, write_dicom_series(nifti, tmp_path / "series")]:
        header, image = read_header(path), read_image(path)
        assert header.shape == (4, 5, 6) and np.allclose(header.affine, image.affine, atol=1e-4), path
        assert np.allclose(header.affine, affine, atol=1e-4), path
    four = save_nifti(tmp_path / "four.nii.gz", np.zeros((4, 5, 6, 2), np.float32))
    assert read_header(convert_image(four, tmp_path / "four.nrrd")).shape == read_header(four).shape == (4, 5, 6, 2)
    (tmp_path / "bad.mha").write_text("junk")
    with pytest.raises(DataError, match="bad.mha: unreadable by SimpleITK"):
        read_header(tmp_path / "bad.mha")


def test_a_folder_lists_its_image_files_and_dicom_series_apart_from_the_rest(tmp_path):
    nifti = save_nifti(tmp_path / "a.nii.gz", np.zeros((4, 5, 6), np.float32))
    convert_image(nifti, tmp_path / "b.NRRD")
    write_dicom_series(nifti, tmp_path / "c")
    (tmp_path / "empty").mkdir()
    for name in ("notes.txt", "._a.nii.gz", "d.png"):
        (tmp_path / name).write_bytes(b"")
    images, others = image_entries(tmp_path, 3)
    assert [p.name for p in images] == ["a.nii.gz", "b.NRRD", "c"]
    assert [p.name for p in others] == ["d.png", "empty", "notes.txt"]
    assert [p.name for p in image_entries(tmp_path, 2)[0]] == ["d.png"]


def test_broken_files_are_named_with_the_problem(tmp_path):
    good = save_nifti(tmp_path / "good.nii.gz", np.random.rand(8, 8, 8).astype(np.float32))
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[:200])
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    (tmp_path / "fake.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "notes.txt").write_text("x")
    cases = {
        "truncated.nii.gz": "unreadable NIfTI",
        "empty.nii.gz": "empty file",
        "fake.png": "unreadable PNG",
        "notes.txt": "unsupported file type",
        "missing.nii.gz": "file not found",
    }
    for name, problem in cases.items():
        with pytest.raises(DataError, match=problem) as error:
            read_image(tmp_path / name)
        assert str(error.value).startswith(str(tmp_path / name))


def test_simpleitk_is_imported_only_for_files_that_need_it(tmp_path):
    import subprocess
    import sys

    path = save_nifti(tmp_path / "a.nii.gz", np.zeros((4, 4, 4), np.float32))
    code = (
        "import sys; from medmae.data.readers import read_image; import medmae.data.transforms, medmae.data.check; "
        f"read_image({str(path)!r}); print('SimpleITK' in sys.modules)"
    )
    assert (
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, encoding="utf-8", errors="replace", check=True
        ).stdout.strip()
        == "False"
    )


def test_16_bit_png_keeps_its_values(tmp_path):
    values = np.array([[0, 1000], [2500, 4000]], dtype=np.uint16)
    PILImage.fromarray(values).save(tmp_path / "deep.png")
    image = read_image(tmp_path / "deep.png")
    assert image.array.shape == (1, 2, 2) and np.array_equal(image.array[0], values)


def test_upper_case_endings_are_read_as_their_format(tmp_path):
    volume = np.arange(120, dtype=np.int16).reshape(4, 5, 6)
    nifti = save_nifti(tmp_path / "r.nii.gz", volume)
    save_nifti(tmp_path / "r.nii", volume)
    for lower in ("r.nrrd", "r.mha", "r.mhd"):
        convert_image(nifti, tmp_path / lower)
    for lower in ("r.nii.gz", "r.nii", "r.nrrd", "r.mha", "r.mhd"):
        upper = (tmp_path / lower).rename(tmp_path / lower.upper())  # a detached .MHD still names r.zraw
        assert np.array_equal(read_image(upper).array[0], volume), upper
        assert read_header(upper).shape == (4, 5, 6), upper


def test_a_label_stored_in_another_orientation_of_its_image_s_grid_is_turned_into_the_image_s():
    labels = np.random.default_rng(0).integers(0, 5, (4, 5, 6)).astype(np.uint8)
    affine = np.array([[0, -0.9, 0, 5], [0.8, 0, 0, -7], [0, 0, 2.5, 30], [0, 0, 0, 1.0]])
    image = Image(labels[None].astype(np.float32), affine, Path("image.nii.gz"))
    stored = nib.Nifti1Image(labels, affine)
    for codes in itertools.permutations("RAS"):  # every order of the axes, each way round: 48 orientations
        for flips in itertools.product((False, True), repeat=3):
            axes = tuple(FLIPPED[c] if flip else c for c, flip in zip(codes, flips))
            turn = orientations.ornt_transform(orientations.io_orientation(affine), orientations.axcodes2ornt(axes))
            other = stored.as_reoriented(turn)
            label = Image(np.asarray(other.dataobj)[None], other.affine, Path("label.nii.gz"))
            turned = on_image_axes(label, image)
            assert np.array_equal(turned.array[0], labels) and np.allclose(turned.affine, affine), axes
    elsewhere = Image(labels[None], affine @ np.diag([-1.0, -1.0, 1.0, 1.0]), Path("label.nii.gz"))  # not moved back
    assert reorientation(elsewhere.affine, (4, 5, 6), affine, (4, 5, 6)) is None
    assert on_image_axes(elsewhere, image) is elsewhere
