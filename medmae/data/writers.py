"""Label maps and class probabilities written on the grid of the image they were predicted from, in its format:
NIfTI (``.nii.gz``) for NIfTI and DICOM input, NRRD for NRRD, MetaImage (``.mha``, one file) for
MetaImage. Every file is written whole or not at all (see :mod:`medmae.files`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medmae.data.readers import NIFTI_SUFFIXES, read_header, sitk_header
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
    return write_nifti(nifti_like(labels, read_header(like).affine, like), path)


def nifti_like(array: np.ndarray, affine: np.ndarray, like: Path | None = None):
    """A NIfTI image of ``array`` with ``affine``, keeping the spatial units and the sform and qform codes
    of the NIfTI ``like`` (millimetres and code 1, scanner-aligned, for other sources)."""
    import nibabel as nib

    image = nib.Nifti1Image(array, affine)
    units, codes = "mm", (1, 1)
    if like is not None and Path(like).is_file() and Path(like).name.lower().endswith(NIFTI_SUFFIXES):
        header = nib.load(like).header
        units = header.get_xyzt_units()[0] if header.get_xyzt_units()[0] != "unknown" else "mm"
        codes = tuple(int(header[key]) or 1 for key in ("sform_code", "qform_code"))
    image.set_sform(affine, code=codes[0])
    image.set_qform(affine, code=codes[1])
    image.header.set_xyzt_units(xyz=units)
    return image


def _write_sitk(labels: np.ndarray, like: Path, path: Path) -> Path:
    import SimpleITK as sitk

    reference = sitk_header(like)
    image = sitk.GetImageFromArray(labels.transpose())  # SimpleITK arrays run [z, y, x]
    image.SetOrigin(reference.GetOrigin())
    image.SetSpacing(reference.GetSpacing())
    image.SetDirection(reference.GetDirection())
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
    return path


def write_probabilities(probabilities: np.ndarray, classes: tuple[str, ...], path: Path) -> Path:
    """Write ``probabilities`` ``[K, *S]`` (on the image's grid, in the file's own axis order ``X, Y, Z``,
    where nnU-Net's are ``Z, Y, X``) to the ``.npz`` file ``path``, like nnU-Net's ``--save_probabilities``:
    arrays ``probabilities`` (float32) and ``classes`` (their names, in channel order)."""
    with atomic_open(path, "wb") as handle:
        np.savez_compressed(handle, probabilities=probabilities.astype(np.float32), classes=np.array(classes))
    return path
