"""Masking: random, block and grid masks hide exactly the stated count, keep their shapes' rules, and depend
on each sample's seed only."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.ndimage import label

from medmae.models.masking import (
    block_mask,
    grid_ratios,
    masking_noise,
    random_masking,
    strategy_mask,
    strategy_masks,
    visible_count,
)

GRIDS = [(14, 14), (6, 6, 6), (2, 3, 2), (8, 5), (4, 6, 8)]


def _hidden_by_masking(strategy: str, grid: tuple[int, ...], ratio: float, seeds: list[int]) -> torch.Tensor:
    """``[B, N]`` masks (1 = hidden) as the MAE draws them: strategy noise, then the shared gather."""
    n = math.prod(grid)
    noise = masking_noise(strategy, torch.tensor(seeds), grid, ratio)
    return random_masking(torch.zeros(len(seeds), n, 1), ratio, noise=noise, keep=visible_count(strategy, grid, ratio))[
        1
    ]


@pytest.mark.parametrize("n,ratio", [(36, 0.75), (216, 0.125), (196, 0.9), (10, 0.0)])
def test_kept_and_hidden_partition_the_tokens(n, ratio):
    tokens = torch.arange(3 * n, dtype=torch.float32).reshape(3, n, 1).expand(-1, -1, 4).clone()
    kept, mask, ids_restore = random_masking(tokens, ratio)
    keep = int(n * (1 - ratio))
    assert kept.shape == (3, keep, 4)
    assert torch.equal(mask.sum(dim=1), torch.full((3,), float(n - keep)))
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    for b in range(3):
        kept_ids = (kept[b, :, 0] - b * n).long()
        hidden_ids = torch.nonzero(mask[b]).flatten()
        assert sorted(kept_ids.tolist() + hidden_ids.tolist()) == list(range(n))  # disjoint and complete
        assert torch.all(mask[b, kept_ids] == 0)
        # ids_restore puts [kept, hidden-in-shuffle-order] back in the original order
        shuffled = torch.argsort(ids_restore[b])
        assert torch.equal(shuffled[:keep], kept_ids)


def test_same_seed_same_mask_and_masks_differ_per_sample():
    tokens = torch.randn(4, 64, 8)
    first = random_masking(tokens, 0.75, torch.Generator().manual_seed(7))
    second = random_masking(tokens, 0.75, torch.Generator().manual_seed(7))
    other = random_masking(tokens, 0.75, torch.Generator().manual_seed(8))
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    assert not torch.equal(first[1], other[1])
    assert not torch.equal(first[1][0], first[1][1])


def test_keep_count_truncates_and_bad_ratios_raise():
    kept, _, _ = random_masking(torch.randn(1, 10, 2), 0.75)  # 10 * 0.25 = 2.5 -> 2
    assert kept.shape[1] == 2
    for ratio in (-0.1, 1.0):
        with pytest.raises(ValueError, match="mask_ratio"):
            random_masking(torch.randn(1, 10, 2), ratio)
    with pytest.raises(ValueError, match="no visible token"):
        random_masking(torch.randn(1, 4, 2), 0.9)


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("strategy", ["random", "block"])
@pytest.mark.parametrize("ratio", [0.125, 0.25, 0.5, 0.75, 0.9])
def test_random_and_block_masks_hide_exactly_the_stated_count(strategy, grid, ratio):
    n = math.prod(grid)
    hidden = n - math.floor(n * (1 - ratio) + 1e-6)
    if hidden == n:
        with pytest.raises(ValueError, match="no visible token"):
            visible_count(strategy, grid, ratio)
        return
    masks = _hidden_by_masking(strategy, grid, ratio, list(range(20)))
    assert torch.equal(masks.sum(1), torch.full((20,), float(hidden)))
    if strategy == "block":  # the gather hides exactly the block mask drawn from each seed
        drawn = [strategy_mask("block", grid, ratio, seed) for seed in range(20)]
        assert torch.equal(masks.bool(), torch.from_numpy(np.stack(drawn)))


def test_ratio_products_with_round_off_keep_the_exact_count():
    assert 10 * (1 - 0.9) < 1 and visible_count("random", (10,), 0.9) == 1  # 0.9999999999999998 in floats
    assert visible_count("random", (10,), 0.75) == 2  # 2.5 truncated


@pytest.mark.parametrize("grid", GRIDS)
def test_block_masks_are_unions_of_connected_boxes(grid):
    n, topped_up = math.prod(grid), 0
    for seed, ratio in itertools.product(range(10), (0.25, 0.5, 0.75)):
        hidden = n - visible_count("block", grid, ratio)
        mask, boxes = block_mask(grid, hidden, seed)
        union = np.zeros(grid, dtype=bool)
        for k, (start, size, prefix) in enumerate(boxes):
            assert prefix == math.prod(size) or k == len(boxes) - 1  # only the last box is trimmed
            cells = np.zeros(size, dtype=bool).reshape(-1)
            cells[:prefix] = True  # a row-major prefix of the box
            cells = cells.reshape(size)
            assert label(cells)[1] == 1  # connected (faces)
            region = tuple(slice(a, a + s) for a, s in zip(start, size))
            union[region] |= cells
        assert mask.sum() == hidden and not (union.reshape(-1) & ~mask).any()
        topped_up += int(union.sum() != hidden)  # the boxes fell short and the seed's order hid the rest
    assert topped_up <= 1


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize(("strategy", "ratio"), [("block", 0.5), ("block", 0.75), ("grid", None)])
def test_device_masks_equal_their_host_reference_sample_by_sample(grid, strategy, ratio):
    """The batch's masks drawn at once (as on the GPU, no host round trip) equal the host reference drawn
    seed by seed, for every strategy that is not plain random."""
    if strategy == "grid":
        steps = [k for k in grid_ratios(grid) if k > 1]
        if not steps:
            return
        ratio = round(grid_ratios(grid)[steps[0]], 3)
    seeds = torch.tensor([0, 1, 7, 123456, 2**31 - 2])
    batch = strategy_masks(strategy, seeds, grid, ratio)
    host = np.stack([strategy_mask(strategy, grid, ratio, int(seed)) for seed in seeds])
    assert batch.dtype == torch.bool and np.array_equal(batch.numpy(), host)


def test_block_masks_are_blocky_and_random_masks_are_not():
    grid, ratio = (14, 14), 0.5
    pieces = {
        strategy: np.mean([label(strategy_mask(strategy, grid, ratio, s).reshape(grid))[1] for s in range(50)])
        for strategy in ("block",)
    }
    random_pieces = np.mean(
        [label(_hidden_by_masking("random", grid, ratio, [s])[0].bool().numpy().reshape(grid))[1] for s in range(50)]
    )
    assert pieces["block"] < random_pieces / 3


@pytest.mark.parametrize("grid", [(14, 14), (12, 12), (6, 6, 6), (4, 8, 12), (8, 8, 8)])
def test_grid_masks_keep_one_patch_in_every_k_along_each_axis(grid):
    for k, ratio in grid_ratios(grid).items():
        if k == 1:
            continue
        masks = _hidden_by_masking("grid", grid, round(ratio, 3), list(range(12)))
        assert torch.equal(masks.sum(1), torch.full((12,), float(math.prod(grid) - math.prod(grid) // k ** len(grid))))
        for row in masks:
            kept = np.argwhere(~row.bool().numpy().reshape(grid))  # [N / k^d, d] coordinates
            offset = kept.min(0)
            assert (offset < k).all() and ((kept - offset) % k == 0).all()  # a regular lattice of step k
            assert len(kept) == math.prod(g // k for g in grid)
        offsets = {tuple(np.argwhere(~row.bool().numpy().reshape(grid)).min(0)) for row in masks}
        assert len(offsets) > 1  # the lattice's offset is drawn per sample


def test_grid_masking_refuses_other_ratios_and_lists_the_allowed_ones():
    with pytest.raises(
        ValueError, match=r"one of 0 \(k=1\), 0\.875 \(k=2\), 0\.963 \(k=3\), 0\.9954 \(k=6\); not 0\.75"
    ):
        visible_count("grid", (6, 6, 6), 0.75)
    with pytest.raises(ValueError, match=r"0\.75 \(k=2\).*not 0\.5"):
        visible_count("grid", (14, 14), 0.5)
    assert visible_count("grid", (6, 6, 6), 0.963) == 8  # 1 - 1/27 given to 3 decimals
    with pytest.raises(ValueError, match="choose one of random, block, grid"):
        visible_count("checkerboard", (6, 6, 6), 0.5)


@pytest.mark.parametrize("strategy", ["random", "block", "grid"])
def test_a_samples_mask_depends_on_its_seed_only(strategy):
    grid, ratio = (6, 6, 6), 0.875
    batch = masking_noise(strategy, torch.tensor([5, 9, 11]), grid, ratio)
    alone = masking_noise(strategy, torch.tensor([9]), grid, ratio)
    assert torch.equal(batch[1:2], alone)
    assert not torch.equal(batch[0], batch[2])
