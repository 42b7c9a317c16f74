"""Segmentation metrics against hand computations, an independent HD95 (explicit 6- or 26-neighbour
surfaces, KD-tree distances in millimetres) and MONAI's, including the real hippocampus labels; the
empty-mask rule."""

from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import binary_erosion, gaussian_filter
from scipy.spatial import cKDTree

from medmae.evaluation.metrics import BRATS_PENALTY_MM, image_diagonal_mm, score_masks
from tests.helpers import shared

SPACING = (0.8, 0.8, 3.0)


def independent_hd95(a, b, spacing, connectivity="face"):
    """Surface: a voxel of the mask with any of its 6 face (or all 26) neighbours outside it (outside the
    array counts as outside). Distances: nearest surface point of the other mask by KD-tree, in mm."""

    def surface_points(mask):
        padded = np.pad(mask, 1)
        inner = np.ones_like(mask)
        for offset in itertools.product((-1, 0, 1), repeat=3):
            if connectivity == "face" and np.count_nonzero(offset) > 1:
                continue
            inner &= padded[tuple(slice(1 + o, 1 + o + n) for o, n in zip(offset, mask.shape))]
        return np.argwhere(mask & ~inner) * np.asarray(spacing)

    pa, pb = surface_points(a), surface_points(b)
    d_ab, _ = cKDTree(pb).query(pa)
    d_ba, _ = cKDTree(pa).query(pb)
    return max(np.percentile(d_ab, 95), np.percentile(d_ba, 95))


def box(shape, start, size):
    mask = np.zeros(shape, bool)
    mask[tuple(slice(s, s + n) for s, n in zip(start, size))] = True
    return mask


def hippocampus_labels():
    root = shared("msd_hippocampus")
    images = sorted((root / "labelsTr").glob("hippocampus_*.nii.gz"))[:2]
    loaded = [nib.load(p) for p in images]
    return [np.asarray(i.dataobj) for i in loaded], tuple(float(z) for z in loaded[0].header.get_zooms())


@pytest.mark.parametrize("offset", [(1, 0, 0), (0, 3, 0), (0, 0, 2), (2, 1, 1), (4, 0, 3)])
def test_offset_boxes_on_an_anisotropic_grid(offset):
    size = (10, 8, 6)
    ref = box((30, 30, 20), (5, 5, 5), size)
    pred = box((30, 30, 20), np.add((5, 5, 5), offset), size)
    overlap = np.prod([n - o for n, o in zip(size, offset)])
    score = score_masks(pred, ref, SPACING)
    assert (score.tp, score.fp, score.fn) == (overlap, np.prod(size) - overlap, np.prod(size) - overlap)
    assert score.dsc == pytest.approx(2 * overlap / (2 * np.prod(size)))  # by hand
    assert score.hd95_mm == pytest.approx(independent_hd95(pred, ref, SPACING), abs=1e-9)


def test_a_box_offset_along_one_axis_by_hand():
    """Offset by 2 slices on a 1 mm grid: no surface point is more than 2 mm from the other surface and
    well over 5 % (the moved top and bottom faces) are exactly 2 mm away, so HD95 is 2 mm."""
    ref = box((20, 20, 20), (5, 5, 5), (6, 6, 8))
    pred = box((20, 20, 20), (5, 5, 7), (6, 6, 8))
    assert score_masks(pred, ref, SPACING).hd95_mm == pytest.approx(independent_hd95(pred, ref, SPACING))
    assert score_masks(pred, ref, (1.0, 1.0, 1.0)).hd95_mm == pytest.approx(2.0)
    assert score_masks(ref, ref, SPACING).hd95_mm == 0.0 and score_masks(ref, ref, SPACING).dsc == 1.0


@pytest.mark.parametrize("seed", range(6))
def test_irregular_blobs_touching_the_border_agree_with_the_independent_hd95(seed):
    """Irregular shapes make the surface connectivity, the percentile rule and the direction matter."""
    rng = np.random.default_rng(seed)
    blobs = [gaussian_filter(rng.normal(size=(24, 20, 12)), 2.0) for _ in range(2)]
    a, b = (blob > np.percentile(blob, 70) for blob in blobs)
    b[0, :, :] |= a[0, :, :]  # both touch the array's border
    assert a[0].any() and b[0].any()
    score = score_masks(a, b, SPACING)
    assert abs(score.hd95_mm - independent_hd95(a, b, SPACING)) < 1e-9
    assert abs(score_masks(b, a, SPACING).hd95_mm - score.hd95_mm) < 1e-9  # symmetric
    full = score_masks(a, b, SPACING, connectivity="full").hd95_mm
    assert abs(full - independent_hd95(a, b, SPACING, "full")) < 1e-9


def test_an_unknown_surface_rule_is_refused():
    with pytest.raises(ValueError, match="surface connectivity 'edge'"):
        score_masks(box((9, 9, 9), (2, 2, 2), (3, 3, 3)), box((9, 9, 9), (3, 3, 3), (3, 3, 3)), SPACING, None, "edge")


@pytest.mark.parametrize("penalty", [None, BRATS_PENALTY_MM])
def test_the_empty_mask_rule(penalty):
    """One side empty: HD95 is the penalty (by default the image diagonal: 9 voxels of 0.8, 0.8 and 3 mm
    across), never undefined; both empty: undefined."""
    empty, ref = np.zeros((10, 10, 10), bool), box((10, 10, 10), (2, 2, 2), (3, 3, 3))
    both = score_masks(empty, empty, SPACING, penalty)
    assert np.isnan(both.dsc) and np.isnan(both.hd95_mm) and both.empty == "both" and not both.hd95_penalised
    expected = penalty if penalty is not None else float(np.sqrt(2 * 7.2**2 + 27.0**2))
    for pred, reference, side in ((empty, ref, "prediction"), (ref, empty, "reference")):
        score = score_masks(pred, reference, SPACING, penalty)
        assert score.dsc == 0.0 and score.empty == side and score.hd95_penalised
        assert score.hd95_mm == pytest.approx(expected) and score.penalty_mm == pytest.approx(expected)
    assert (score.n_ref, score.n_pred, score.fp) == (0, 27, 27)
    assert image_diagonal_mm((10, 10, 10), SPACING) == pytest.approx(np.sqrt(2 * 7.2**2 + 27.0**2))


def test_real_hippocampus_labels_agree_with_the_independent_hd95():
    (first, second), spacing = hippocampus_labels()
    spacing = (spacing[0], spacing[1] * 1.3, spacing[2] * 2.1)  # anisotropic on purpose
    other = np.zeros_like(first)
    common = tuple(slice(0, min(a, b)) for a, b in zip(first.shape, second.shape))
    other[common] = second[common]  # another case's label placed on the same grid
    for value in (1, 2):
        ref = first == value
        shifted = np.zeros_like(ref)
        shifted[2:, :, 1:] = ref[:-2, :, :-1]
        eroded = binary_erosion(ref)
        for pred in (shifted, eroded, other == value):
            score = score_masks(pred, ref, spacing)
            assert abs(score.hd95_mm - independent_hd95(pred, ref, spacing)) < 1e-6
            assert score.hd95_mm > 0


def monai_hd95(pred, ref, spacing):
    """MONAI's HD95 of two binary masks, as ``compute_hausdorff_distance`` computes it for one class."""
    import torch
    from monai.metrics import compute_hausdorff_distance

    def one_hot(mask):
        return torch.from_numpy(np.stack([~mask, mask])[None].astype(np.float32))

    value = compute_hausdorff_distance(one_hot(pred), one_hot(ref), percentile=95, spacing=list(spacing))
    return float(value[0, 0])


def test_face_connectivity_agrees_with_monai_on_real_hippocampus_labels():
    """medmae's default surfaces are MONAI's: within 1e-4 mm on real labels (shifted, eroded, another
    case's label), on an anisotropic grid; the full-connectivity option gives lower values, as it should."""
    (first, second), spacing = hippocampus_labels()
    spacing = (spacing[0], spacing[1] * 1.3, spacing[2] * 2.1)
    other = np.zeros_like(first)
    common = tuple(slice(0, min(a, b)) for a, b in zip(first.shape, second.shape))
    other[common] = second[common]
    for value in (1, 2):
        ref = first == value
        shifted = np.zeros_like(ref)
        shifted[2:, :, 1:] = ref[:-2, :, :-1]
        for pred in (shifted, binary_erosion(ref), other == value):
            face = score_masks(pred, ref, spacing).hd95_mm
            assert abs(face - monai_hd95(pred, ref, spacing)) < 1e-4
            assert score_masks(pred, ref, spacing, connectivity="full").hd95_mm <= face
