"""The synthetic demo set: it passes ``data check``, is deterministic, and puts each organ on its side."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from medmae.cli import main
from medmae.data.synthetic import write_demo_dataset


def check(capsys, *args):
    code = main(["data", "check", "--quiet", *args])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_the_demo_set_passes_and_is_deterministic(capsys, tmp_path):
    assert main(["data", "demo", "--output-dir", str(tmp_path / "a"), "--cases", "4"]) == 0
    code, out = check(capsys, "--task", "demo", "--data-root", str(tmp_path / "a"))
    assert code == 0 and "cases                4" in out
    write_demo_dataset(tmp_path / "b", cases=4)
    write_demo_dataset(tmp_path / "c", cases=4, seed=1)
    for name in ("imagesTr/img0003.nii.gz", "labelsTr/label0003.nii.gz"):
        a, b, c = (np.asarray(nib.load(tmp_path / d / name).dataobj) for d in "abc")
        assert np.array_equal(a, b) and not np.array_equal(a, c)
    label = np.asarray(nib.load(tmp_path / "a" / "labelsTr" / "label0001.nii.gz").dataobj)
    assert set(np.unique(label)) == {0, 1, 2, 3, 4}


def test_demo_anatomy_sits_on_the_right_sides(tmp_path):
    """RAS+ world x grows towards the patient's right: the liver and right kidney have positive x."""
    write_demo_dataset(tmp_path, cases=2, validation=1)
    image = nib.load(tmp_path / "labelsTr" / "label0001.nii.gz")
    label = np.asarray(image.dataobj)
    world_x = {value: (image.affine @ [*np.argwhere(label == value).mean(0), 1])[0] for value in (1, 2, 3, 4)}
    assert world_x[1] > 0 > world_x[2] and world_x[3] > 0 > world_x[4]  # liver, spleen; right, left kidney
