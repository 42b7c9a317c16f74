"""``benchmarks/reconstruction_figure.py`` redraws a finished run's figure from its checkpoint, pixel for pixel."""

from __future__ import annotations

import numpy as np
from PIL import Image as PILImage

from tests.helpers import BENCHMARKS, demo_run


def test_a_finished_run_figure_is_redrawn_from_its_checkpoint(tmp_path, demo_root):
    import subprocess
    import sys

    from medmae.cli import main

    run = tmp_path / "mae"
    assert main(demo_run("pretrain", demo_root, run, "--set", "train.epochs=1", "--set", "optim.warmup_epochs=0")) == 0
    script = BENCHMARKS / "reconstruction_figure.py"
    done = subprocess.run(
        [sys.executable, str(script), str(run), str(tmp_path / "again.png"), "--data-root", str(demo_root)],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    drawn, redrawn = (
        np.asarray(PILImage.open(p)) for p in (run / "figures" / "reconstruction_epoch0001.png", tmp_path / "again.png")
    )
    assert np.array_equal(drawn, redrawn)  # the same samples, masks and weights draw the same picture
