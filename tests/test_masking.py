import pytest
import torch

from medmae.models.masking import random_masking, seeded_noise


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
    expected = torch.tensor([[_splitmix64_uniform(int(s), j, 27) for j in range(27)] for s in seeds], dtype=torch.float64)
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
