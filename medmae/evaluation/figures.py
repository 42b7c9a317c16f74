"""Figures a person would rather look at than read."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.patches
import matplotlib.pyplot as plt
import numpy as np
import torch

from medmae.files import atomic_open


def _save(fig, path: str | Path, title: str = "", tight: bool = True) -> Path:
    """Title, lay out (unless the caller did), write the PNG atomically (folders created) and free the figure."""
    if title:
        fig.suptitle(title, fontsize=9)
    if tight:
        fig.tight_layout()
    try:
        with atomic_open(path, "wb") as handle:
            fig.savefig(handle, format="png", dpi=100)
    finally:
        plt.close(fig)
    return Path(path)


def middle_slice(volume: torch.Tensor) -> torch.Tensor:
    """``[C, *S]`` -> the first channel's middle slice along the last axis (2D images pass through): ``[H, W]``."""
    image = volume[0]
    return image[..., image.shape[-1] // 2] if image.ndim == 3 else image


def screen_image(sample: torch.Tensor) -> np.ndarray:
    """``[C, *S]`` -> the picture to draw with ``imshow(origin="upper")``: first row on top.

    2D images are stored as read (rows top to bottom, as PIL gives them) and pass through; 3D volumes
    (RAS, ``[X, Y, Z]``) show the middle axial slice with x to the right and y (anterior) up.
    """
    image = middle_slice(sample.float().cpu())
    return image.numpy() if sample.ndim == 3 else image.T.flip(0).numpy()


def save_reconstruction_figure(
    path: str | Path, original: torch.Tensor, images: dict[str, torch.Tensor], max_rows: int = 4, title: str = ""
) -> Path:
    """One row per sample: the input, then each image of ``images`` (e.g. ``MaskedAutoencoder.reconstruct``).

    Args:
        path: PNG file to write (folders are created).
        original: ``[B, C, *S]``; images: name -> ``[B, C, *S]``. 3D volumes show their middle slice.
        max_rows: samples shown.

    Each row shares the grey scale of its input (1st to 99th percentile).
    """
    columns = {"input": original, **images}
    rows = min(max_rows, original.shape[0])
    fig, axes = plt.subplots(rows, len(columns), figsize=(2.2 * len(columns), 2.2 * rows), squeeze=False)
    for row in range(rows):
        low, high = np.quantile(screen_image(original[row]), [0.01, 0.99])
        for col, (name, batch) in enumerate(columns.items()):
            ax = axes[row][col]
            ax.imshow(screen_image(batch[row]), cmap="gray", vmin=low, vmax=high)
            ax.set_axis_off()
            if row == 0:
                ax.set_title(name, fontsize=9)
    return _save(fig, path, title)


def largest_reference_slice(reference: np.ndarray) -> int:
    """Index along the last axis of the slice with the most reference foreground."""
    return int(np.argmax((reference > 0).reshape(-1, reference.shape[-1]).sum(0)))


def to_ras(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """A 3D array reoriented so that its axes run to the patient's right, anterior and superior."""
    import nibabel as nib

    return nib.orientations.apply_orientation(array, nib.orientations.io_orientation(affine))


def rank_labels(count: int) -> list[str]:
    """What each of ``count`` rows ranked best first is: ``best``, ``2nd best`` ... for the better half (the
    middle row of an odd count with them), ``... 2nd worst``, ``worst`` for the rest."""
    better = (count + 1) // 2
    return [_nth(k, "best") for k in range(better)] + [_nth(count - 1 - k, "worst") for k in range(better, count)]


def _nth(k: int, word: str) -> str:
    """``best`` for k = 0, ``2nd best`` for 1, ``3rd best`` for 2, ``4th best`` for 3 ..."""
    n = k + 1
    if n == 1:
        return word
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix} {word}"


def save_case_sheet(path: str | Path, rows: list[dict], names: Sequence[str], title: str = "") -> Path:
    """One row per case, best first: image, reference and prediction on the axial slice of largest
    reference area, in radiological view (the patient's right on the left, anterior up), each row titled
    with its case, its rank (``best``, ``2nd best`` ... ``2nd worst``, ``worst``: :func:`rank_labels`), mean
    DSC and slice, with a legend of the label colours.

    Args:
        rows: the best and the worst cases, dicts with ``case_id``, ``dsc`` (the case's mean foreground
            DSC), ``reference`` and ``prediction`` label maps ``[*S]`` and optionally ``image`` ``[*S]``, all
            on one RAS grid (see :func:`to_ras`).
        names: the label names, index = label value, background first.
    """
    rows = sorted(rows, key=lambda row: -row["dsc"])
    classes = len(names)
    palette = [plt.get_cmap("tab10")(k % 10) for k in range(classes - 1)]
    colours = matplotlib.colors.ListedColormap([(0, 0, 0, 0), *palette])
    size = (7.5, 2.7 * len(rows) + 0.6)
    fig, axes = plt.subplots(len(rows), 3, figsize=size, squeeze=False, layout="constrained")
    for axes_row, row, rank in zip(axes, rows, rank_labels(len(rows))):
        z = largest_reference_slice(row["reference"])
        background = row.get("image")
        background = np.zeros(row["reference"].shape[:-1]) if background is None else background[..., z]
        low, high = np.percentile(background, [1, 99])
        for ax, name in zip(axes_row, ("image", "reference", "prediction")):
            ax.imshow(background.T, cmap="gray", origin="lower", vmin=low, vmax=high)
            if name != "image":
                shown = {"cmap": colours, "vmin": 0, "vmax": classes - 1, "alpha": 0.55, "interpolation": "none"}
                ax.imshow(row[name][..., z].T, origin="lower", **shown)
            ax.invert_xaxis()  # radiological view: the patient's right on the left
            ax.set_axis_off()
            ax.set_title(name, fontsize=8)
        case = textwrap.fill(str(row["case_id"]), 32, break_long_words=True)  # a long id wraps, never clips
        axes_row[0].set_title(f"{case}\n{rank}: mean DSC {row['dsc']:.3f}, slice {z}\nimage", fontsize=8)
    handles = [matplotlib.patches.Patch(color=c, alpha=0.55, label=name) for c, name in zip(palette, names[1:])]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 5), fontsize=7, frameon=False)
    return _save(fig, path, title, tight=False)  # the constrained layout keeps titles and legend inside


def save_roc_figure(path: str | Path, curves: dict[str, tuple[np.ndarray, np.ndarray, float]], title: str = "") -> Path:
    """ROC curves, one per finding: ``{finding: (fpr, tpr, auc)}``."""
    fig, ax = plt.subplots(figsize=(6, 6))
    for finding, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, lw=1.2, label=f"{finding} ({auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1), title=title)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def save_sweep_figure(path: str | Path, table, swept: list[str], metric: str, title: str = "") -> Path:
    """One panel per swept key: ``metric`` of every point against the key's value (dots), and its mean
    over the other keys' values per value (line). Numeric values on a numeric axis, others in order."""
    fig, axes = plt.subplots(1, len(swept), figsize=(4 * len(swept), 3.2), squeeze=False)
    for ax, key in zip(axes[0], swept):
        values = list(dict.fromkeys(table[key].map(repr)))
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in table[key])
        x = table[key].astype(float) if numeric else table[key].map(repr).map(values.index)
        ax.scatter(x, table[metric], s=18, color="tab:blue", alpha=0.6)
        means = table.assign(_x=x).groupby("_x")[metric].mean().sort_index()
        ax.plot(means.index, means.values, color="tab:blue", marker="o")
        if not numeric:
            ax.set_xticks(range(len(values)), [v.strip("'") for v in values])
        ax.set_xlabel(key)
        ax.set_ylabel(metric.replace("_", " "))
        ax.grid(alpha=0.3)
    return _save(fig, path, title)


def save_mask_figure(path: str | Path, masks: dict[str, tuple[torch.Tensor, torch.Tensor]], title: str = "") -> Path:
    """One row per strategy: its 2D masks ``[B, H, W]`` then the slices of one 3D mask ``[X, Y, Z]``
    (True = hidden, drawn dark)."""
    rows = list(masks)
    columns = max(len(two) + three.shape[-1] for two, three in masks.values())
    fig, axes = plt.subplots(len(rows), columns, figsize=(1.3 * columns, 1.45 * len(rows)), squeeze=False)
    for row, strategy in enumerate(rows):
        two, three = masks[strategy]
        panels = [*two, *three.movedim(-1, 0)]
        for column, ax in enumerate(axes[row]):
            ax.set_xticks([])
            ax.set_yticks([])
            if column >= len(panels):
                ax.axis("off")
                continue
            ax.imshow(~panels[column].numpy(), cmap="gray", vmin=0, vmax=1)
            if column >= len(two):
                ax.set_title(f"3D z={column - len(two)}", fontsize=6)
            elif column == 0:
                ax.set_ylabel(strategy, fontsize=8)
    return _save(fig, path, title)
