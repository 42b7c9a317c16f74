"""Image readers: NIfTI through nibabel, PNG through Pillow, DICOM series and NRRD through SimpleITK
(imported only when such a file is read). Every problem raises :class:`DataError` naming the file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medmae.errors import DataError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")


@dataclass
class Image:
    """An image as read: ``array`` ``[C, *S]`` (channels first, as stored: float32 or an integer type),
    the voxel-to-world ``affine`` (4 x 4, RAS millimetres for 3D; identity for PNG) and the ``spacing``."""

    array: np.ndarray
    affine: np.ndarray
    path: Path

    @property
    def spacing(self) -> tuple[float, ...]:
        dims = self.array.ndim - 1
        return tuple(float(v) for v in np.linalg.norm(self.affine[:dims, :dims], axis=0))


def read_image(path: str | Path) -> Image:
    """Read one image file or DICOM series folder; channels first."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "file not found")
    name = path.name.lower()
    if path.is_dir():
        return _read_sitk(path, series=True)
    if path.stat().st_size == 0:
        raise DataError(path, "empty file (0 bytes)")
    if name.endswith(NIFTI_SUFFIXES):
        return _read_nifti(path)
    if name.endswith(".png"):
        return _read_png(path)
    if name.endswith(SITK_SUFFIXES):
        return _read_sitk(path, series=False)
    raise DataError(
        path,
        f"unsupported file type; medmae reads {', '.join(NIFTI_SUFFIXES + ('.png',) + SITK_SUFFIXES)} "
        "and DICOM series folders",
    )


def _read_nifti(path: Path) -> Image:
    import nibabel as nib

    try:
        image = nib.load(path)
        array = np.asanyarray(image.dataobj)
    except Exception as error:  # nibabel raises many types (header, gzip, EOF, value) for broken files
        raise DataError(path, f"unreadable NIfTI ({type(error).__name__}: {error})") from error
    if array.ndim not in (2, 3, 4):
        raise DataError(path, f"a NIfTI of {array.ndim} dimensions {array.shape}; expected 2D, 3D or 3D + channels")
    if array.dtype.kind == "f" and array.dtype != np.float32:
        array = array.astype(np.float32)
    array = np.moveaxis(array, -1, 0) if array.ndim == 4 else array[None]  # 4D: channels last on disk
    return Image(np.ascontiguousarray(array), np.asarray(image.affine, dtype=np.float64), path)


def _read_png(path: Path) -> Image:
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    try:
        with PILImage.open(path) as picture:
            picture.load()
            grey = _to_grey(picture)
    except (OSError, UnidentifiedImageError, SyntaxError) as error:
        raise DataError(path, f"unreadable PNG ({error})") from error
    return Image(grey[None], np.eye(4), path)


def _to_grey(picture) -> np.ndarray:
    """Any PIL mode to one grey channel ``[H, W]``: 8-bit modes via ``L``, 16/32-bit kept as numbers."""
    if picture.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return np.asarray(picture, dtype=np.float32)
    return np.asarray(picture.convert("L"))


def _read_sitk(path: Path, series: bool) -> Image:
    import SimpleITK as sitk

    try:
        if series:
            files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path))
            if not files:
                raise DataError(path, "folder holds no DICOM series")
            image = sitk.ReadImage(files)
        else:
            image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise DataError(path, f"unreadable by SimpleITK ({str(error).strip().splitlines()[-1]})") from error
    array = sitk.GetArrayFromImage(image)  # [z, y, x] or [z, y, x, C]
    dims = image.GetDimension()
    channels_last = array.ndim == dims + 1
    array = np.moveaxis(array, -1, 0) if channels_last else array[None]
    array = np.ascontiguousarray(np.moveaxis(array, list(range(1, dims + 1)), list(range(dims, 0, -1))))  # -> x, y, z
    direction = np.asarray(image.GetDirection()).reshape(dims, dims)
    affine = np.eye(4)
    affine[:dims, :dims] = direction * np.asarray(image.GetSpacing())
    affine[:dims, 3] = image.GetOrigin()
    affine[:2] *= -1  # SimpleITK is LPS, NIfTI and MONAI are RAS
    if array.dtype.kind == "f" and array.dtype != np.float32:
        array = array.astype(np.float32)
    return Image(array, affine, path)


LABEL_ROUNDING = 1e-3


def integer_labels(image: Image) -> np.ndarray:
    """A label map as integers: integer types as stored; floats rounded to the nearest integer when every
    value lies within 1e-3 of one (as after a float round trip), else :class:`DataError`."""
    array = image.array
    if array.dtype.kind in "iub":
        return array
    rounded = np.rint(array)
    if not np.isfinite(array).all() or np.abs(array - rounded).max(initial=0) > LABEL_ROUNDING:
        raise DataError(image.path, "label holds non-integer or non-finite values")
    return rounded.astype(np.int16)
