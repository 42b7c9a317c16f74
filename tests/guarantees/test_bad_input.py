"""Bad input: the kinds of broken images and labels and of failing writes that the catalogue
(``bad_input_catalogue.py``) tries on every command, and the cases that need more than one command (a disk
that fills mid-run, a loader worker, a real file-size limit). Unwritable folders and a full disk are
simulated by raising ``PermissionError`` and ``OSError(ENOSPC)`` where files are written (tests may run as
root)."""

from __future__ import annotations

import errno
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from medmae.checkpoint import load_checkpoint, model_checkpoint, save_checkpoint
from medmae.cli import main
from medmae.config import load_config
from medmae.data.cases import Case
from medmae.data.loaders import CaseDataset
from medmae.data.readers import read_image
from medmae.data.synthetic import write_demo_dataset
from medmae.errors import DataError
from medmae.models import create_model
from medmae.tasks import load_task
from medmae.training.session import with_roi
from tests.helpers import TINY, demo_run

TRAIN_CASE, TEST_CASE = "0002", "0006"  # dataset_0.json lists case 6 as validation: the datalist split's test part


def rewrite(path: Path, change) -> None:
    image = nib.load(path)
    nib.save(nib.Nifti1Image(change(np.asarray(image.dataobj).copy()), image.affine), path)


def with_voxel(value: float):
    def change(array):
        array = array.astype(np.float32)
        array[10, 10, 10] = value
        return array

    return change


IMAGE_PROBLEMS = {
    "zero-byte NIfTI": (lambda p: p.write_bytes(b""), "empty file"),
    "truncated NIfTI": (lambda p: p.write_bytes(p.read_bytes()[:400]), "unreadable NIfTI"),
    "2D file for a 3D task": (
        lambda p: nib.save(nib.Nifti1Image(np.zeros((64, 64), np.float32), np.eye(4)), p),
        r"2D image \(64, 64\)",
    ),
    "two channels for a one-channel task": (
        lambda p: rewrite(p, lambda a: np.stack([a, a], -1)),
        "2 channels, task demo needs 1",
    ),
    "NaN voxel": (lambda p: rewrite(p, with_voxel(np.nan)), "1 non-finite voxels"),
    "inf voxel": (lambda p: rewrite(p, with_voxel(np.inf)), "1 non-finite voxels"),
    "extreme intensity": (lambda p: rewrite(p, with_voxel(3e38)), r"intensities reach 3e\+38"),
}


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> dict[str, Path]:
    """The demo set and a UNETR fine-tuned on it for one step (for evaluate and predict)."""
    base = tmp_path_factory.mktemp("clean")
    root = write_demo_dataset(base / "data", cases=6, validation=1, seed=0)
    assert (
        main(
            demo_run(
                "finetune",
                root,
                base / "unetr",
                "--set",
                "train.epochs=1",
                "--set",
                "optim.warmup_epochs=0",
                "--set",
                "train.steps_per_epoch=1",
            )
        )
        == 0
    )
    return {"root": root, "checkpoint": base / "unetr" / "checkpoints" / "best.pt"}


def commands(root: Path, checkpoint: Path, out: Path) -> dict[str, list[str]]:
    data = ["--task", "demo", "--data-root", str(root)]
    return {
        "data check": ["data", "check", *data, "--quiet"],
        "pretrain": ["pretrain", *data, "--config", TINY, "--output-dir", str(out)],
        "finetune": ["finetune", *data, "--config", TINY, "--output-dir", str(out)],
        "evaluate": ["evaluate", *data, "--checkpoint", str(checkpoint), "--output-dir", str(out), "--quiet"],
        "predict": [
            "predict",
            "--checkpoint",
            str(checkpoint),
            "--input",
            str(root / "imagesTr"),
            "--output-dir",
            str(out),
            "--quiet",
        ],
        "score": [
            "score",
            "--task",
            "demo",
            "--pred",
            str(root / "labelsTr"),
            "--ref",
            str(root / "labelsTr"),
            "--output-dir",
            str(out),
            "--quiet",
        ],
    }


def refused(capsys, argv: list[str], file: Path, problem: str, out: Path) -> None:
    """Exit 2, the file and the problem (a regular expression) named, no traceback, nothing at ``out``."""
    code = main(argv)
    captured = capsys.readouterr()
    said = captured.out + captured.err
    assert code == 2, said
    assert str(file) in said and re.search(problem, said), said
    assert "Traceback" not in said
    assert not out.exists(), sorted(str(p) for p in out.rglob("*"))


IMAGE_COMMANDS = ["data check", "pretrain", "finetune", "evaluate", "predict"]


LABEL_PROBLEMS = {
    "zero-byte label": (lambda p: p.write_bytes(b""), "(?i)empty file"),
    "non-integer label": (lambda p: rewrite(p, lambda a: a.astype(np.float32) * 0.5), "non-integer"),
    "label value out of range": (
        lambda p: rewrite(p, lambda a: np.where(a == 4, 9, a).astype(np.uint8)),
        r"label values \[9\] outside",
    ),
    "label of another shape": (
        lambda p: rewrite(p, lambda a: a[:-2]),
        r"shape \(64, 64, 48\) differs|differs from image shape",
    ),
    "label of another affine": (
        lambda p: nib.save(nib.Nifti1Image(np.asarray(nib.load(p).dataobj), np.diag([2.0, 2.0, 2.0, 1.0])), p),
        "affine differs from the (image|reference) affine",
    ),
}


WRITE_FAILURES = {
    "unwritable folder": (
        lambda *a, **k: (_ for _ in ()).throw(PermissionError(errno.EACCES, "Permission denied")),
        "tempfile.mkstemp",
        "Permission denied",
    ),
    "full disk": (
        lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")),
        "os.fsync",
        "No space left on device",
    ),
}


def _file_size_limit(limit: int = 2_000_000):
    """A real write failure, without root's exemptions: files may grow to ``limit`` bytes, then the
    kernel refuses with EFBIG (SIGXFSZ ignored, as a full disk refuses with ENOSPC)."""

    def apply():
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.slow
def test_a_disk_that_fills_after_the_first_checkpoint_keeps_it_for_resume(capsys, tmp_path, clean, monkeypatch):
    """The run stops with exit 2 naming the file it could not write; the checkpoint before it stays, whole,
    as ``previous.pt``, and the run resumes from it."""
    out, saved = tmp_path / "mae", []
    real_save = torch.save

    def fills_up(obj, handle, *args, **kwargs):
        if saved:
            raise OSError(errno.ENOSPC, "No space left on device")
        saved.append(obj["epoch"])
        real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", fills_up)
    argv = commands(clean["root"], clean["checkpoint"], out)["pretrain"]
    assert main(argv) == 2
    assert "last.pt: cannot be written (No space left on device)" in capsys.readouterr().err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["previous.pt", "previous.pt.sha256"]
    assert load_checkpoint(out / "checkpoints" / "previous.pt")["epoch"] == 1 and saved == [1]
    monkeypatch.setattr(torch, "save", real_save)
    assert main([*argv, "--resume"]) == 0
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 2


def test_every_reader_names_a_zero_byte_or_truncated_file(tmp_path):
    png = tmp_path / "x.png"
    PILImage.fromarray(np.arange(64 * 64, dtype=np.uint8).reshape(64, 64)).save(png)
    import SimpleITK as sitk

    dicom = tmp_path / "x.dcm"
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(32 * 32, dtype=np.int16).reshape(32, 32)), str(dicom))
    nifti = tmp_path / "x.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), nifti)
    for good, problem in ((png, "unreadable PNG"), (dicom, "unreadable by SimpleITK"), (nifti, "unreadable NIfTI")):
        read_image(good)
        for name, content in (("empty", b""), ("truncated", good.read_bytes()[: len(good.read_bytes()) // 3])):
            broken = tmp_path / f"{name}_{good.name}"
            broken.write_bytes(content)
            with pytest.raises(DataError, match="empty file" if name == "empty" else problem) as error:
                read_image(broken)
            assert str(error.value).startswith(str(broken))


def test_a_3d_file_for_the_2d_task_and_a_bad_png_are_named_by_the_loader(tmp_path):
    import SimpleITK as sitk

    volume = tmp_path / "volume.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 32, 32), np.float32)), str(volume))
    truncated = tmp_path / "truncated.png"
    PILImage.fromarray(np.zeros((64, 64), np.uint8)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:40])
    task = with_roi(load_task("chestxray14"), [64, 64])
    for path, problem in ((volume, "3D image (32, 32, 4), task chestxray14 is 2D"), (truncated, "unreadable PNG")):
        dataset = CaseDataset(task, [Case(path.stem, path, targets=(0,) * 14)], "validation")
        with pytest.raises(DataError, match=re.escape(problem)) as error:
            dataset[0]
        assert str(error.value).startswith(str(path))


def test_predict_names_a_truncated_png_and_writes_nothing(capsys, tmp_path):
    task = with_roi(load_task("chestxray14"), [64, 64])
    model = create_model("vit_tiny_patch16_2d_cls", img_size=64, num_classes=14)
    run_config = load_config("finetune", "chestxray14", overrides=["model.img_size=[64, 64]"]).to_dict()
    checkpoint = save_checkpoint(
        model_checkpoint(model, stage="finetune", task=task.record, run_config=run_config), tmp_path / "best.pt"
    )
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in ("a.png", "b.png"):
        PILImage.fromarray(np.zeros((80, 80), np.uint8)).save(inputs / name)
    (inputs / "b.png").write_bytes((inputs / "b.png").read_bytes()[:50])
    out = tmp_path / "out"
    refused(
        capsys,
        ["predict", "--checkpoint", str(checkpoint), "--input", str(inputs), "--output-dir", str(out), "--quiet"],
        inputs / "b.png",
        "unreadable PNG",
        out,
    )
    (inputs / "b.png").unlink()
    assert (
        main(["predict", "--checkpoint", str(checkpoint), "--input", str(inputs), "--output-dir", str(out), "--quiet"])
        == 0
    )
    assert (out / "probabilities.csv").is_file()


def test_predict_never_writes_over_its_input(capsys, tmp_path, clean):
    inputs = Path(shutil.copytree(clean["root"] / "imagesTr", tmp_path / "inputs"))
    before = {p.name: p.read_bytes() for p in inputs.iterdir()}
    argv = ["predict", "--checkpoint", str(clean["checkpoint"]), "--input", str(inputs), "--quiet"]
    assert main([*argv, "--output-dir", str(inputs / "out")]) == 2
    assert "--allow-output-inside-input" in capsys.readouterr().err
    assert main([*argv, "--output-dir", str(inputs), "--allow-output-inside-input"]) == 2
    assert "a file of the input folder would be overwritten by a prediction" in capsys.readouterr().err
    assert main([*argv, "--output-dir", str(inputs / "out"), "--allow-output-inside-input"]) == 0
    assert {p.name: p.read_bytes() for p in inputs.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in (inputs / "out").iterdir()) == sorted(before)


@pytest.mark.slow
def test_a_real_write_failure_in_torch_save_exits_2_and_leaves_nothing(tmp_path, clean):
    out = tmp_path / "mae"
    argv = [sys.executable, "-m", "medmae", *commands(clean["root"], clean["checkpoint"], out)["pretrain"]]
    run = subprocess.run(
        argv, capture_output=True, encoding="utf-8", errors="replace", preexec_fn=_file_size_limit(), check=False
    )
    assert run.returncode == 2, run.stderr[-3000:]
    assert "last.pt: cannot be written" in run.stderr and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert not out.exists()


def test_a_broken_case_in_a_loader_worker_exits_2_naming_the_file(tmp_path, demo_root, capsys):
    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    broken = root / "imagesTr" / "img0002.nii.gz"
    broken.write_bytes(broken.read_bytes()[:200])
    code = main(
        demo_run("pretrain", root, tmp_path / "run", "--set", "data.num_workers=1", "--set", "train.steps_per_epoch=3")
    )
    message = capsys.readouterr().err
    assert code == 2 and str(broken) in message and "Traceback" not in message


def test_a_file_this_user_may_not_read_says_permission_denied(tmp_path, monkeypatch):
    image = tmp_path / "x.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((20, 20, 20), np.float32), np.eye(4)), image)
    monkeypatch.setattr("medmae.data.readers.os.access", lambda path, mode: False)  # tests may run as root
    with pytest.raises(DataError, match=r"x.nii.gz: permission denied: this user may not read it"):
        read_image(image)


def test_an_empty_training_list_is_refused_for_what_it_is(capsys, tmp_path):
    (tmp_path / "dataset.json").write_text('{"training": []}')
    assert main(["data", "check", "--task", "msd_hippocampus", "--data-root", str(tmp_path), "--quiet"]) == 2
    assert "dataset.json: lists no cases: 'training' (and every other list) is empty" in capsys.readouterr().err


def test_an_output_dir_that_is_a_file_or_lies_below_one_is_named(capsys, tmp_path, clean):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    argv = commands(clean["root"], clean["checkpoint"], blocker)
    for command in ("pretrain", "evaluate", "predict", "score"):
        assert main(argv[command]) == 2, command
        assert f"{blocker}: --output-dir names a file, not a folder" in capsys.readouterr().err, command
    below = commands(clean["root"], clean["checkpoint"], blocker / "sub")["finetune"]
    assert main(below) == 2 and f"lies below {blocker}, which is a file" in capsys.readouterr().err
    assert blocker.read_text() == "a file"


def test_a_checkpoint_given_as_a_folder_points_at_the_file_inside(capsys, tmp_path, clean):
    run = clean["checkpoint"].parent.parent
    argv = commands(clean["root"], run, tmp_path / "out")["evaluate"]
    assert main(argv) == 2
    assert f"{run}: a folder, not a checkpoint file; did you mean {clean['checkpoint']}?" in capsys.readouterr().err


def test_data_demo_never_writes_into_a_used_folder(capsys, tmp_path):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    assert main(["data", "demo", "--output-dir", str(tmp_path / "used"), "--cases", "2"]) == 2
    assert "a folder that is not empty" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "used").iterdir()] == ["notes.txt"]


def test_debug_works_after_the_subcommand_too(capsys, tmp_path):
    assert main(["data", "check", "--task", "btcv", "--data-root", str(tmp_path / "missing"), "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err  # the hint "rerun with --debug" works wherever it goes
