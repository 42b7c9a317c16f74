"""``medmae predict`` from the command line: one label map per input file, on the input's own grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from medmae.cli import main


def test_predict_writes_a_label_map_on_the_input_grid(capsys, demo_root, demo_checkpoint, tmp_path):
    image = demo_root / "imagesTr" / "img0003.nii.gz"
    output = tmp_path / "predictions"
    argv = ["predict", "--checkpoint", str(demo_checkpoint), "--input", str(image), "--output-dir", str(output)]
    assert main([*argv, "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote 1 files to {output}"
    prediction, source = nib.load(output / "img0003.nii.gz"), nib.load(image)
    assert prediction.shape == source.shape and np.allclose(prediction.affine, source.affine)
    assert prediction.get_data_dtype() == np.uint8 and set(np.unique(prediction.get_fdata())) <= {0, 1, 2, 3, 4}
