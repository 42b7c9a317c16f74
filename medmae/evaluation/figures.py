"""Figures a person would rather look at than read."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def middle_slice(volume: torch.Tensor) -> torch.Tensor:
    """``[C, *S]`` -> the first channel's middle slice along the last axis (2D images pass through): ``[H, W]``."""
    image = volume[0]
    return image[..., image.shape[-1] // 2] if image.ndim == 3 else image


def save_reconstruction_figure(path: str | Path, original: torch.Tensor, images: dict[str, torch.Tensor],
                               max_rows: int = 4, title: str = "") -> Path:
    """One row per sample: the input, then each image of ``images`` (e.g. ``MaskedAutoencoder.reconstruct``).

    Args:
        path: PNG file to write (folders are created).
        original: ``[B, C, *S]``; images: name -> ``[B, C, *S]``. 3D volumes show their middle slice.
        max_rows: samples shown.

    Each row shares the grey scale of its input (1st to 99th percentile).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = {"input": original, **images}
    rows = min(max_rows, original.shape[0])
    fig, axes = plt.subplots(rows, len(columns), figsize=(2.2 * len(columns), 2.2 * rows), squeeze=False)
    for row in range(rows):
        reference = middle_slice(original[row].float().cpu())
        low, high = torch.quantile(reference.flatten(), torch.tensor([0.01, 0.99])).tolist()
        for col, (name, batch) in enumerate(columns.items()):
            ax = axes[row][col]
            ax.imshow(middle_slice(batch[row].float().cpu()).T, cmap="gray", vmin=low, vmax=high, origin="lower")
            ax.set_axis_off()
            if row == 0:
                ax.set_title(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
