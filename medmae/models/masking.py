"""Per-sample random masking of patch tokens (MAE, He et al. 2022)."""

from __future__ import annotations

import torch


def random_masking(
    tokens: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hide a random subset of tokens in each sample, by argsort of uniform noise and gather.

    Each sample keeps exactly ``int(N * (1 - mask_ratio))`` of its ``N`` tokens (the product is
    truncated, not rounded) and hides the rest; the kept tokens stay in a random order.

    Args:
        tokens: ``[B, N, D]``.
        mask_ratio: fraction to hide, in ``[0, 1)``; at least one token must stay visible.
        generator: optional ``torch.Generator`` on ``tokens.device``, for reproducible masks.
        noise: optional ``[B, N]`` uniform noise that decides the masks (the lowest ``K`` values stay
            visible); the training engine draws it per sample, so a sample's mask does not depend on the
            batch or the process it lands in.

    Returns:
        kept: ``[B, K, D]`` the visible tokens, ``K = int(N * (1 - mask_ratio))``.
        mask: ``[B, N]`` float32 in the original token order, 1 = hidden, 0 = visible.
        ids_restore: ``[B, N]`` indices that put ``cat([kept, hidden])`` back into the original order.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio={mask_ratio!r} must lie in [0, 1)")
    b, n, d = tokens.shape
    keep = int(n * (1 - mask_ratio))
    if keep < 1:
        raise ValueError(f"mask_ratio={mask_ratio!r} leaves no visible token out of {n}")
    if noise is None:
        noise = torch.rand(b, n, generator=generator, device=tokens.device)
    elif noise.shape != (b, n):
        raise ValueError(f"noise of shape {tuple(noise.shape)} for tokens of shape {tuple(tokens.shape)}")
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    kept = torch.gather(tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, d))
    mask = torch.ones(b, n, device=tokens.device)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return kept, mask, ids_restore


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
