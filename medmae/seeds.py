"""Seeds and seeded noise: every random draw of a sample (its crops, flips and mask) is a pure function of
the run seed, the pass over the data, the case and the crop, so it does not depend on the worker, the
process or the batch the sample lands in.

Used by ``medmae.data`` (crop positions and flips) and ``medmae.models`` (masks); it imports neither.
"""

from __future__ import annotations

import torch

from medmae.config import MAX_CROPS


def item_seed(seed: int, key: int, index: int) -> int:
    """The seed of one item: a function of the run seed, the pass over the data and the case index only,
    so an item's crops, flips and masks do not depend on the worker, the process or the batch it lands in."""
    return ((seed * 1_000_003 + key) * 1_000_033 + index) % (2**31 - 1)


def crop_seed(seed: int, crop: int) -> int:
    """The seed of crop ``crop`` (< MAX_CROPS) of the item seeded ``seed``: its mask and, on the cached
    path, its position and flips. Item seeds are consecutive within a pass, so crop seeds never meet."""
    return (seed * MAX_CROPS + crop) % (2**31 - 1)


def item_seeds(seed: int, key: int, indices: torch.Tensor) -> torch.Tensor:
    """:func:`item_seed` of each of ``indices`` ``[N]`` (int64) -> ``[N]``."""
    return (item_seed(seed, key, 0) + indices) % (2**31 - 1)


def crop_seeds(seeds: torch.Tensor, copies: int) -> torch.Tensor:
    """:func:`crop_seed` of crops ``0 .. copies - 1`` of each item seed ``[N]`` -> ``[N x copies]``, item-major."""
    crops = torch.arange(copies, dtype=torch.int64)
    return ((seeds[:, None] * MAX_CROPS + crops) % (2**31 - 1)).flatten()


_GOLDEN, _MIX1, _MIX2 = (c - (1 << 64) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


STREAM_BITS = 48  # counters of different streams never meet while seed * count < 2^48


def seeded_noise(seeds: torch.Tensor, tokens: int, stream: int = 0) -> torch.Tensor:
    """Uniform noise in ``[0, 1)`` that is a pure function of (stream, seed, token): ``seeds`` ``[B]``
    (ints in ``[0, 2^31)``) -> ``[B, tokens]`` float64, on ``seeds.device``.

    SplitMix64 (Steele et al., 2014) of the counter ``stream * 2^48 + seed * tokens + token``, in int64
    arithmetic that wraps the same way on CPU and GPU: no generator objects, no host work per sample, so
    a batch's masks (stream 0) and crops (stream 1) are drawn where the batch lives without a host-device
    round trip, and each sample's draws depend on its seed only.
    """
    if not 0 < tokens < 2**17 or not 0 <= stream < 2**15:
        raise ValueError(f"tokens={tokens} must lie in [1, 2^17) and stream={stream} in [0, 2^15)")
    seeds = seeds.to(torch.int64).remainder(2**31)  # keeps the streams apart whatever the caller passes
    counters = (seeds[:, None] * tokens + torch.arange(tokens, device=seeds.device)) + (stream << STREAM_BITS)
    z = (counters + 1) * _GOLDEN
    z = (z ^ _shift_right(z, 30)) * _MIX1
    z = (z ^ _shift_right(z, 27)) * _MIX2
    z = z ^ _shift_right(z, 31)
    return _shift_right(z, 11).to(torch.float64) * 2.0**-53
