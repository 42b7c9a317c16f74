"""Label maps and class probabilities written on the grid of the image they were predicted from, in its format:
NIfTI (``.nii.gz``) for NIfTI and DICOM input, NRRD for NRRD, MetaImage (``.mha``, one file) for
MetaImage. Every file is written whole or not at all (see :mod:`medmae.files`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medmae.data.readers import read_header
from medmae.files import atomic_open, atomic_path, write_nifti

SITK_OUTPUTS = {".nrrd": ".nrrd", ".nhdr": ".nrrd", ".mha": ".mha", ".mhd": ".mha"}


def label_map_suffix(image: Path) -> str:
    """The suffix of the label map predicted from ``image``: ``.nrrd`` or ``.mha`` for NRRD or MetaImage
    input (a detached ``.nhdr`` or ``.mhd`` header gives the one-file form), else ``.nii.gz``."""
    return SITK_OUTPUTS.get(Path(image).suffix.lower(), ".nii.gz") if Path(image).is_file() else ".nii.gz"


def write_label_map(labels: np.ndarray, like: Path, path: Path) -> Path:
    """Write ``labels`` ``[*S]`` (uint8, medmae's voxel order: the file's own axes) with the grid of the
    image ``like``, as NIfTI or, for a ``.nrrd`` or ``.mha`` ``path``, with SimpleITK (compressed, the
    reference's origin, spacing and direction kept to the header's printed precision)."""
    labels = np.ascontiguousarray(labels, dtype=np.uint8)
    if path.suffix in (".nrrd", ".mha"):
        return _write_sitk(labels, like, path)
    import nibabel as nib

    affine = read_header(like).affine
    image = nib.Nifti1Image(labels, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    return write_nifti(image, path)


def _write_sitk(labels: np.ndarray, like: Path, path: Path) -> Path:
    import SimpleITK as sitk

    reference = sitk.ImageFileReader()
    reference.SetFileName(str(like))
    reference.ReadImageInformation()
    image = sitk.GetImageFromArray(labels.transpose())  # SimpleITK arrays run [z, y, x]
    image.SetOrigin(reference.GetOrigin())
    image.SetSpacing(reference.GetSpacing())
    image.SetDirection(reference.GetDirection())
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
    return path


def write_probabilities(probabilities: np.ndarray, classes: tuple[str, ...], path: Path) -> Path:
    """Write ``probabilities`` ``[K, *S]`` (on the image's grid, medmae's voxel order) to the ``.npz`` file
    ``path`` as nnU-Net's ``--save_probabilities`` does: arrays ``probabilities`` (float32) and ``classes``
    (their names, in channel order)."""
    with atomic_open(path, "wb") as handle:
        np.savez_compressed(handle, probabilities=probabilities.astype(np.float32), classes=np.array(classes))
    return path
