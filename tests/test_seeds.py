"""Seeds: SplitMix64 noise of (stream, seed, token), and the vectorised item and crop seeds."""

from __future__ import annotations

import pytest
import torch

from medmae.seeds import crop_seed, crop_seeds, item_seed, item_seeds, seeded_noise


def _splitmix64_uniform(seed: int, token: int, tokens: int) -> float:
    """Reference SplitMix64 in Python's unbounded integers, reduced mod 2^64 by hand."""
    m = (1 << 64) - 1
    z = ((seed * tokens + token + 1) * 0x9E3779B97F4A7C15) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return ((z ^ (z >> 31)) >> 11) * 2.0**-53


def test_seeded_noise_is_splitmix64_of_seed_and_token():
    seeds = torch.tensor([0, 1, 2**31 - 2, 987654])
    noise = seeded_noise(seeds, 27)
    assert noise.shape == (4, 27) and noise.dtype == torch.float64
    expected = torch.tensor(
        [[_splitmix64_uniform(int(s), j, 27) for j in range(27)] for s in seeds], dtype=torch.float64
    )
    assert torch.equal(noise, expected)


def test_seeded_noise_rows_depend_on_their_seed_only_and_look_uniform():
    rows = seeded_noise(torch.arange(5000), 64)
    assert torch.equal(seeded_noise(torch.tensor([4321, 7]), 64), rows[[4321, 7]])
    assert abs(rows.mean().item() - 0.5) < 0.005 and abs(rows.var().item() - 1 / 12) < 0.002
    assert 0.0 <= rows.min().item() and rows.max().item() < 1.0
    assert len({tuple(torch.argsort(r).tolist()) for r in rows}) == 5000  # no two samples share a mask order


def test_seeded_noise_streams_are_apart_and_bad_sizes_are_refused():
    seeds = torch.arange(100)
    masks, crops = seeded_noise(seeds, 6), seeded_noise(seeds, 6, stream=1)
    assert not torch.isin(masks, crops).any()  # crops and masks of one sample draw unrelated numbers
    with pytest.raises(ValueError, match="tokens"):
        seeded_noise(seeds, 2**17)


def test_vectorised_seeds_equal_the_per_item_rules():
    indices = torch.tensor([5, 0, 17, 3])
    seeds = item_seeds(11, 4003, indices)
    assert seeds.tolist() == [item_seed(11, 4003, i) for i in indices.tolist()]
    assert crop_seeds(seeds, 3).tolist() == [crop_seed(s, k) for s in seeds.tolist() for k in range(3)]
