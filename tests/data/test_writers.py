"""Label maps written on the grid of their image, in its format: NIfTI for NIfTI and DICOM series, NRRD
and MetaImage through SimpleITK with the reference's geometry kept."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from medmae.data.readers import read_image
from medmae.data.writers import label_map_suffix, write_label_map
from tests.helpers import convert_image, write_dicom_series

AFFINE = np.array([[0, -0.9, 0, 5], [0.8, 0, 0, -7], [0, 0, 2.5, 30], [0, 0, 0, 1]])


@pytest.fixture
def nifti(tmp_path):
    """A 4 x 5 x 6 int16 image with a rotated, anisotropic affine."""
    path = tmp_path / "image.nii.gz"
    nib.save(nib.Nifti1Image(np.arange(120, dtype=np.int16).reshape(4, 5, 6), AFFINE), path)
    return path


def test_a_label_map_is_written_as_uint8_nifti_with_the_image_affine(tmp_path, nifti):
    labels = np.random.default_rng(0).integers(0, 3, (4, 5, 6))
    written = nib.load(write_label_map(labels, nifti, tmp_path / "out" / "image.nii.gz"))
    assert written.get_data_dtype() == np.uint8 and np.array_equal(written.get_fdata(), labels)
    assert np.allclose(written.affine, AFFINE) and int(written.header["qform_code"]) == 1
    assert written.header.get_xyzt_units()[0] == "mm"


def test_a_nifti_label_map_keeps_its_image_header_units_and_transform_codes(tmp_path):
    image = nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), AFFINE)
    image.header.set_xyzt_units(xyz="micron")
    image.set_sform(AFFINE, code=2)  # aligned to another scan
    nib.save(image, tmp_path / "image.nii.gz")
    written = nib.load(write_label_map(np.zeros((4, 5, 6)), tmp_path / "image.nii.gz", tmp_path / "labels.nii.gz"))
    assert written.header.get_xyzt_units()[0] == "micron" and int(written.header["sform_code"]) == 2


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_nrrd_and_metaimage_input_give_a_label_map_in_their_format_on_their_grid(tmp_path, nifti, suffix):
    import SimpleITK as sitk

    image = convert_image(nifti, tmp_path / f"image{suffix}")
    labels = np.random.default_rng(0).integers(0, 3, (4, 5, 6))
    path = tmp_path / "out" / f"image{label_map_suffix(image)}"
    assert path.suffix == suffix
    written = read_image(write_label_map(labels, image, path))
    assert written.array.dtype == np.uint8 and np.array_equal(written.array[0], labels)
    assert np.allclose(written.affine, read_image(image).affine, atol=1e-6)
    source, result = sitk.ReadImage(str(image)), sitk.ReadImage(str(path))
    for geometry in ("GetOrigin", "GetSpacing", "GetDirection"):  # NRRD prints 15 significant digits
        assert np.allclose(getattr(result, geometry)(), getattr(source, geometry)(), rtol=1e-12, atol=0), geometry
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_detached_headers_and_dicom_series_give_one_file_label_maps(tmp_path, nifti):
    assert label_map_suffix(convert_image(nifti, tmp_path / "image.mhd")) == ".mha"
    assert label_map_suffix(convert_image(nifti, tmp_path / "image.nhdr")) == ".nrrd"
    series = write_dicom_series(nifti, tmp_path / "series")
    assert label_map_suffix(series) == label_map_suffix(nifti) == ".nii.gz"
    labels = np.random.default_rng(0).integers(0, 3, (4, 5, 6))
    written = read_image(write_label_map(labels, series, tmp_path / "out" / "series.nii.gz"))
    assert np.array_equal(written.array[0], labels) and np.allclose(written.affine, AFFINE, atol=1e-4)


@pytest.mark.parametrize(
    ("upper", "suffix"), [("IMAGE.MHA", ".mha"), ("IMAGE.NRRD", ".nrrd"), ("IMAGE.NII.GZ", ".nii.gz")]
)
def test_upper_case_input_gives_a_label_map_in_its_format_with_a_lower_case_ending(tmp_path, nifti, upper, suffix):
    image = convert_image(nifti, tmp_path / f"image{suffix}").rename(tmp_path / upper)
    labels = np.random.default_rng(0).integers(0, 3, (4, 5, 6))
    path = tmp_path / "out" / f"image{label_map_suffix(image)}"
    assert path.name == f"image{suffix}"
    written = read_image(write_label_map(labels, image, path))
    assert np.array_equal(written.array[0], labels) and np.allclose(written.affine, read_image(image).affine, atol=1e-6)
