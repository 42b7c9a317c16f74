"""Fixed sin-cos position embeddings for 2D and 3D patch grids, and their resampling to other grids."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def sincos_pos_embed(width: int, grid: Sequence[int]) -> torch.Tensor:
    """Fixed sin-cos embedding of a 2D or 3D patch grid.

    Each axis gets ``width / d`` channels (half sine, half cosine, frequencies ``1 / 10000^(k / m)``),
    so ``width`` must be divisible by 4 in 2D and by 6 in 3D.

    Args:
        width: embedding width ``D``.
        grid: patches per axis ``(g_1, ..., g_d)``, ``d`` = 2 or 3.

    Returns:
        ``[1, N, D]`` float32, ``N = prod(grid)``, tokens in row-major grid order (as :func:`patchify`).
    """
    dims = len(grid)
    if dims not in (2, 3):
        raise ValueError(f"grid {tuple(grid)}: sin-cos position embeddings exist for 2D and 3D grids only")
    if width % (2 * dims):
        raise ValueError(f"width {width} must be divisible by {2 * dims} for a {dims}D sin-cos position embedding")
    per_axis = width // dims
    omega = 1.0 / 10000 ** (torch.arange(per_axis // 2, dtype=torch.float64) / (per_axis // 2))
    coords = torch.meshgrid(*[torch.arange(g, dtype=torch.float64) for g in grid], indexing="ij")
    parts = []
    for axis_coords in coords:
        angles = axis_coords.reshape(-1, 1) * omega.reshape(1, -1)  # [N, per_axis / 2]
        parts += [torch.sin(angles), torch.cos(angles)]
    return torch.cat(parts, dim=1).float().unsqueeze(0)


def _keys_cubic(distance: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    """Keys' cubic convolution kernel; with ``a = -0.5`` it reproduces polynomials up to degree 2."""
    d = distance.abs()
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return torch.where(d <= 1, near, torch.where(d < 2, far, torch.zeros_like(d)))


def _linear(distance: torch.Tensor) -> torch.Tensor:
    return (1 - distance.abs()).clamp(min=0)


def resample_matrix(old: int, new: int, cubic: bool) -> torch.Tensor:
    """``[new, old]`` weights that resample one axis of ``old`` cells to ``new`` cells.

    Cells are mapped by their centres (new cell ``j`` reads old coordinate ``(j + 0.5) * old / new - 0.5``).
    Taps beyond the border read the line through the two outermost cells (linear extrapolation), so a
    linear ramp comes back exactly as the ramp at the new coordinates, also near the border.
    """
    source = (torch.arange(new, dtype=torch.float64) + 0.5) * old / new - 0.5
    base = source.floor()
    kernel, taps = (_keys_cubic, (-1, 0, 1, 2)) if cubic else (_linear, (0, 1))
    weights = torch.zeros(new, old, dtype=torch.float64)
    rows = torch.arange(new)
    for tap in taps:
        index = base + tap
        w = kernel(source - index)
        if old == 1:
            weights[:, 0] += w
            continue
        below, above = (-index).clamp(min=0), (index - (old - 1)).clamp(min=0)
        inside = index.clamp(0, old - 1).long()
        weights.index_put_((rows, inside), w * (1 + below + above), accumulate=True)
        weights.index_put_((rows, torch.full_like(inside, 1)), -w * below, accumulate=True)
        weights.index_put_((rows, torch.full_like(inside, old - 2)), -w * above, accumulate=True)
    return weights


def resample_pos_embed(pos_embed: torch.Tensor, old_grid: Sequence[int], new_grid: Sequence[int]) -> torch.Tensor:
    """Resample a position embedding to another patch grid: bicubic in 2D, trilinear in 3D.

    Separable, one axis at a time (:func:`resample_matrix`): cubic convolution (Keys, ``a = -0.5``) in 2D,
    linear in 3D; cells mapped by their centres; linear extrapolation past the outermost cells. A linear
    ramp therefore resamples to the exact ramp, and the same grid returns the input unchanged.

    Args:
        pos_embed: ``[1, N_old, D]`` in row-major order over ``old_grid``.
        old_grid, new_grid: patches per axis, both of the same length (2 or 3).

    Returns:
        ``[1, N_new, D]`` in the dtype of ``pos_embed``.
    """
    old_grid, new_grid = tuple(old_grid), tuple(new_grid)
    if len(old_grid) != len(new_grid) or len(old_grid) not in (2, 3):
        raise ValueError(f"cannot resample a position embedding from grid {old_grid} to grid {new_grid}")
    n, width = pos_embed.shape[1:]
    if n != math.prod(old_grid):
        raise ValueError(f"position embedding holds {n} tokens, grid {old_grid} needs {math.prod(old_grid)}")
    if old_grid == new_grid:
        return pos_embed.clone()
    grid = pos_embed.detach().to(torch.float64).reshape(*old_grid, width)
    for axis, (old, new) in enumerate(zip(old_grid, new_grid)):
        matrix = resample_matrix(old, new, cubic=len(old_grid) == 2)
        grid = torch.movedim(torch.tensordot(matrix, grid, dims=([1], [axis])), 0, axis)
    return grid.reshape(1, -1, width).to(pos_embed.dtype)
