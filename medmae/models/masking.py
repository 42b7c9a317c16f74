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
MASK_STREAM = 2  # seeded_noise streams: 0 random masks, 1 crops, 2 block and grid draws, 3 the block top-up
TOP_UP_STREAM = 3
MAX_BOXES = 64  # boxes drawn per block mask; what they leave unhidden (rare) is topped up


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


def box_draws(seeds: torch.Tensor, dims: int) -> torch.Tensor:
    """``[B, MAX_BOXES, 1 + 2 dims]`` uniforms in ``[0, 1)`` per sample seed (float64, on ``seeds.device``):
    per box, one for its volume, ``dims`` for its side ratios and ``dims`` for its position."""
    per_box = 1 + 2 * dims
    return seeded_noise(seeds, MAX_BOXES * per_box, MASK_STREAM).view(len(seeds), MAX_BOXES, per_box)


def box_shape(draw: torch.Tensor, left: torch.Tensor, grid: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """One box per sample from its uniforms ``draw`` ``[B, 1 + 2 dims]`` and the patches it still has to
    hide ``left`` ``[B]`` -> (start, sides), each ``[B, dims]`` int64. BEiT's rule: a volume ``v`` uniform
    in ``[min(16, left), max(16, left)]``; sides ``round(v^(1/d) * e^a_i)`` clipped to ``[1, grid]``, ``a_i``
    uniform in ``+-log(1/0.3) / 2`` and centred (any two sides within a factor in ``[0.3, 1/0.3]``); the
    position uniform. The one formula of the device masks and their host reference."""
    dims = len(grid)
    extent = torch.tensor(grid, device=draw.device)
    low, high = left.clamp(max=BLOCK_MIN_PATCHES), left.clamp(min=BLOCK_MIN_PATCHES)
    volume = low + torch.floor(draw[:, 0] * (high - low + 1))
    logs = (2 * draw[:, 1 : 1 + dims] - 1) * (-math.log(BLOCK_ASPECT) / 2)
    logs = logs - logs.mean(dim=1, keepdim=True)
    sides = torch.round(volume[:, None] ** (1 / dims) * torch.exp(logs)).long()
    sides = torch.minimum(sides.clamp(min=1), extent)
    start = torch.floor(draw[:, 1 + dims :] * (extent - sides + 1)).long()
    return start, sides


def grid_coordinates(grid: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """``[N, dims]`` int64: each token's position on the patch grid, in row-major token order."""
    axes = [torch.arange(g, device=device) for g in grid]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(grid))


def block_masks(seeds: torch.Tensor, grid: tuple[int, ...], hidden: int) -> torch.Tensor:
    """``[B, N]`` bool (True = hidden) on ``seeds.device``: each sample hides exactly ``hidden`` patches as
    a union of boxes (BEiT's block-wise masking, in 2D or 3D), drawn for the whole batch at once without
    a host round trip.

    Rule: ``MAX_BOXES`` boxes in turn (:func:`box_shape`); of each box, the patches not yet hidden are hidden
    in row-major order until the count is reached, so a trimmed box is a row-major prefix of itself (still
    connected). If the boxes fall short (rare: they overlap), the rest is hidden in an order drawn from
    the seed (``TOP_UP_STREAM``). :func:`block_mask` is the same rule sample by sample on the host.
    """
    coords = grid_coordinates(grid, seeds.device)
    draws = box_draws(seeds, len(grid))
    mask = torch.zeros(len(seeds), len(coords), dtype=torch.bool, device=seeds.device)
    left = torch.full((len(seeds),), hidden, dtype=torch.int64, device=seeds.device)
    for box in range(MAX_BOXES):
        start, sides = box_shape(draws[:, box], left, grid)
        inside = ((coords >= start[:, None]) & (coords < (start + sides)[:, None])).all(dim=-1)
        new = inside & ~mask
        mask |= new & (new.cumsum(dim=1) <= left[:, None])
        left = hidden - mask.sum(dim=1)
    order = torch.where(mask, math.inf, seeded_noise(seeds, len(coords), TOP_UP_STREAM))
    rank = order.argsort(dim=1).argsort(dim=1)
    return mask | (rank < left[:, None])


def block_mask(grid: tuple[int, ...], hidden: int, seed: int) -> tuple[np.ndarray, list[tuple]]:
    """The host reference of :func:`block_masks` for one sample: ``[N]`` bool (True = hidden) and the boxes
    that hid something as ``(start, size, prefix)``, ``prefix`` the number of the box's patches (row-major)
    it covers; patches hidden by the top-up are in the mask only."""
    seeds = torch.tensor([seed])
    draws, mask, boxes = box_draws(seeds, len(grid))[0], np.zeros(grid, dtype=bool), []
    for draw in draws:
        left = hidden - int(mask.sum())
        start, sides = (t[0].tolist() for t in box_shape(draw[None], torch.tensor([left]), grid))
        region = tuple(slice(a, a + s) for a, s in zip(start, sides))
        box = mask[region].reshape(-1)  # a copy, row-major
        new = np.flatnonzero(~box)
        if left == 0 or len(new) == 0:
            continue
        prefix = box.size if len(new) <= left else int(new[left - 1]) + 1
        box[:prefix] = True
        mask[region] = box.reshape(sides)
        boxes.append((tuple(start), tuple(sides), prefix))
    flat, left = mask.reshape(-1), hidden - int(mask.sum())
    order = np.where(flat, np.inf, seeded_noise(seeds, flat.size, TOP_UP_STREAM)[0].numpy())
    flat[np.argsort(order, kind="stable")[:left]] = True
    return flat, boxes


def grid_offsets(seeds: torch.Tensor, dims: int, k: int) -> torch.Tensor:
    """``[B, dims]`` int64 in ``[0, k)``: each sample's lattice offset of grid masking, from its seed."""
    return torch.floor(seeded_noise(seeds, dims, MASK_STREAM) * k).long()


def strategy_masks(strategy: str, seeds: torch.Tensor, grid: tuple[int, ...], mask_ratio: float) -> torch.Tensor:
    """``[B, N]`` bool, True = hidden, on ``seeds.device``: block or grid masks, each sample's a function of
    its seed only (:func:`strategy_mask` is the host reference)."""
    if strategy == "grid":
        k = grid_step(grid, mask_ratio)
        offsets = grid_offsets(seeds, len(grid), k)
        kept = ((grid_coordinates(grid, seeds.device) - offsets[:, None]).remainder(k) == 0).all(dim=-1)
        return ~kept
    return block_masks(seeds, grid, math.prod(grid) - visible_count(strategy, grid, mask_ratio))


def strategy_mask(strategy: str, grid: tuple[int, ...], mask_ratio: float, seed: int) -> np.ndarray:
    """``[N]`` bool, True = hidden: one sample's block or grid mask drawn on the host, sample by sample."""
    if strategy == "grid":
        k = grid_step(grid, mask_ratio)
        return grid_mask(grid, k, tuple(grid_offsets(torch.tensor([seed]), len(grid), k)[0].tolist()))
    return block_mask(grid, math.prod(grid) - visible_count(strategy, grid, mask_ratio), seed)[0]


@torch.compiler.disable  # eager, outside a compiled graph
def masking_noise(strategy: str, seeds: torch.Tensor, grid: tuple[int, ...], mask_ratio: float) -> torch.Tensor:
    """``[B, N]`` float64 noise on ``seeds.device`` whose ``visible_count`` lowest values are the sample's
    visible tokens: :func:`seeded_noise` for random masks; for block and grid masks, ``hidden + u / 2``
    with ``u`` from :func:`seeded_noise`, so visible tokens (all below 1/2) keep a random order. Drawn on
    the device for every strategy: no host round trip."""
    noise = seeded_noise(seeds, math.prod(grid))
    if strategy == "random":
        return noise
    return strategy_masks(strategy, seeds, grid, mask_ratio).to(torch.float64) + noise / 2


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
