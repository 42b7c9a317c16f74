"""Sin-cos position embeddings and their resampling to another grid."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medmae.models.pos_embed import resample_pos_embed, sincos_pos_embed


def _ramp(grid, axis):
    coords = torch.meshgrid(*[torch.arange(g, dtype=torch.float32) for g in grid], indexing="ij")
    return coords[axis].reshape(1, -1, 1)


@pytest.mark.parametrize("width,grid", [(48, (3, 4, 3)), (96, (6, 6, 6)), (48, (4, 7)), (768, (14, 14))])
def test_shape_range_and_distinct_positions(width, grid):
    pe = sincos_pos_embed(width, grid)
    n = torch.tensor(grid).prod().item()
    assert pe.shape == (1, n, width) and pe.dtype == torch.float32
    assert pe.abs().max() <= 1.0
    assert torch.unique(pe[0], dim=0).shape[0] == n


@pytest.mark.parametrize("grid", [(3, 4, 5), (4, 7)])
def test_each_axis_gets_its_own_channel_block_in_row_major_order(grid):
    width = 12 * len(grid)
    pe = sincos_pos_embed(width, grid)[0].reshape(*grid, width)
    per_axis = width // len(grid)
    coords = torch.meshgrid(*[torch.arange(g, dtype=torch.float32) for g in grid], indexing="ij")
    for axis, coord in enumerate(coords):
        block = pe[..., axis * per_axis : (axis + 1) * per_axis]
        assert torch.allclose(block[..., 0], torch.sin(coord), atol=1e-6)  # lowest frequency is 1
        assert torch.allclose(block[..., per_axis // 2], torch.cos(coord), atol=1e-6)


def test_width_rules_are_stated():
    with pytest.raises(ValueError, match="divisible by 6 for a 3D"):
        sincos_pos_embed(64, (2, 2, 2))
    with pytest.raises(ValueError, match="divisible by 4 for a 2D"):
        sincos_pos_embed(42, (2, 2))


@pytest.mark.parametrize("grid", [(4, 5), (3, 4, 3)])
def test_resampling_to_the_same_grid_is_exact(grid):
    pe = torch.randn(1, torch.tensor(grid).prod().item(), 12)
    assert torch.equal(resample_pos_embed(pe, grid, grid), pe)


@pytest.mark.parametrize(
    "old,new",
    [((4, 6, 5), (8, 9, 10)), ((6, 6, 6), (4, 3, 5)), ((8, 10), (16, 14)), ((14, 14), (4, 7)), ((1, 3), (2, 3))],
)
def test_resampling_a_ramp_gives_the_ramp_at_the_new_cell_centres(old, new):
    for axis in range(len(old)):
        out = resample_pos_embed(_ramp(old, axis), old, new).reshape(new)
        centres = (torch.arange(new[axis], dtype=torch.float32) + 0.5) * old[axis] / new[axis] - 0.5
        if old[axis] == 1:
            centres = torch.zeros(new[axis])  # a single cell has no slope: it is copied
        view = [1] * len(new)
        view[axis] = -1
        assert torch.allclose(out, centres.reshape(view).expand(new), atol=1e-5), (axis, out)


def test_bicubic_is_smoother_than_linear_on_a_curve():
    """Cubic interpolation of a parabola is exact in the interior (Keys a = -0.5); linear is not."""
    old, new = (10, 1), (25, 1)
    parabola = (torch.arange(10, dtype=torch.float64) ** 2).reshape(1, 10, 1)
    out = resample_pos_embed(parabola, old, new).flatten()
    centres = (torch.arange(25, dtype=torch.float64) + 0.5) * 10 / 25 - 0.5
    interior = (centres >= 1) & (centres <= 8)
    assert torch.allclose(out[interior], centres[interior] ** 2, atol=1e-9)


def test_3d_resampling_is_trilinear_inside_the_grid():
    old, new = (5, 6, 4), (9, 7, 8)
    pe = torch.randn(1, 5 * 6 * 4, 3, dtype=torch.float64)
    out = resample_pos_embed(pe, old, new).reshape(*new, 3)
    volume = pe.reshape(1, *old, 3).permute(0, 4, 1, 2, 3)
    reference = F.interpolate(volume, size=new, mode="trilinear", align_corners=False)[0].permute(1, 2, 3, 0)
    inside = [((torch.arange(n) + 0.5) * o / n - 0.5).clamp(min=-1) for o, n in zip(old, new)]
    keep = [(c >= 0) & (c <= o - 1) for c, o in zip(inside, old)]
    assert torch.allclose(out[keep[0]][:, keep[1]][:, :, keep[2]], reference[keep[0]][:, keep[1]][:, :, keep[2]])
