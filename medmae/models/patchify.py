"""Cutting images into non-overlapping patches and putting them back, for 2D and 3D.

Token order is row-major over the patch grid, the same order as a strided convolution's output
flattened by ``x.flatten(2)`` (MONAI's ``PatchEmbeddingBlock``), so token ``i`` of ``patchify`` is
token ``i`` of the encoder. Inside a patch, values are ordered ``(p_1, ..., p_d, C)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def as_tuple(value: int | Sequence[int], spatial_dims: int, name: str) -> tuple[int, ...]:
    """Expand an int to ``spatial_dims`` copies; check a sequence has that length and positive values."""
    values = (value,) * spatial_dims if isinstance(value, int) else tuple(int(v) for v in value)
    if len(values) != spatial_dims or any(v <= 0 for v in values):
        raise ValueError(f"{name}={value!r}: expected {spatial_dims} positive sizes")
    return values


def grid_size(img_size: Sequence[int], patch_size: Sequence[int]) -> tuple[int, ...]:
    """Patches per axis; every image size must be a multiple of its patch size."""
    if len(img_size) != len(patch_size):
        raise ValueError(f"img_size {tuple(img_size)} and patch_size {tuple(patch_size)} differ in length")
    if any(s % p for s, p in zip(img_size, patch_size)):
        raise ValueError(f"img_size {tuple(img_size)} is not a multiple of patch_size {tuple(patch_size)}")
    return tuple(s // p for s, p in zip(img_size, patch_size))


def patchify(x: torch.Tensor, patch_size: Sequence[int]) -> torch.Tensor:
    """Cut images into patches.

    Args:
        x: ``[B, C, *S]`` with ``len(S) == len(patch_size)`` (2 or 3); each ``S_i`` a multiple of ``p_i``.
        patch_size: ``(p_1, ..., p_d)``.

    Returns:
        ``[B, N, prod(p) * C]`` with ``N = prod(S_i // p_i)``.
    """
    dims = len(patch_size)
    if x.ndim != dims + 2:
        raise ValueError(f"expected a [B, C, *S] tensor with {dims} spatial dims, got shape {tuple(x.shape)}")
    b, c = x.shape[:2]
    grid = grid_size(x.shape[2:], patch_size)
    split = [b, c]
    for g, p in zip(grid, patch_size):
        split += [g, p]
    x = x.reshape(split)
    # [B, C, g1, p1, ..., gd, pd] -> [B, g1..gd, p1..pd, C]
    order = [0] + [2 + 2 * i for i in range(dims)] + [3 + 2 * i for i in range(dims)] + [1]
    return x.permute(order).reshape(b, -1, c * math.prod(patch_size))


def unpatchify(patches: torch.Tensor, patch_size: Sequence[int], img_size: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`patchify`.

    Args:
        patches: ``[B, N, prod(p) * C]``.
        patch_size: ``(p_1, ..., p_d)``.
        img_size: ``(S_1, ..., S_d)``; gives the grid, so non-square and non-cubic images come back right.

    Returns:
        ``[B, C, *img_size]``.
    """
    dims = len(patch_size)
    grid = grid_size(img_size, patch_size)
    b, n, length = patches.shape
    voxels = math.prod(patch_size)
    if n != math.prod(grid) or length % voxels:
        raise ValueError(
            f"patches of shape {tuple(patches.shape)} do not fit img_size {tuple(img_size)} "
            f"with patch_size {tuple(patch_size)}"
        )
    c = length // voxels
    x = patches.reshape(b, *grid, *patch_size, c)
    # [B, g1..gd, p1..pd, C] -> [B, C, g1, p1, ..., gd, pd]
    order = [0, 2 * dims + 1]
    for i in range(dims):
        order += [1 + i, 1 + dims + i]
    return x.permute(order).reshape(b, c, *img_size)


def upsampling_stages(patch_size: Sequence[int]) -> list[tuple[int, ...]]:
    """Per-axis factors of the x2 up-sampling stages that take a patch grid back to full resolution,
    coarsest first; an axis with a smaller patch skips the finest stages: ``(8, 8, 4)`` -> ``[(2, 2, 2),
    (2, 2, 2), (2, 2, 1)]``. Each axis must be a power of two, at least one of them >= 2."""
    logs = [math.log2(p) if p > 0 else -1.0 for p in patch_size]
    if any(log < 0 or not log.is_integer() for log in logs) or max(logs) < 1:
        raise ValueError(f"patch_size {list(patch_size)}: a decoder needs a power of two per axis, one of them >= 2")
    return [tuple(2 if j < log else 1 for log in logs) for j in range(int(max(logs)))]
