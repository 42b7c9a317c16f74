"""Segmentation metrics per case and class, from raw counts: DSC, HD95 in millimetres, TP/FP/FN.

HD95: the surface of a mask is the mask minus its erosion with full connectivity (voxels on the image
border count as surface). For each direction, the distances (in mm, using the voxel spacing) from one
mask's surface voxels to the nearest surface voxel of the other mask; the 95th percentile (linear
interpolation) of each directed set; HD95 is the larger of the two (MONAI's definition).

Empty masks: both empty -> DSC and HD95 undefined (NaN), left out of means. One side empty -> DSC 0 and
HD95 undefined, or ``penalty_mm`` (the BraTS challenges use 373.13 mm) when given; either way the row
says which side was empty.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure

BRATS_PENALTY_MM = 373.13


@dataclass(frozen=True)
class MaskScore:
    """The scores of one predicted mask against one reference mask."""

    dsc: float
    hd95_mm: float
    tp: int
    fp: int
    fn: int
    n_ref: int
    n_pred: int
    empty: str  # "", "both", "reference" or "prediction"
    hd95_penalised: bool


def surface(mask: np.ndarray) -> np.ndarray:
    """Mask minus its erosion with full connectivity; outside the array counts as background."""
    structure = generate_binary_structure(mask.ndim, mask.ndim)
    return mask & ~binary_erosion(mask, structure=structure, border_value=0)


def _union_box(a: np.ndarray, b: np.ndarray) -> tuple[slice, ...]:
    """The bounding box of ``a | b``. Surfaces and distances inside it equal those of the whole array (a
    mask voxel on the box's edge has background beyond it either way), at a fraction of the cost."""
    coords = np.argwhere(a | b)
    return tuple(slice(lo, hi + 1) for lo, hi in zip(coords.min(0), coords.max(0)))


def directed_surface_distances(source: np.ndarray, target: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Distances (mm) from every surface voxel of ``source`` to the nearest surface voxel of ``target``."""
    to_target = distance_transform_edt(~surface(target), sampling=spacing)
    return to_target[surface(source)]


def hd95_mm(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> float:
    """95th-percentile symmetric Hausdorff distance (mm) between two non-empty masks."""
    box = _union_box(pred, ref)
    pred, ref = pred[box], ref[box]
    return float(
        max(
            np.percentile(directed_surface_distances(pred, ref, spacing), 95),
            np.percentile(directed_surface_distances(ref, pred, spacing), 95),
        )
    )


def dice(tp: ArrayLike, n_pred: ArrayLike, n_ref: ArrayLike) -> np.ndarray:
    """DSC ``2 TP / (|pred| + |ref|)`` from counts (scalars, or arrays such as one count per class), in
    float64; NaN where both masks are empty, 0 where one is. Validation and scoring both call this."""
    total = np.asarray(n_pred, dtype=np.float64) + np.asarray(n_ref, dtype=np.float64)
    return np.where(total > 0, 2 * np.asarray(tp, dtype=np.float64) / np.maximum(total, 1), np.nan)


def dice_per_class(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """``[F, *S]`` boolean masks, one per scored class -> DSC ``[F]`` (:func:`dice` of their counts)."""
    axes = tuple(range(1, pred.ndim))
    return dice(
        np.count_nonzero(pred & ref, axis=axes), np.count_nonzero(pred, axis=axes), np.count_nonzero(ref, axis=axes)
    )


def score_masks(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], penalty_mm: float | None = None
) -> MaskScore:
    """Score one binary prediction against one binary reference of the same grid.

    Args:
        pred, ref: boolean arrays ``[*S]``; spacing: voxel size per axis in mm.
        penalty_mm: HD95 given when exactly one side is empty (default: undefined, NaN).
    """
    if pred.shape != ref.shape or len(spacing) != pred.ndim:
        raise ValueError(f"prediction {pred.shape}, reference {ref.shape} and spacing {tuple(spacing)} do not match")
    pred = pred.astype(bool)
    ref = ref.astype(bool)
    tp = int(np.count_nonzero(pred & ref))
    n_pred = int(np.count_nonzero(pred))
    n_ref = int(np.count_nonzero(ref))
    counts = {"tp": tp, "fp": n_pred - tp, "fn": n_ref - tp, "n_ref": n_ref, "n_pred": n_pred}
    dsc = float(dice(tp, n_pred, n_ref))
    if n_pred == 0 and n_ref == 0:
        return MaskScore(dsc, float("nan"), **counts, empty="both", hd95_penalised=False)
    if n_pred == 0 or n_ref == 0:
        penalised = penalty_mm is not None
        hd95 = float(penalty_mm) if penalised else float("nan")
        empty = "prediction" if n_pred == 0 else "reference"
        return MaskScore(dsc, hd95, **counts, empty=empty, hd95_penalised=penalised)
    return MaskScore(dsc, hd95_mm(pred, ref, spacing), **counts, empty="", hd95_penalised=False)


def class_masks(label: np.ndarray, classes: dict[str, Sequence[int]]) -> dict[str, np.ndarray]:
    """A label map ``[*S]`` -> one boolean mask per class, each the set of its label values."""
    return {name: np.isin(label, list(values)) for name, values in classes.items()}
