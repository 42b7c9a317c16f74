import pytest
import torch

from medmae.models.masking import random_masking


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
