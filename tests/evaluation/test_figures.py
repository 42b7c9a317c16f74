"""Figures draw images the right way up (2D as read, 3D with anterior up), the reconstruction figure is
written, and the case sheet says which rows are the best cases and which the worst."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from medmae.data.readers import read_image
from medmae.evaluation import figures
from medmae.evaluation.figures import rank_labels, save_reconstruction_figure, screen_image


def test_2d_image_is_drawn_as_pil_reads_it(tmp_path):
    """A PNG whose top rows are bright stays bright on top (the X-rays were once drawn rotated)."""
    pixels = np.zeros((20, 30), dtype=np.uint8)
    pixels[:5] = 255
    PILImage.fromarray(pixels).save(tmp_path / "top.png")
    image = torch.from_numpy(read_image(tmp_path / "top.png").array.astype(np.float32))
    picture = screen_image(image)
    assert picture.shape == (20, 30)
    assert picture[:5].min() == 255 and picture[5:].max() == 0


def test_3d_slice_puts_anterior_up_and_right_to_the_right():
    """RAS ``[X, Y, Z]``: the middle axial slice, highest y in the first screen row, x along columns."""
    volume = torch.zeros(1, 6, 8, 4)
    volume[0, :, -1] = 1.0  # most anterior row
    volume[0, -1, :, 2] = 2.0  # rightmost column in the middle slice
    picture = screen_image(volume)
    assert picture.shape == (8, 6)
    assert (picture[0, :-1] == 1.0).all() and (picture[:, -1] == 2.0).all()


def test_reconstruction_figure_is_written(tmp_path):
    images = torch.rand(2, 1, 16, 24)
    path = save_reconstruction_figure(tmp_path / "f" / "recon.png", images, {"reconstruction": images})
    assert PILImage.open(path).size[0] > 0


@pytest.mark.parametrize(
    "count, labels",
    [
        (1, ["best"]),
        (4, ["best", "2nd best", "2nd worst", "worst"]),
        (5, ["best", "2nd best", "3rd best", "2nd worst", "worst"]),
        (6, ["best", "2nd best", "3rd best", "3rd worst", "2nd worst", "worst"]),
    ],
)
def test_rank_labels_name_the_better_half_best_and_the_rest_worst(count, labels):
    assert rank_labels(count) == labels


def test_each_row_of_the_case_sheet_says_whether_it_is_a_best_or_a_worst_case(tmp_path, monkeypatch):
    """The rows come in any order; drawn best first, each titled with its rank and mean DSC."""
    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, path, title="", tight=True: drawn.append(fig))
    label = np.zeros((12, 12, 3), np.uint8)
    label[3:9, 3:9, 1] = 1
    dscs = {"mid_low": 0.4, "top": 0.95, "bottom": 0.1, "mid_high": 0.8}
    rows = [{"case_id": case, "dsc": dsc, "reference": label, "prediction": label} for case, dsc in dscs.items()]
    figures.save_case_sheet(tmp_path / "sheet.png", rows, ("background", "liver"))
    titles = [ax.get_title().split("\n")[:2] for ax in drawn[0].axes[0::3]]  # the image column, top to bottom
    assert titles == [
        ["top", "best: mean DSC 0.950, slice 1"],
        ["mid_high", "2nd best: mean DSC 0.800, slice 1"],
        ["mid_low", "2nd worst: mean DSC 0.400, slice 1"],
        ["bottom", "worst: mean DSC 0.100, slice 1"],
    ]
