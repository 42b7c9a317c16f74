"""Figures draw images the right way up (2D as read, 3D with anterior up) and the reconstruction figure is written."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image as PILImage

from medmae.data.readers import read_image
from medmae.evaluation.figures import save_reconstruction_figure, screen_image


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
