"""Helpers for tests: the repository root, the real data in ../shared/data (skipped when absent), and
two-process torchrun launches that can never hang CI."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from medmae import resource_dir

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
SHARED_DATA = ROOT.parent / "shared" / "data"


def shared(name: str) -> Path:
    """A folder of ../shared/data, or a skip saying it is absent."""
    root = SHARED_DATA / name
    if not root.is_dir():
        pytest.skip(f"real data {root} not found (../shared/data is only present on the team's machines)")
    return root


def run_torchrun(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run ARGS`` with two gloo processes on this machine's loopback device,
    one thread each; the whole process tree is killed, and the test fails, if it outlives ``timeout``
    seconds (a hung collective must fail CI, never stall it)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if Path("/sys/class/net/lo").exists():
        env["GLOO_SOCKET_IFNAME"] = "lo"  # not whatever address the host name resolves to
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        encoding="utf-8",
        errors="replace",
        env=env,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in [*descendants(process.pid), process.pid]:  # the workers run in sessions of their own
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        stderr = process.communicate(timeout=60)[1]
        pytest.fail(f"torchrun still running after {timeout:.0f} s, killed with its workers:\n{stderr[-4000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, children first, from ``/proc`` (Linux)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


TINY = str(resource_dir("configs") / "test" / "tiny.yaml")  # any task as a CPU smoke run: tiny models, 2 epochs


def demo_run(command: str, data_root: str | Path, output: str | Path, *extra: str) -> list[str]:
    """The arguments of ``medmae pretrain`` or ``medmae finetune`` on the demo task with the tiny recipe,
    writing into ``output``; ``extra`` flags follow (``--set`` values in order, so the last one wins)."""
    return [
        command,
        "--task",
        "demo",
        "--data-root",
        str(data_root),
        "--config",
        TINY,
        "--output-dir",
        str(output),
        *extra,
    ]


def write_dicom_series(image_path: Path, folder: Path, series: str = "1.2.826.0.1.3680043.2.1125.1") -> Path:
    """Write the 3D image file ``image_path`` as the DICOM series ``series`` (its UID), one file per slice,
    in ``folder`` (float intensities rounded to int16: DICOM stores integers)."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(image_path))
    if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        image = sitk.Cast(sitk.Round(image), sitk.sitkInt16)
    folder.mkdir(parents=True, exist_ok=True)
    direction = image.GetDirection()  # row-major 3 x 3: the columns are the axes' directions
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(image.GetDepth()):
        slice_ = image[:, :, z]
        slice_.SetMetaData("0020|0032", "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, z)))))
        slice_.SetMetaData("0020|0037", "\\".join(map(str, direction[0::3] + direction[1::3])))
        slice_.SetMetaData("0020|0013", str(z))
        slice_.SetMetaData("0020|000e", series)
        slice_.SetMetaData("0018|0050", str(image.GetSpacing()[2]))
        writer.SetFileName(str(folder / f"{series[-4:]}_{z:03d}.dcm"))
        writer.Execute(slice_)
    return folder


def convert_image(image_path: Path, target: Path) -> Path:
    """Write the image file ``image_path`` in the format that ``target``'s suffix names (SimpleITK)."""
    import SimpleITK as sitk

    sitk.WriteImage(sitk.ReadImage(str(image_path)), str(target))
    return target


def hippocampus_as_nnunet(root: Path, cases: int = 10, unlabelled: int = 0) -> Path:
    """The first ``cases`` real hippocampus cases laid out as nnU-Net v2's ``Dataset004_Hippocampus`` under
    ``root``, and the next ``unlabelled`` images in its ``imagesTs/`` (links to ../shared/data; skipped when
    it is absent)."""
    import json

    source = shared("msd_hippocampus")
    dataset = root / "Dataset004_Hippocampus"
    ids = [p.name[: -len(".nii.gz")] for p in sorted((source / "imagesTr").glob("hippocampus_*.nii.gz"))]
    for k, case in enumerate(ids[: cases + unlabelled]):
        folder = "imagesTr" if k < cases else "imagesTs"
        (dataset / folder).mkdir(parents=True, exist_ok=True)
        (dataset / folder / f"{case}_0000.nii.gz").symlink_to((source / "imagesTr" / f"{case}.nii.gz").resolve())
        if k < cases:
            (dataset / "labelsTr").mkdir(exist_ok=True)
            (dataset / "labelsTr" / f"{case}.nii.gz").symlink_to((source / "labelsTr" / f"{case}.nii.gz").resolve())
    spec = {
        "channel_names": {"0": "MRI"},
        "labels": {"background": 0, "Anterior": 1, "Posterior": 2},
        "numTraining": cases,
        "file_ending": ".nii.gz",
        "name": "Hippocampus",
    }
    (dataset / "dataset.json").write_text(json.dumps(spec))
    return dataset


def save_reoriented(source: Path, target: Path, codes: str = "PLS") -> Path:
    """Save the NIfTI ``source`` at ``target`` with its voxels stored so that its axes run ``codes`` (``PLS``:
    the first axis to posterior, ...): the same physical space in another orientation, as another tool may
    write a label."""
    import nibabel as nib
    from nibabel import orientations

    image = nib.load(source)
    turn = orientations.ornt_transform(orientations.io_orientation(image.affine), orientations.axcodes2ornt(codes))
    nib.save(image.as_reoriented(turn), target)
    return target
