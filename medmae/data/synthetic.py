"""A synthetic CT-like demo set in the BTCV layout, so the whole pipeline runs with no download.

Each case: air (-1000 HU) around a body ellipsoid (fat shell -90 HU, soft tissue 30 HU) holding four
organs of their own HU (liver 60, spleen 45, right and left kidney 150), with random body shape and
position, random organ size and position, and Gaussian noise (15 HU). 3 mm voxels, RAS affine.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from medmae.files import write_nifti, write_text

SHAPE = (64, 64, 48)
SPACING_MM = 3.0
ORGANS = (  # label, HU, centre (fraction of the body's semi-axes; RAS+: +x the patient's right,
    #          +y anterior, +z superior), semi-axes (mm)
    (1, 60, (0.35, 0.15, 0.1), (55, 45, 50)),  # liver, on the patient's right
    (2, 45, (-0.45, -0.25, 0.2), (28, 22, 30)),  # spleen, left and posterior
    (3, 150, (0.4, -0.45, -0.15), (16, 18, 28)),  # right kidney
    (4, 150, (-0.4, -0.45, -0.1), (16, 18, 28)),  # left kidney
)


def demo_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One volume (int16 HU) and its label map (uint8), both of shape ``SHAPE``."""
    axes = [(np.arange(n) - (n - 1) / 2) * SPACING_MM for n in SHAPE]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    centre = rng.uniform(-8, 8, 3)
    semi = np.array([85, 62, 80]) * rng.uniform(0.9, 1.1, 3)
    x, y, z = x - centre[0], y - centre[1], z - centre[2]
    body = (x / semi[0]) ** 2 + (y / semi[1]) ** 2 + (z / semi[2]) ** 2
    image = np.full(SHAPE, -1000.0)
    image[body <= 1] = -90.0
    image[body <= 0.8] = 30.0
    label = np.zeros(SHAPE, dtype=np.uint8)
    for value, hu, where, size in ORGANS:
        c = np.array(where) * semi * 0.8 + rng.uniform(-8, 8, 3)
        r = np.array(size) * rng.uniform(0.85, 1.15, 3)
        inside = ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2 <= 1
        inside &= body <= 0.8
        image[inside] = hu
        label[inside] = value
    image += rng.normal(0, 15, SHAPE)
    return np.clip(np.round(image), -1024, 3071).astype(np.int16), label


def demo_affine() -> np.ndarray:
    affine = np.diag([SPACING_MM] * 3 + [1.0])
    affine[:3, 3] = -(np.array(SHAPE) - 1) / 2 * SPACING_MM
    return affine


def write_demo_dataset(root: str | Path, cases: int = 12, validation: int = 2, seed: int = 0) -> Path:
    """Write ``cases`` cases to ``root`` (``imagesTr/imgNNNN.nii.gz``, ``labelsTr/labelNNNN.nii.gz``) and a
    ``dataset_0.json`` listing the last ``validation`` cases as validation. Same seed, same data."""
    if cases < 2 or not 0 < validation < cases:
        raise ValueError(f"cases={cases}, validation={validation}: need at least 2 cases and 1 <= validation < cases")
    root = Path(root)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    affine = demo_affine()
    entries = []
    for k in range(1, cases + 1):
        image, label = demo_case(rng)
        entry = {"image": f"imagesTr/img{k:04d}.nii.gz", "label": f"labelsTr/label{k:04d}.nii.gz"}
        write_nifti(nib.Nifti1Image(image, affine), root / entry["image"])
        write_nifti(nib.Nifti1Image(label, affine), root / entry["label"])
        entries.append(entry)
    datalist = {
        "name": "medmae demo",
        "description": f"synthetic CT-like volumes, seed {seed}",
        "labels": {"0": "background", "1": "liver", "2": "spleen", "3": "right_kidney", "4": "left_kidney"},
        "training": entries[:-validation],
        "validation": entries[-validation:],
    }
    write_text(root / "dataset_0.json", json.dumps(datalist, indent=1) + "\n")
    return root
