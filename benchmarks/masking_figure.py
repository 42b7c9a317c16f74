"""Draw the masks each strategy hides, from the same seeds pretraining uses (no model, no data).

    python benchmarks/masking_figure.py                   # docs/results/masking_strategies.png

Rows: random, block-wise (BEiT's rule, the last block trimmed) and grid-wise masks. Left: four 2D samples
on the 14 x 14 patch grid of a 224^2 image at mask ratio 0.75 (grid: k = 2). Right: the six slices of one
3D sample on the 6 x 6 x 6 grid of a 96^3 crop at mask ratio 0.875 (grid: k = 2).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from medmae.evaluation.figures import save_mask_figure
from medmae.models.masking import STRATEGIES, masking_noise, random_masking, visible_count

DOCS = Path(__file__).resolve().parents[1] / "docs" / "results"


def hidden(strategy: str, grid: tuple[int, ...], ratio: float, seeds: list[int]) -> torch.Tensor:
    """``[B, *grid]`` bool, True = hidden, exactly as the MAE hides them for these sample seeds."""
    noise = masking_noise(strategy, torch.tensor(seeds), grid, ratio)
    tokens = torch.zeros(len(seeds), noise.shape[1], 1)
    mask = random_masking(tokens, ratio, noise=noise, keep=visible_count(strategy, grid, ratio))[1]
    return mask.bool().reshape(len(seeds), *grid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DOCS / "masking_strategies.png")
    args = parser.parse_args()
    masks = {
        strategy: (hidden(strategy, (14, 14), 0.75, [0, 1, 2, 3]), hidden(strategy, (6, 6, 6), 0.875, [0])[0])
        for strategy in STRATEGIES
    }
    print(
        save_mask_figure(
            args.output,
            masks,
            "hidden patches (dark) per strategy: 2D 14 x 14 at 0.75 (4 samples), "
            "3D 6 x 6 x 6 at 0.875 (one sample, its 6 slices)",
        )
    )


if __name__ == "__main__":
    main()
