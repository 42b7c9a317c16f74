"""Which patch tokens to hide: random (MAE, He et al. 2022), block-wise (BEiT, Bao et al. 2022) or
grid-wise (one kept patch in every k along each axis), each drawn per sample from the sample's seed.

Every strategy is expressed as noise ``[B, N]`` whose ``K`` lowest values mark the visible tokens, so one
gather (:func:`random_masking`) serves all three.
"""

from __future__ import annotations

import math
import typing

import numpy as np
import torch

from medmae.config import EncoderMode, MaskStrategy
from medmae.seeds import seeded_noise

STRATEGIES = typing.get_args(MaskStrategy)
ENCODER_MODES = typing.get_args(EncoderMode)
RATIO_SLACK = 1e-6  # int(N * (1 - ratio)) allows this much floating-point round-off
GRID_TOLERANCE = 5e-4  # a grid ratio may be given to 3 decimals: 0.889 for 1 - 1/9
BLOCK_MIN_PATCHES = 16  # BEiT's smallest block
BLOCK_ASPECT = 0.3  # BEiT: side ratios drawn log-uniformly in [0.3, 1 / 0.3]
MASK_STREAM = 2  # numpy streams of block and grid masks (seeded_noise uses 0 for masks, 1 for crops)


def visible_count(strategy: str, grid: tuple[int, ...], mask_ratio: float) -> int:
    """Tokens left visible: ``int(N * (1 - ratio))`` for random and block masks (the product truncated,
    allowing 1e-6 of round-off), ``N / k^d`` for grid masks. Raises ValueError for an unknown strategy,
    a ratio outside ``[0, 1)``, one that leaves nothing visible, or a ratio the grid cannot give."""
    if strategy not in STRATEGIES:
        raise ValueError(f"mask strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio={mask_ratio!r} must lie in [0, 1)")
    n = math.prod(grid)
    keep = (
        n // grid_step(grid, mask_ratio) ** len(grid)
        if strategy == "grid"
        else math.floor(n * (1 - mask_ratio) + RATIO_SLACK)
    )
    if keep < 1:
        raise ValueError(f"mask_ratio={mask_ratio!r} leaves no visible token out of {n}")
    return keep


def grid_ratios(grid: tuple[int, ...]) -> dict[int, float]:
    """Step ``k`` -> the only mask ratio grid masking allows with it, ``1 - 1/k^d``, for every ``k`` that
    divides every axis of ``grid`` (so each sample keeps exactly ``N / k^d`` patches); ``k = 1`` is ratio 0."""
    return {k: 1 - 1 / k ** len(grid) for k in range(1, min(grid) + 1) if all(g % k == 0 for g in grid)}


def grid_step(grid: tuple[int, ...], mask_ratio: float) -> int:
    """The ``k`` of grid masking with ``mask_ratio`` (to within 5e-4), else a ValueError listing the
    ratios this grid allows."""
    for k, ratio in grid_ratios(grid).items():
        if abs(ratio - mask_ratio) <= GRID_TOLERANCE:
            return k
    allowed = ", ".join(f"{ratio:.4g} (k={k})" for k, ratio in grid_ratios(grid).items())
    raise ValueError(
        f"grid masking keeps one patch in every k along each axis of the {' x '.join(map(str, grid))} "
        f"patch grid, so mask_ratio must be 1 - 1/k^{len(grid)}: one of {allowed}; not {mask_ratio}"
    )


def grid_mask(grid: tuple[int, ...], k: int, offset: tuple[int, ...]) -> np.ndarray:
    """``[N]`` bool, True = hidden: every patch hidden except those at ``offset + k * j`` along each axis."""
    kept = np.zeros(grid, dtype=bool)
    kept[tuple(slice(o, None, k) for o in offset)] = True
    return ~kept.reshape(-1)


def block_mask(grid: tuple[int, ...], hidden: int, rng: np.random.Generator) -> tuple[np.ndarray, list[tuple]]:
    """Hide exactly ``hidden`` patches as a union of boxes (BEiT's block-wise masking, in 2D or 3D).

    Rule: while fewer than ``hidden`` patches are hidden, draw a box of ``v`` patches, ``v`` uniform in
    ``[min(16, r), max(16, r)]`` where ``r`` is the number still to hide; each side is
    ``round(v^(1/d) * e^a_i)`` clipped to ``[1, grid]``, with ``a_i`` uniform in ``±log(1/0.3) / 2`` and
    centred (so any two sides differ by a factor within BEiT's ``[0.3, 1/0.3]``); its position uniform. The
    box's patches not yet hidden are hidden in row-major order until the count is reached, so only the last
    box can be trimmed, to a row-major prefix of itself (still connected).

    Returns:
        ``[N]`` bool (True = hidden) and the boxes as ``(start, size, prefix)``, ``prefix`` the number of
        the box's patches (row-major) that the box covers: all of them except possibly for the last box.
    """
    mask = np.zeros(grid, dtype=bool)
    boxes = []
    dims = len(grid)
    while (done := int(mask.sum())) < hidden:
        left = hidden - done
        volume = rng.integers(min(BLOCK_MIN_PATCHES, left), max(BLOCK_MIN_PATCHES, left) + 1)
        logs = rng.uniform(math.log(BLOCK_ASPECT) / 2, -math.log(BLOCK_ASPECT) / 2, dims)
        sides = [
            int(np.clip(round(volume ** (1 / dims) * math.exp(a)), 1, g)) for a, g in zip(logs - logs.mean(), grid)
        ]
        start = [int(rng.integers(0, g - s + 1)) for g, s in zip(grid, sides)]
        box = mask[tuple(slice(a, a + s) for a, s in zip(start, sides))].reshape(-1)  # a copy, row-major
        new = np.flatnonzero(~box)
        prefix = box.size if len(new) <= left else int(new[left - 1]) + 1
        box[:prefix] = True
        mask[tuple(slice(a, a + s) for a, s in zip(start, sides))] = box.reshape(sides)
        boxes.append((tuple(start), tuple(sides), prefix))
    return mask.reshape(-1), boxes


def strategy_mask(strategy: str, grid: tuple[int, ...], mask_ratio: float, seed: int) -> np.ndarray:
    """``[N]`` bool, True = hidden: one sample's block or grid mask, a function of its seed only."""
    rng = np.random.default_rng([int(seed), MASK_STREAM])
    if strategy == "grid":
        k = grid_step(grid, mask_ratio)
        return grid_mask(grid, k, tuple(int(o) for o in rng.integers(0, k, len(grid))))
    return block_mask(grid, math.prod(grid) - visible_count(strategy, grid, mask_ratio), rng)[0]


@torch.compiler.disable  # as before the masks moved into the MAE: eager, outside a compiled graph
def masking_noise(strategy: str, seeds: torch.Tensor, grid: tuple[int, ...], mask_ratio: float) -> torch.Tensor:
    """``[B, N]`` float64 noise on ``seeds.device`` whose ``visible_count`` lowest values are the sample's
    visible tokens: :func:`seeded_noise` for random masks; for block and grid masks, ``hidden + u / 2``
    with ``u`` from :func:`seeded_noise`, so visible tokens (all below 1/2) keep a random order."""
    n = math.prod(grid)
    noise = seeded_noise(seeds, n)
    if strategy == "random":
        return noise
    hidden = np.stack([strategy_mask(strategy, grid, mask_ratio, seed) for seed in seeds.tolist()])
    return torch.from_numpy(hidden).to(noise.device, torch.float64) + noise / 2


def random_masking(
    tokens: torch.Tensor,
    mask_ratio: float,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    keep: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hide a random subset of tokens in each sample, by argsort of uniform noise and gather.

    Each sample keeps exactly ``keep`` of its ``N`` tokens, by default ``int(N * (1 - mask_ratio))`` (the
    product is truncated, not rounded, allowing 1e-6 of round-off) and hides the rest; the kept tokens
    stay in a random order.

    Args:
        tokens: ``[B, N, D]``.
        mask_ratio: fraction to hide, in ``[0, 1)``; at least one token must stay visible.
        generator: optional ``torch.Generator`` on ``tokens.device``, for reproducible masks.
        noise: optional ``[B, N]`` noise that decides the masks (the lowest ``K`` values stay visible);
            pretraining draws it from each sample's seed, so a sample's mask does not depend on the batch or
            the process it lands in (:func:`masking_noise` for block and grid masks).
        keep: visible tokens per sample (:func:`visible_count`), overriding the ratio's.

    Returns:
        kept: ``[B, K, D]`` the visible tokens, ``K = int(N * (1 - mask_ratio))``.
        mask: ``[B, N]`` float32 in the original token order, 1 = hidden, 0 = visible.
        ids_restore: ``[B, N]`` indices that put ``cat([kept, hidden])`` back into the original order.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio={mask_ratio!r} must lie in [0, 1)")
    b, n, _ = tokens.shape
    keep = math.floor(n * (1 - mask_ratio) + RATIO_SLACK) if keep is None else keep
    if keep < 1:
        raise ValueError(f"mask_ratio={mask_ratio!r} leaves no visible token out of {n}")
    if noise is None:
        noise = torch.rand(b, n, generator=generator, device=tokens.device)
    elif noise.shape != (b, n):
        raise ValueError(f"noise of shape {tuple(noise.shape)} for tokens of shape {tuple(tokens.shape)}")
    ids_shuffle, ids_restore, mask = masking_order(noise, keep)
    return gather_tokens(tokens, ids_shuffle[:, :keep]), mask, ids_restore


def masking_order(noise: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """noise ``[B, N]`` -> (ids_shuffle ``[B, N]``: the ``keep`` visible tokens first, in increasing noise,
    then the hidden ones; ids_restore ``[B, N]``, its inverse; mask ``[B, N]`` float32, 1 = hidden)."""
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = (ids_restore >= keep).float()
    return ids_shuffle, ids_restore, mask


def gather_tokens(tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """tokens ``[B, N, D]``, ids ``[B, K]`` -> ``[B, K, D]``: each sample's tokens at its ids, in that order."""
    return torch.gather(tokens, 1, ids.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
