"""Image readers: NIfTI through nibabel, PNG through Pillow, DICOM series and NRRD through SimpleITK
(imported only when such a file is read). Every problem raises :class:`DataError` naming the file."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medmae.errors import DataError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
VOLUME_SUFFIXES = NIFTI_SUFFIXES + (".nrrd", ".nhdr", ".mha", ".mhd")
IMAGE_SUFFIXES = {2: (".png", ".dcm"), 3: VOLUME_SUFFIXES}
SITK_IMAGE_IO = {".nrrd": "NrrdImageIO", ".nhdr": "NrrdImageIO", ".mha": "MetaImageIO", ".mhd": "MetaImageIO"}
AFFINE_TOLERANCE_MM = 1e-3


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
    if not os.access(path, os.R_OK):
        raise DataError(path, "permission denied: this user may not read it")
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


def read_channels(paths: str | Path | list | tuple) -> Image:
    """Read an image from one file (or series folder), or from one file per channel, stacked in order; the
    channel files must share the first one's grid (shape, and affine within 1e-3 mm)."""
    if isinstance(paths, (str, Path)):
        return read_image(paths)
    images = [read_image(path) for path in paths]
    first = images[0]
    for image in images[1:]:
        if image.array.shape[1:] != first.array.shape[1:]:
            raise DataError(
                image.path, f"shape {image.array.shape[1:]} differs from {first.path.name}'s {first.array.shape[1:]}"
            )
        if not np.allclose(image.affine, first.affine, rtol=0, atol=AFFINE_TOLERANCE_MM):
            gap = np.abs(image.affine - first.affine).max()
            raise DataError(image.path, f"affine differs from {first.path.name}'s by up to {gap:.4g} mm")
    arrays = [image.array.astype(np.float32) if len(images) > 1 else image.array for image in images]
    return Image(np.concatenate(arrays), first.affine, first.path)


def is_dicom_series(folder: Path) -> bool:
    """Whether ``folder`` holds a DICOM series (its files' headers are read, whatever their names)."""
    import SimpleITK as sitk

    if not folder.is_dir():
        return False
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK prints "No Series were found" for other folders
    try:
        return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def image_entries(folder: Path, spatial_dims: int) -> tuple[list[Path], list[Path]]:
    """The images of ``folder`` (files with an image suffix and, for 3D, subfolders holding a DICOM
    series; hidden entries such as macOS ``._*`` ignored), and the other entries, both sorted."""
    images, others = [], []
    for path in sorted(p for p in folder.iterdir() if not p.name.startswith(".")):
        is_file_image = path.is_file() and path.name.lower().endswith(IMAGE_SUFFIXES[spatial_dims])
        is_series = spatial_dims == 3 and path.is_dir() and is_dicom_series(path)
        (images if is_file_image or is_series else others).append(path)
    return images, others


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
            found = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
            if len(found) > 1:  # a study folder: reading the first series would be a guess
                raise DataError(path, f"holds {len(found)} DICOM series ({', '.join(found)}); give one series' folder")
            files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path))
            if not files:
                raise DataError(path, "folder holds no DICOM series")
            image = sitk.ReadImage(files)
        else:
            image = sitk.ReadImage(str(path), imageIO=sitk_image_io(path))
    except RuntimeError as error:
        raise DataError(path, f"unreadable by SimpleITK ({str(error).strip().splitlines()[-1]})") from error
    array = sitk.GetArrayFromImage(image)  # [z, y, x] or [z, y, x, C]
    dims = image.GetDimension()
    channels_last = array.ndim == dims + 1
    array = np.moveaxis(array, -1, 0) if channels_last else array[None]
    array = np.ascontiguousarray(np.moveaxis(array, list(range(1, dims + 1)), list(range(dims, 0, -1))))  # -> x, y, z
    if array.dtype.kind == "f" and array.dtype != np.float32:
        array = array.astype(np.float32)
    return Image(array, sitk_affine(image), path)


def sitk_image_io(path: Path) -> str:
    """SimpleITK's reader for ``path`` by its suffix in any case (ITK itself knows MetaImage only by a
    lower-case ``.mha`` or ``.mhd``); empty, to let ITK choose, for other files (DICOM)."""
    name = path.name.lower()
    return next((io for suffix, io in SITK_IMAGE_IO.items() if name.endswith(suffix)), "")


def sitk_affine(image) -> np.ndarray:
    """The RAS voxel-to-world affine (4 x 4) of a SimpleITK image or image file reader (LPS geometry)."""
    dims = image.GetDimension()
    affine = np.eye(4)
    affine[:dims, :dims] = np.asarray(image.GetDirection()).reshape(dims, dims) * np.asarray(image.GetSpacing())
    affine[:dims, 3] = image.GetOrigin()
    affine[:2] *= -1  # SimpleITK is LPS, NIfTI and MONAI are RAS
    return affine


def sitk_header(path: Path):
    """A SimpleITK reader that has read the header of ``path`` (geometry, size, pixel type), not its voxels."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetImageIO(sitk_image_io(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise DataError(path, f"unreadable by SimpleITK ({str(error).strip().splitlines()[-1]})") from error
    return reader


@dataclass
class Header:
    """An image's grid without its voxels: ``shape`` as NIfTI gives it (spatial axes, then channels when
    there are several) and the RAS ``affine``."""

    shape: tuple[int, ...]
    affine: np.ndarray


def read_header(path: str | Path) -> Header:
    """The grid of an image file without reading its voxels (a DICOM series folder is read whole)."""
    path = Path(path)
    if path.is_dir() or not path.name.lower().endswith(NIFTI_SUFFIXES + SITK_SUFFIXES):
        image = read_image(path)
        channels = image.array.shape[:1] if image.array.shape[0] > 1 else ()
        return Header(image.array.shape[1:] + channels, image.affine)
    if path.name.lower().endswith(NIFTI_SUFFIXES):
        import nibabel as nib

        try:
            nifti = nib.load(path)
        except Exception as error:  # nibabel raises many types for broken headers
            raise DataError(path, f"unreadable NIfTI header ({type(error).__name__}: {error})") from error
        return Header(tuple(nifti.shape), np.asarray(nifti.affine, dtype=np.float64))
    reader = sitk_header(path)
    channels = reader.GetNumberOfComponents()
    return Header(tuple(reader.GetSize()) + ((channels,) if channels > 1 else ()), sitk_affine(reader))


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


def reorientation(
    affine: np.ndarray, shape: tuple[int, ...], target_affine: np.ndarray, target_shape: tuple[int, ...]
) -> np.ndarray | None:
    """How a 3D grid (voxel-to-world ``affine``, spatial ``shape``) turns into the target grid when both hold
    the same voxel centres (within 1e-3 mm) and only the order or direction of the axes differs: a nibabel
    orientation transform ``[3, 2]`` (each axis' new place and flip; the identity for the same grid). None
    for another grid, a 2D one or an affine that is not finite and invertible."""
    from nibabel import orientations

    usable = [np.isfinite(a).all() and abs(np.linalg.det(a[:3, :3])) > 1e-12 for a in (affine, target_affine)]
    if len(shape) != 3 or len(target_shape) != 3 or not all(usable):
        return None
    transform = orientations.ornt_transform(
        orientations.io_orientation(affine), orientations.io_orientation(target_affine)
    )
    turned_shape = [0, 0, 0]
    for axis, (place, _) in enumerate(transform):
        turned_shape[int(place)] = shape[axis]
    turned = affine @ orientations.inv_ornt_aff(transform, shape)
    same = tuple(turned_shape) == tuple(target_shape)
    return transform if same and np.allclose(turned, target_affine, rtol=0, atol=AFFINE_TOLERANCE_MM) else None


def on_image_axes(label: Image, image: Image) -> Image:
    """``label`` turned into ``image``'s axis order, with ``image``'s affine, where it is the image's grid
    stored in another orientation (:func:`reorientation`), as MONAI's ``Orientation`` would turn it; else
    ``label`` itself."""
    from nibabel import orientations

    transform = reorientation(label.affine, label.array.shape[1:], image.affine, image.array.shape[1:])
    if transform is None or np.array_equal(transform, [[0, 1], [1, 1], [2, 1]]):
        return label
    turned = np.stack([orientations.apply_orientation(channel, transform) for channel in label.array])
    return Image(np.ascontiguousarray(turned), image.affine.copy(), label.path)


def axis_codes(affine: np.ndarray) -> str:
    """The directions a 3D grid's axes run, as ``RAS`` or ``PLS``."""
    import nibabel as nib

    return "".join(nib.aff2axcodes(affine))
