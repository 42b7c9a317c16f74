"""``medmae data check``: read every case of a split and say, per case, what is wrong.

Errors: a missing or unreadable file, image and label grids that disagree (shape or affine), a wrong
channel count or dimensionality, non-finite voxels or intensities beyond 1e10, label values outside the
task's set, a label with no foreground. Warnings: a label missing some of the task's classes (BTCV cases
can lack an organ); a label stored in another orientation of its image's grid (read in the image's). A
note: spacing with one axis over 3x coarser than the others (nnU-Net's rule for anisotropic data).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from medmae.data.cases import Case, Split
from medmae.data.readers import (
    AFFINE_TOLERANCE_MM,
    Image,
    axis_codes,
    integer_labels,
    on_image_axes,
    read_channels,
    read_image,
)
from medmae.errors import DataError
from medmae.tasks import TaskSpec

EXTREME_INTENSITY = 1e10  # far beyond HU, MR units, PET Bq/ml; float32 overflows in statistics near 1e19
MIN_SIZE = 16  # the ViT's patch: an image smaller on every axis holds less than one patch
ANISOTROPY = 3.0  # nnU-Net's threshold: an axis this many times coarser than every other one is planned apart
ORDINALS = ("first", "second", "third")


def affine_problem(image: Image) -> str | None:
    """Why an image's voxel-to-world affine is unusable (not finite, or singular: a zero spacing), or None."""
    dims = image.array.ndim - 1
    linear = image.affine[:dims, :dims]
    if not np.isfinite(image.affine).all():
        return "its affine (the header's voxel-to-world matrix) holds NaN or inf"
    if abs(np.linalg.det(linear)) < 1e-12:
        spacing = ", ".join(f"{v:g}" for v in np.linalg.norm(linear, axis=0))
        return f"its affine is singular (voxel spacing {spacing} mm): a broken header"
    return None


@dataclass
class CaseReport:
    case: Case
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    shape: tuple[int, ...] | None = None
    spacing: tuple[float, ...] | None = None
    intensity: tuple[float, float] | None = None


def _check_image(task: TaskSpec, image: Image, report: CaseReport) -> None:
    array, where = image.array, image.path
    report.shape = tuple(array.shape[1:])
    report.spacing = tuple(round(s, 3) for s in image.spacing)
    if array.ndim - 1 != task.spatial_dims:
        report.errors.append(
            f"{where}: {array.ndim - 1}D image {tuple(array.shape[1:])}, task {task.name} is {task.spatial_dims}D"
        )
    if array.shape[0] != task.in_channels:
        report.errors.append(
            f"{where}: {array.shape[0]} channels, task {task.name} needs {task.in_channels} "
            f"({', '.join(task.channels)})"
        )
    if problem := affine_problem(image):
        report.errors.append(f"{where}: {problem}")
    if array.ndim - 1 == task.spatial_dims and all(size < MIN_SIZE for size in array.shape[1:]):
        report.errors.append(
            f"{where}: image of shape {tuple(array.shape[1:])} is smaller than one patch "
            f"({MIN_SIZE} voxels) on every axis: nothing to learn from"
        )
    finite = np.isfinite(array) if array.dtype.kind == "f" else np.ones(array.shape, dtype=bool)
    if not finite.all():
        report.errors.append(f"{where}: {int((~finite).sum())} non-finite voxels (NaN or inf)")
    if finite.any():
        values = array[finite]
        report.intensity = (float(values.min()), float(values.max()))
        if report.intensity[0] == report.intensity[1]:
            report.warnings.append(f"{where}: every voxel is {report.intensity[0]:g} (a blank image?)")
        if max(-report.intensity[0], report.intensity[1]) > EXTREME_INTENSITY:
            report.errors.append(
                f"{where}: intensities reach {max(report.intensity, key=abs):.3g}, beyond "
                f"+-{EXTREME_INTENSITY:.0e} in any scanner's units (a corrupt file or a wrong scale factor)"
            )


def label_values(labels: np.ndarray) -> set[int]:
    """The distinct values of an integer label map (a histogram where values are small: no sort)."""
    low, high = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
    if 0 <= low and high < 65536:
        return set(np.flatnonzero(np.bincount(labels.ravel().astype(np.intp, copy=False))).tolist())
    return set(np.unique(labels).tolist())


def read_errors(task: TaskSpec, image: Image, label: Image | None = None) -> list[str]:
    """What ``medmae data check`` calls an error in an image (and its label) already read, except a label
    without foreground (a test case may have none): the loaders refuse such a case before any transform."""
    report = CaseReport(Case("", image.path, label.path if label else None))
    _check_image(task, image, report)
    if label is not None:
        _check_label(task, image, label, report, need_foreground=False)
    return report.errors


def _check_label(task: TaskSpec, image: Image, label: Image, report: CaseReport, need_foreground: bool = True) -> None:
    where, array = label.path, label.array
    if array.shape[0] != 1:
        report.errors.append(f"{where}: a label map needs 1 channel, found {array.shape[0]}")
        return
    if array.shape[1:] != image.array.shape[1:]:
        report.errors.append(
            f"{where}: label shape {tuple(array.shape[1:])} differs from image shape {tuple(image.array.shape[1:])}"
        )
        return
    # a broken image affine is named among the image's errors: no comparison with it means anything
    if problem := affine_problem(label):
        report.errors.append(f"{where}: {problem}")
    elif not affine_problem(image) and not np.allclose(label.affine, image.affine, rtol=0, atol=AFFINE_TOLERANCE_MM):
        report.errors.append(
            f"{where}: label affine differs from the image affine (largest difference "
            f"{np.abs(label.affine - image.affine).max():.4g} mm)"
        )
    try:
        values = label_values(integer_labels(label))
    except DataError as error:
        report.errors.append(str(error))
        return
    outside = sorted(values - set(task.label_values))
    if outside:
        report.errors.append(f"{where}: label values {outside} outside the task's {list(task.label_values)}")
    if not values - {0}:
        if need_foreground:
            report.errors.append(f"{where}: label has no foreground at all")
        return
    absent = [name for value, name in enumerate(task.labels) if value and value not in values]
    if absent:
        report.warnings.append(f"{where}: no {', '.join(absent)} in this label")


def check_case(task: TaskSpec, case: Case) -> CaseReport:
    """Read one case and collect its errors and warnings; never raises for bad data."""
    report = CaseReport(case)
    try:
        image = read_channels(case.image_files)
    except DataError as error:
        report.errors.append(str(error))
        image = None
    if image is not None:
        _check_image(task, image, report)
    if case.label is not None:
        try:
            label = read_image(case.label)
        except DataError as error:
            report.errors.append(str(error))
        else:
            if image is not None:
                _check_label(task, image, _on_image_axes(image, label, report), report)
    return report


def _on_image_axes(image: Image, label: Image, report: CaseReport) -> Image:
    """``label`` in the image's orientation where it is the image's grid stored in another one (as training
    reads it, see :func:`medmae.data.readers.on_image_axes`), with a warning saying so."""
    turned = on_image_axes(label, image)
    if turned is not label:
        report.warnings.append(
            f"{label.path}: same physical space as the image, stored in another orientation (axis order "
            f"{axis_codes(label.affine)} vs {axis_codes(image.affine)}): read in the image's orientation"
        )
    return turned


def check_split(task: TaskSpec, split: Split, progress: bool = True) -> list[CaseReport]:
    """Check every case of ``split`` once, in order of case id."""
    cases = split.all_cases()
    return [check_case(task, c) for c in tqdm(cases, desc=f"checking {task.name}", unit="case", disable=not progress)]


def summary_rows(task: TaskSpec, reports: list[CaseReport]) -> list[tuple[str, str]]:
    """(what, value) rows: cases, errors, warnings, shapes, spacings, intensity range."""
    shapes = np.array([r.shape for r in reports if r.shape and len(r.shape) == task.spatial_dims])
    spacings = sorted({r.spacing for r in reports if r.spacing})
    ranges = [r.intensity for r in reports if r.intensity]
    rows = [
        ("cases", str(len(reports))),
        ("cases with errors", str(sum(bool(r.errors) for r in reports))),
        ("cases with warnings", str(sum(bool(r.warnings) for r in reports))),
    ]
    if len(shapes):
        rows.append(("shape min / max", f"{tuple(shapes.min(0).tolist())} / {tuple(shapes.max(0).tolist())}"))
    if spacings and task.spatial_dims == 3:  # PNGs carry no physical spacing
        shown = ", ".join(str(s) for s in spacings[:4]) + (
            f" ... ({len(spacings)} distinct)" if len(spacings) > 4 else ""
        )
        rows.append(("spacing (mm)", shown))
    if ranges:
        rows.append(("intensity min / max", f"{min(r[0] for r in ranges):.6g} / {max(r[1] for r in ranges):.6g}"))
    return rows


def anisotropy_note(spacing: Sequence[float], roi: Sequence[int] | None = None) -> str | None:
    """What it means when one axis of a 3D ``spacing`` (mm per voxel) is over 3x coarser than every other
    axis (nnU-Net's rule for anisotropic data), with the extent of ``roi`` (voxels at that spacing) in mm;
    None for spacing that is not anisotropic."""
    if len(spacing) != 3:
        return None
    coarse = int(np.argmax(spacing))
    ratio = spacing[coarse] / max(s for axis, s in enumerate(spacing) if axis != coarse)
    if ratio <= ANISOTROPY:
        return None
    extent = f"; the ROI {list(roi)} spans {' x '.join(f'{n * s:g}' for n, s in zip(roi, spacing))} mm" if roi else ""
    return (
        f"spacing {' x '.join(f'{s:g}' for s in spacing)} mm is anisotropic: the {ORDINALS[coarse]} axis is "
        f"{ratio:.3g}x coarser than the others (over {ANISOTROPY:g}x: nnU-Net plans such data with that "
        f"low-resolution axis handled apart). Along it voxels and the model's patches are {ratio:.3g}x "
        f"thicker{extent}: check that the ROI suits your structures (roi in the task file), or resample that "
        "axis finer (spacing)"
    )


def spacing_note(task: TaskSpec, reports: list[CaseReport]) -> str | None:
    """:func:`anisotropy_note` for the spacing a 3D task trains at: the task's, else the median of the
    checked images' (per voxel axis)."""
    spacings = [r.spacing for r in reports if r.spacing and len(r.spacing) == 3]
    if task.spatial_dims != 3 or not (task.spacing or spacings):
        return None
    spacing = task.spacing or tuple(round(float(v), 3) for v in np.median(spacings, axis=0))
    return anisotropy_note(spacing, task.roi)
