"""Every kind of bad input tried on the commands that meet it, and the table of what medmae does with each
(docs/explanation/bad-input.md). ``python -m tests.guarantees.bad_input_catalogue`` rewrites the table;
``tests/guarantees/test_bad_input_table.py`` checks every kind and that the table is current.

A kind breaks a fresh copy of a small demo workspace (6 cases, a fine-tuned tiny UNETR), runs one command
in-process and records its exit code, its first error line (paths under the workspace shown as ``<tmp>``),
whether a traceback was printed, what it left behind and which input files it changed."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import nibabel as nib
import numpy as np

from medmae import resource_dir
from medmae.cli import main
from medmae.files import lock_folder, write_bytes
from tests.guarantees.test_bad_input import IMAGE_COMMANDS, IMAGE_PROBLEMS, LABEL_PROBLEMS, WRITE_FAILURES, rewrite
from tests.helpers import ROOT, TINY, demo_run, save_reoriented

TABLE = ROOT / "docs" / "explanation" / "bad-input.md"
TRAIN, TEST = "0002", "0006"  # a training case of the demo's datalist split, and its test case


@dataclass
class Attempt:
    """What one command was given: its arguments, and patches that simulate the environment (a full disk)."""

    argv: list[str]
    patches: tuple = ()


@dataclass
class Kind:
    """One kind of bad input: ``setup(workspace)`` breaks the workspace and says what to run; the command
    must exit ``code`` and say something matching ``said``."""

    name: str
    command: str
    setup: Callable[[Path], Attempt]
    said: str
    code: int = 2
    names: str = ""  # a path the message must name (``<tmp>/...``)


@dataclass
class Outcome:
    kind: Kind
    code: int
    message: str
    output: str
    traceback: bool
    left_behind: list[str]
    changed: list[str]


def data_flags(ws: Path) -> list[str]:
    return ["--task", "demo", "--data-root", str(ws / "data")]


def command_line(command: str, ws: Path) -> list[str]:
    """The usual arguments of ``command`` on the workspace, writing to ``<ws>/out``."""
    out, checkpoint = str(ws / "out"), str(ws / "unetr" / "checkpoints" / "best.pt")
    return {
        "data check": ["data", "check", *data_flags(ws), "--quiet"],
        "pretrain": ["pretrain", *data_flags(ws), "--config", TINY, "--output-dir", out],
        "finetune": ["finetune", *data_flags(ws), "--config", TINY, "--output-dir", out],
        "evaluate": ["evaluate", *data_flags(ws), "--checkpoint", checkpoint, "--output-dir", out, "--quiet"],
        "predict": [
            "predict",
            "--checkpoint",
            checkpoint,
            "--input",
            str(ws / "data" / "imagesTr"),
            "--output-dir",
            out,
        ],
        "score": [
            "score",
            "--task",
            "demo",
            "--pred",
            str(ws / "pred"),
            "--ref",
            str(ws / "data" / "labelsTr"),
            "--output-dir",
            out,
        ],
        "data demo": ["data", "demo", "--output-dir", out],
        "task init": ["task", "init", str(ws / "data"), "--output", str(ws / "out.yaml")],
    }[command]


def file_kinds() -> list[Kind]:
    """Broken images and labels on every command that reads them, and writes that fail on every command."""
    kinds = []
    for problem, (breaking, said) in IMAGE_PROBLEMS.items():
        for command in IMAGE_COMMANDS:
            case = TEST if command == "evaluate" else TRAIN
            file = f"imagesTr/img{case}.nii.gz"
            kinds.append(Kind(problem, command, broken_file(file, breaking, command), said, names=f"<tmp>/data/{file}"))
    for problem, (breaking, said) in LABEL_PROBLEMS.items():
        for command in ("data check", "finetune", "evaluate", "score"):
            case = TEST if command == "evaluate" else TRAIN
            file = f"labelsTr/label{case}.nii.gz"
            kinds.append(Kind(problem, command, broken_file(file, breaking, command), said, names=f"<tmp>/data/{file}"))
    for failure, (raising, target, said) in WRITE_FAILURES.items():
        for command in ("pretrain", "finetune", "evaluate", "predict", "score", "data demo"):
            setup = failing_write(command, f"medmae.files.{target}", raising)
            kinds.append(Kind(failure, command, setup, f"cannot be written.*{said}", names="<tmp>/out"))
    return kinds


def broken_file(file: str, breaking, command: str) -> Callable[[Path], Attempt]:
    """Break ``data/<file>``; for ``score`` it is a reference, scored against sound predictions."""

    def setup(ws: Path) -> Attempt:
        breaking(ws / "data" / file)
        return Attempt(command_line(command, ws))

    return setup


def failing_write(command: str, target: str, raising) -> Callable[[Path], Attempt]:
    return lambda ws: Attempt(command_line(command, ws), (mock.patch(target, raising),))


def run_in(command: str, change: Callable[[Path], object], *extra: str) -> Callable[[Path], Attempt]:
    """Apply ``change`` to the workspace, then run ``command`` with ``extra`` arguments."""

    def setup(ws: Path) -> Attempt:
        change(ws)
        return Attempt([*command_line(command, ws), *extra])

    return setup


def argv_of(make: Callable[[Path], list[str]]) -> Callable[[Path], Attempt]:
    return lambda ws: Attempt(make(ws))


def nothing(ws: Path) -> None:
    return None


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def with_srow_z(path: Path, srow_z: list[float]) -> None:
    """Rewrite a NIfTI so that its only transform (the sform) has the third row ``srow_z``."""
    image = nib.load(path)
    header = image.header.copy()
    header["sform_code"], header["qform_code"] = 1, 0
    header["srow_z"] = srow_z
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), None, header=header), path)


def nnunet(ws: Path, damage: Callable[[Path], object] = nothing) -> Path:
    """Two demo cases laid out as an nnU-Net v2 dataset at ``<ws>/nn``, then ``damage`` done to it."""
    root = ws / "nn"
    for k, case in enumerate(("0001", "0002")):
        (root / "imagesTr").mkdir(parents=True, exist_ok=True)
        (root / "labelsTr").mkdir(exist_ok=True)
        shutil.copy(ws / "data" / "imagesTr" / f"img{case}.nii.gz", root / "imagesTr" / f"case{k}_0000.nii.gz")
        shutil.copy(ws / "data" / "labelsTr" / f"label{case}.nii.gz", root / "labelsTr" / f"case{k}.nii.gz")
    spec = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "liver": 1},
        "numTraining": 2,
        "file_ending": ".nii.gz",
    }
    write(root / "dataset.json", json.dumps(spec))
    damage(root)
    return root


def nnunet_check(damage: Callable[[Path], object]) -> Callable[[Path], Attempt]:
    return lambda ws: Attempt(
        ["data", "check", "--task", "demo", "--data-root", str(nnunet(ws, damage)), "--fold", "0"]
    )


def upper_case(root: Path) -> None:
    """Every ``.nii.gz`` under ``root`` renamed to end in ``.NII.GZ``."""
    for path in list(root.rglob("*.nii.gz")):
        path.rename(path.with_name(path.name.replace(".nii.gz", ".NII.GZ")))


def nnunet_task_init(damage: Callable[[Path], object]) -> Callable[[Path], Attempt]:
    """``task init`` of the workspace's nnU-Net copy after ``damage``."""
    return argv_of(lambda ws: ["task", "init", str(nnunet(ws, damage)), "--output", str(ws / "out.yaml")])


def edit_json(path: Path, **changes) -> None:
    write(path, json.dumps(json.loads(path.read_text(encoding="utf-8-sig")) | changes))


def data_kinds() -> list[Kind]:
    """Data roots, manifests and the files they list."""
    k = Kind
    return [
        k(
            "no data root given or set",
            "data check",
            lambda ws: Attempt(
                ["data", "check", "--task", "demo"], (mock.patch.dict(os.environ, {"MEDMAE_DATA": ""}),)
            ),
            "pass --data-root DIR",
        ),
        k(
            "data root that does not exist",
            "data check",
            argv_of(lambda ws: ["data", "check", "--task", "demo", "--data-root", str(ws / "nowhere")]),
            "no such data folder",
        ),
        k(
            "data root of another layout",
            "data check",
            argv_of(lambda ws: ["data", "check", "--task", "btcv", "--data-root", str(ws / "unetr")]),
            "does not look like the btcv data",
        ),
        k(
            "unknown task",
            "data check",
            argv_of(lambda ws: ["data", "check", "--task", "liver", "--data-root", str(ws / "data")]),
            "unknown task 'liver'",
        ),
        k("unknown split", "data check", run_in("data check", nothing, "--split", "fold9"), "unknown split 'fold9'"),
        k(
            "manifest that does not exist",
            "data check",
            run_in("data check", nothing, "--manifest", "missing.json"),
            "manifest file not found",
        ),
        k(
            "manifest that is not JSON",
            "data check",
            run_in("data check", lambda ws: write(ws / "bad.json", "{training: ["), "--manifest", "bad.json"),
            "unreadable JSON manifest",
        ),
        k(
            "manifest without a training list",
            "data check",
            run_in("data check", lambda ws: write(ws / "m.json", '{"cases": []}'), "--manifest", "m.json"),
            "a manifest needs a 'training' list",
        ),
        k(
            "empty training list",
            "data check",
            run_in("data check", lambda ws: write(ws / "data" / "dataset_0.json", '{"training": []}')),
            "lists no cases",
        ),
        k(
            "manifest path leaving the data root",
            "data check",
            run_in(
                "data check",
                lambda ws: write(ws / "m.json", '{"training": [{"image": "../x.nii.gz", "label": "y.nii.gz"}]}'),
                "--manifest",
                "m.json",
            ),
            "must be relative to the data root and stay inside it",
        ),
        k(
            "case listed twice",
            "data check",
            run_in(
                "data check",
                lambda ws: write(
                    ws / "m.json",
                    json.dumps(
                        {"training": [{"image": "imagesTr/img0001.nii.gz", "label": "labelsTr/label0001.nii.gz"}] * 2}
                    ),
                ),
                "--manifest",
                "m.json",
            ),
            "listed twice",
        ),
        k(
            "image file missing",
            "data check",
            run_in("data check", lambda ws: (ws / "data" / "imagesTr" / "img0003.nii.gz").unlink()),
            "file not found",
        ),
        k(
            "file this user may not read",
            "data check",
            lambda ws: Attempt(
                command_line("data check", ws),
                (mock.patch("medmae.data.readers.os.access", lambda p, m: "img0004" not in str(p)),),
            ),
            "permission denied",
        ),
        k(
            "dataset.json with a UTF-8 byte-order mark",
            "data check",
            run_in(
                "data check",
                lambda ws: write(
                    ws / "data" / "dataset_0.json", "\ufeff" + (ws / "data" / "dataset_0.json").read_text()
                ),
            ),
            "cases with errors    0",
            code=0,
        ),
        k(
            "image affine with NaN",
            "data check",
            run_in(
                "data check",
                lambda ws: with_srow_z(ws / "data" / "imagesTr" / f"img{TRAIN}.nii.gz", [0, 0, float("nan"), 0]),
            ),
            "its affine .* holds NaN or inf",
        ),
        k(
            "singular image affine",
            "data check",
            run_in("data check", lambda ws: with_srow_z(ws / "data" / "imagesTr" / f"img{TRAIN}.nii.gz", [0, 0, 0, 0])),
            "its affine is singular",
        ),
        k(
            "1 x 1 x 1 image",
            "data check",
            run_in(
                "data check",
                lambda ws: nib.save(
                    nib.Nifti1Image(np.ones((1, 1, 1), np.float32), np.eye(4)),
                    ws / "data" / "imagesTr" / f"img{TRAIN}.nii.gz",
                ),
            ),
            "smaller than one patch",
        ),
        k(
            "all-zero image (warned)",
            "data check",
            run_in("data check", lambda ws: rewrite(ws / "data" / "imagesTr" / f"img{TRAIN}.nii.gz", lambda a: a * 0)),
            "every voxel is 0",
            code=0,
        ),
    ]


def nnunet_and_task_kinds() -> list[Kind]:
    """nnU-Net layouts and task files."""
    demo_task = (ROOT / "tasks" / "demo.yaml").read_text()
    k = Kind
    return [
        k(
            "nnU-Net case missing a channel file",
            "data check",
            nnunet_check(
                lambda r: write(
                    r / "dataset.json", (r / "dataset.json").read_text().replace('"0": "CT"', '"0": "CT", "1": "PET"')
                )
            ),
            r"case case0 has channel files \[0\]",
        ),
        k(
            "nnU-Net file without a channel number",
            "data check",
            nnunet_check(lambda r: (r / "imagesTr" / "case1_0000.nii.gz").rename(r / "imagesTr" / "case1.nii.gz")),
            "not named <case>_<4-digit channel>",
        ),
        k(
            "nnU-Net case without its label",
            "data check",
            nnunet_check(lambda r: (r / "labelsTr" / "case0.nii.gz").unlink()),
            "missing: the label of training case case0",
        ),
        k(
            "nnU-Net numTraining that disagrees",
            "data check",
            nnunet_check(lambda r: edit_json(r / "dataset.json", numTraining=5)),
            "'numTraining' says 5",
        ),
        k(
            "nnU-Net channel_names not 0, 1, ...",
            "data check",
            nnunet_check(lambda r: edit_json(r / "dataset.json", channel_names={"1": "CT"})),
            "'channel_names' must map 0, 1",
        ),
        k(
            "nnU-Net file_ending that the files do not have",
            "data check",
            nnunet_check(lambda r: edit_json(r / "dataset.json", file_ending=".nrrd")),
            r"'file_ending' is '\.nrrd', while the files of imagesTr/ end in \.nii\.gz",
            names="<tmp>/nn/dataset.json",
        ),
        k(
            "nnU-Net files ending in upper-case .NII.GZ (read)",
            "data check",
            nnunet_check(upper_case),
            "cases with errors    0",
            code=0,
        ),
        k(
            "label stored in another orientation of its image's grid (read in the image's)",
            "data check",
            run_in(
                "data check",
                lambda ws: save_reoriented(
                    ws / "data" / "labelsTr" / f"label{TRAIN}.nii.gz", ws / "data" / "labelsTr" / f"label{TRAIN}.nii.gz"
                ),
            ),
            r"same physical space as the image, stored in another orientation \(axis order PLS vs RAS\)",
            code=0,
        ),
        k(
            "BTCV-layout folder without its dataset_0.json",
            "data export-nnunet",
            lambda ws: (
                (ws / "data" / "dataset_0.json").unlink(),
                Attempt(
                    [
                        *["data", "export-nnunet", "--task", "btcv", "--data-root", str(ws / "data")],
                        *["--output-dir", str(ws / "out")],
                    ]
                ),
            )[1],
            "24 of its 30 images are not here .*: pass --manifest FILE",
            names="<tmp>/data",
        ),
        k(
            "nnU-Net label values that are not consecutive",
            "task init",
            nnunet_task_init(lambda r: edit_json(r / "dataset.json", labels={"background": 0, "lesion": 255})),
            r"label values \[0, 255\] in dataset.json's labels are not consecutive .*remap 255 -> 1",
            names="<tmp>/nn/dataset.json",
        ),
        k(
            "nnU-Net ignore label below the highest value",
            "task init",
            nnunet_task_init(
                lambda r: edit_json(r / "dataset.json", labels={"background": 0, "ignore": 1, "liver": 2})
            ),
            r"'ignore' is 1: the ignore label must be a single value above all the others, 3",
            names="<tmp>/nn/dataset.json",
        ),
        k(
            "nnU-Net regions_class_order without a value for each region",
            "task init",
            nnunet_task_init(
                lambda r: edit_json(
                    r / "dataset.json",
                    labels={"background": 0, "organs": [1, 2, 3, 4], "kidneys": [3, 4], "left_kidney": 4},
                    regions_class_order=[1, 3],
                )
            ),
            r"'regions_class_order' \[1, 3\] must give one label value for each of the 3 regions",
            names="<tmp>/nn/dataset.json",
        ),
        k(
            "task file ignore label that is not the value after the last label",
            "data check",
            argv_of(
                lambda ws: (
                    write(ws / "t.yaml", demo_task + "ignore_label: 9\n"),
                    ["data", "check", "--task", str(ws / "t.yaml"), "--data-root", str(ws / "data")],
                )[1]
            ),
            r"ignore_label 9 must be the value after the last label, 5",
        ),
        k(
            "task file with an unknown key",
            "data check",
            argv_of(
                lambda ws: (
                    write(ws / "t.yaml", demo_task + "colour: blue\n"),
                    ["data", "check", "--task", str(ws / "t.yaml"), "--data-root", str(ws / "data")],
                )[1]
            ),
            r"unknown keys \['colour'\]",
        ),
        k(
            "task file without a required key",
            "data check",
            argv_of(
                lambda ws: (
                    write(ws / "t.yaml", "name: x\n"),
                    ["data", "check", "--task", str(ws / "t.yaml"), "--data-root", str(ws / "data")],
                )[1]
            ),
            "missing keys",
        ),
        k(
            "task file that is not YAML",
            "data check",
            argv_of(
                lambda ws: (
                    write(ws / "t.yaml", "[1, 2"),
                    ["data", "check", "--task", str(ws / "t.yaml"), "--data-root", str(ws / "data")],
                )[1]
            ),
            "cannot read the task file",
        ),
        k(
            "task manifest found nowhere",
            "data check",
            argv_of(
                lambda ws: (
                    write(ws / "t.yaml", demo_task.replace("manifest: demo.json", "manifest: mine.json")),
                    ["data", "check", "--task", str(ws / "t.yaml"), "--data-root", str(ws / "data")],
                )[1]
            ),
            "its manifest mine.json is neither at",
        ),
    ]


def config_and_training_kinds() -> list[Kind]:
    """Configs, output folders and the training commands' flags."""
    k = Kind
    return [
        k(
            "unknown config key",
            "pretrain",
            run_in("pretrain", nothing, "--set", "optim.base_rate=1"),
            "unknown config key 'optim.base_rate'; did you mean optim.base_lr",
        ),
        k(
            "config value of the wrong type",
            "pretrain",
            run_in("pretrain", nothing, "--set", "data.batch_size=four"),
            "data.batch_size must be int",
        ),
        k(
            "--set without a value",
            "pretrain",
            run_in("pretrain", nothing, "--set", "optim.base_lr"),
            "expected KEY=VALUE",
        ),
        k(
            "mask ratio 0",
            "pretrain",
            run_in("pretrain", nothing, "--set", "model.mask_ratio=0"),
            r"model.mask_ratio must lie in \(0, 1\)",
        ),
        k(
            "config file that does not exist",
            "pretrain",
            run_in("pretrain", nothing, "--config", "nothing.yaml"),
            "no such config file",
        ),
        k(
            "config file without sections",
            "pretrain",
            run_in("pretrain", lambda ws: write(ws / "c.yaml", "base_lr: 1\n"), "--config", "c.yaml"),
            "a config file maps sections",
        ),
        k(
            "--config given twice (merged in order)",
            "pretrain",
            run_in("pretrain", lambda ws: write(ws / "c.yaml", "train: {epochs: 3}\n"), "--config", "c.yaml"),
            "pretraining finished",
            code=0,
        ),
        k(
            "output folder that is a file",
            "pretrain",
            run_in("pretrain", lambda ws: write(ws / "out", "a file")),
            "--output-dir names a file, not a folder",
        ),
        k(
            "output folder below a file",
            "finetune",
            lambda ws: (
                write(ws / "blocker", "a file"),
                Attempt([*command_line("finetune", ws)[:-1], str(ws / "blocker" / "run")]),
            )[1],
            "lies below .*blocker, which is a file",
        ),
        k(
            "output folder that holds a run",
            "pretrain",
            lambda ws: (main(command_line("pretrain", ws)), Attempt(command_line("pretrain", ws)))[1],
            "already holds a run; pass --resume",
        ),
        k(
            "resume with a changed config",
            "pretrain",
            lambda ws: (
                main(command_line("pretrain", ws)),
                Attempt([*command_line("pretrain", ws), "--resume", "--set", "optim.base_lr=1"]),
            )[1],
            "--resume continues with the saved config",
        ),
        k(
            "--images pattern that matches nothing",
            "pretrain",
            argv_of(lambda ws: ["pretrain", "--task", "demo", "--config", TINY, "--images", str(ws / "*.nrrd")]),
            "the pattern matches nothing",
        ),
        k(
            "--images with --data-root",
            "pretrain",
            run_in("pretrain", nothing, "--images", "data"),
            "--images replaces --data-root",
        ),
        k("label fraction of 0", "finetune", run_in("finetune", nothing, "--label-fraction", "0"), "fraction"),
        k(
            "NaN in a training image, found before training",
            "finetune",
            run_in(
                "finetune",
                lambda ws: rewrite(
                    ws / "data" / "imagesTr" / f"img{TRAIN}.nii.gz",
                    lambda a: np.where(a > 100, np.nan, a.astype(np.float32)),
                ),
            ),
            "found before training",
        ),
        k(
            "pretrained checkpoint that does not exist",
            "finetune",
            run_in("finetune", nothing, "--pretrained", "none.pt"),
            "no such checkpoint file",
        ),
    ]


def checkpoint_and_output_kinds() -> list[Kind]:
    """Checkpoints, and what evaluate, predict, score, data demo and task init are given."""
    k = Kind
    return [
        k(
            "checkpoint that is a folder",
            "evaluate",
            lambda ws: Attempt(
                [*command_line("evaluate", ws)[:5], "--checkpoint", str(ws / "unetr"), "--output-dir", str(ws / "out")]
            ),
            "a folder, not a checkpoint file; did you mean",
        ),
        k(
            "truncated checkpoint",
            "evaluate",
            run_in(
                "evaluate",
                lambda ws: (ws / "unetr" / "checkpoints" / "best.pt").write_bytes(
                    (ws / "unetr" / "checkpoints" / "best.pt").read_bytes()[:1000]
                ),
            ),
            "best.pt",
        ),
        k(
            "pretraining checkpoint given to evaluate",
            "evaluate",
            lambda ws: (
                main(command_line("pretrain", ws)),
                Attempt(
                    [
                        *command_line("evaluate", ws)[:5],
                        "--checkpoint",
                        str(ws / "out" / "checkpoints" / "last.pt"),
                        "--output-dir",
                        str(ws / "eval"),
                    ]
                ),
            )[1],
            "a pretrain checkpoint; evaluate and predict need one from medmae finetune",
        ),
        k(
            "checkpoint of another task",
            "evaluate",
            argv_of(
                lambda ws: [
                    "evaluate",
                    "--task",
                    "btcv",
                    "--data-root",
                    str(ws / "data"),
                    "--checkpoint",
                    str(ws / "unetr" / "checkpoints" / "best.pt"),
                ]
            ),
            "trained on task demo, not btcv",
        ),
        k(
            "evaluated cases the checkpoint trained on",
            "evaluate",
            run_in("evaluate", nothing, "--fold", "1"),
            r"were seen by .*: img\d+: (fine-tuned|picked the weights) on \(split datalist\)",
        ),
        k(
            "input folder without images",
            "predict",
            lambda ws: (
                write(ws / "empty" / "notes.txt", "x"),
                Attempt(
                    [*command_line("predict", ws)[:3], "--input", str(ws / "empty"), "--output-dir", str(ws / "out")]
                ),
            )[1],
            "holds no .nii or .nii.gz or",
        ),
        k(
            "input that does not exist",
            "predict",
            lambda ws: Attempt(
                [*command_line("predict", ws)[:3], "--input", str(ws / "nothing"), "--output-dir", str(ws / "out")]
            ),
            "no such file or folder",
        ),
        k(
            "x.nii beside x.nii.gz",
            "predict",
            run_in(
                "predict",
                lambda ws: shutil.copy(
                    ws / "data" / "imagesTr" / "img0001.nii.gz", ws / "data" / "imagesTr" / "img0001.nii"
                ),
            ),
            "two files of case img0001",
        ),
        k(
            "output folder inside the input folder",
            "predict",
            lambda ws: Attempt(
                [*command_line("predict", ws)[:5], "--output-dir", str(ws / "data" / "imagesTr" / "out")]
            ),
            "lies inside the input folder",
        ),
        k(
            "files that are not images beside the images (noted)",
            "predict",
            run_in("predict", lambda ws: write(ws / "data" / "imagesTr" / "notes.txt", "x"), "--quiet"),
            "are not images and are skipped: notes.txt",
            code=0,
        ),
        k(
            "prediction missing for a reference",
            "score",
            run_in("score", lambda ws: (ws / "pred" / "label0003.nii.gz").unlink()),
            "label0003: no prediction in",
        ),
        k(
            "prediction on another grid",
            "score",
            run_in("score", lambda ws: rewrite(ws / "pred" / "label0003.nii.gz", lambda a: a[:-2])),
            "prediction shape .* differs from reference shape",
        ),
        k(
            "two files of one case in a folder",
            "score",
            run_in("score", lambda ws: shutil.copy(ws / "pred" / "label0003.nii.gz", ws / "pred" / "label0003.nii")),
            "two files for case label0003",
        ),
        k(
            "prediction folder that does not exist",
            "score",
            run_in("score", lambda ws: shutil.rmtree(ws / "pred")),
            "no such folder",
        ),
        k(
            "a classification task",
            "score",
            lambda ws: Attempt(
                [
                    "score",
                    "--task",
                    "chestxray14",
                    "--pred",
                    str(ws / "pred"),
                    "--ref",
                    str(ws / "data" / "labelsTr"),
                    "--output-dir",
                    str(ws / "out"),
                ]
            ),
            "scores segmentations",
        ),
        k(
            "demo data into a used folder",
            "data demo",
            run_in("data demo", lambda ws: write(ws / "out" / "mine.txt", "mine")),
            "a folder that is not empty",
        ),
        k(
            "dataset without a description",
            "task init",
            lambda ws: ((ws / "data" / "dataset_0.json").unlink(), Attempt(command_line("task init", ws)))[1],
            "no dataset_0.json or dataset.json here",
        ),
        k(
            "task file that exists",
            "task init",
            run_in("task init", lambda ws: write(ws / "out.yaml", "mine")),
            "already exists; choose another --output or pass --force",
        ),
    ]


ONE_STEP = [
    flag for key in ("train.epochs=1", "optim.warmup_epochs=0", "train.steps_per_epoch=1") for flag in ("--set", key)
]


def pretrained_on_the_test_image(ws: Path) -> Attempt:
    """An MAE pretrained on every image of ``imagesTr`` (the test case's among them), fine-tuned from."""
    mae, unetr = ws / "mae", ws / "unetr_mae"
    images = ["pretrain", "--task", "demo", "--images", str(ws / "data" / "imagesTr"), "--config", TINY]
    main([*images, "--output-dir", str(mae), *ONE_STEP])
    main(
        [
            *command_line("finetune", ws)[:-1],
            str(unetr),
            "--pretrained",
            str(mae / "checkpoints" / "last.pt"),
            *ONE_STEP,
        ]
    )
    return Attempt([*command_line("evaluate", ws)[:5], "--checkpoint", str(unetr / "checkpoints" / "best.pt")])


def resumed_with_another_spacing(ws: Path) -> Attempt:
    """A run of a task file whose spacing changed before ``--resume``."""
    task = (ROOT / "tasks" / "demo.yaml").read_text()
    write(ws / "t.yaml", task)
    argv = ["finetune", "--task", str(ws / "t.yaml"), *command_line("finetune", ws)[3:], *ONE_STEP]
    main(argv)
    write(ws / "t.yaml", task.replace("spacing: [4.5, 4.5, 4.5]", "spacing: [3.0, 3.0, 3.0]"))
    return Attempt([*argv, "--set", "train.epochs=2", "--resume"])


def earlier_predictions(ws: Path) -> None:
    """``<ws>/out`` holding a label map for each image of ``imagesTr``, as an earlier ``predict`` leaves."""
    for label in (ws / "pred").iterdir():
        write_bytes(ws / "out" / label.name.replace("label", "img"), label.read_bytes())


@contextlib.contextmanager
def held(folder: Path) -> Iterator[None]:
    """``folder`` held by a run, as another live run would hold it."""
    lock = lock_folder(folder)
    try:
        yield
    finally:
        lock.release()


def seen_and_overwritten_kinds() -> list[Kind]:
    """Scores on cases a model has seen, and runs or predictions that would overwrite each other."""
    k = Kind
    return [
        k(
            "test part of a same-named split holding a training case",
            "evaluate",
            run_in(
                "evaluate",
                lambda ws: edit_json(
                    ws / "data" / "dataset_0.json",
                    validation=[{"image": "imagesTr/img0002.nii.gz", "label": "labelsTr/label0002.nii.gz"}],
                ),
            ),
            r"img0002: fine-tuned on \(split datalist\)",
        ),
        k(
            "test image the encoder was pretrained on",
            "evaluate",
            pretrained_on_the_test_image,
            r"img0006: its encoder has seen the image \(<tmp>/mae/checkpoints/last.pt\)",
        ),
        k(
            "run folder held by a live run",
            "finetune",
            lambda ws: Attempt(command_line("finetune", ws), (held(ws / "out"),)),
            r"<tmp>/out: in use by another run \(process <pid>",
        ),
        k(
            "resume after the task file changed",
            "finetune",
            resumed_with_another_spacing,
            r"task demo has changed since: spacing \(4.5, 4.5, 4.5\) -> \(3.0, 3.0, 3.0\)",
        ),
        k(
            "prediction folder holding earlier predictions",
            "predict",
            run_in("predict", earlier_predictions),
            "already holds 6 of the files this prediction writes",
        ),
        k(
            "checkpoint without its checksum file (noted)",
            "evaluate",
            run_in("evaluate", lambda ws: (ws / "unetr" / "checkpoints" / "best.pt.sha256").unlink()),
            "has no best.pt.sha256 beside it: its integrity is not checked",
            code=0,
        ),
    ]


def store_kinds() -> list[Kind]:
    """The preprocessed store that training builds and reads (written under ``<tmp>/stores``)."""
    k = Kind

    def in_stores(change: Callable[[Path], object], *patches) -> Callable[[Path], Attempt]:
        def setup(ws: Path) -> Attempt:
            change(ws)
            return Attempt([*command_line("finetune", ws), "--set", f"data.store={ws / 'stores'}"], patches)

        return setup

    def old_store(ws: Path) -> None:
        from medmae.data.store import STORE_FORMAT, store_folder
        from medmae.tasks import load_task

        write(
            store_folder(load_task("demo"), ws / "stores") / "store.json",
            json.dumps({"format": STORE_FORMAT, "medmae": "0.0.1"}),
        )

    full = OSError(28, "No space left on device")
    return [
        k(
            "preprocessed store made by another medmae version",
            "finetune",
            in_stores(old_store),
            r"made by medmae 0\.0\.1.*delete the folder, or build it again with medmae data preprocess --rebuild",
            names="<tmp>/stores",
        ),
        k(
            "disk full while preprocessing into the store",
            "finetune",
            in_stores(nothing, mock.patch("blosc2.asarray", side_effect=full)),
            r"cannot be written \(No space left on device\)",
            names="<tmp>/stores",
        ),
    ]


def other_kinds() -> list[Kind]:
    """Every other kind: data roots, manifests, task files, configs, checkpoints, flags and folders."""
    return (
        data_kinds()
        + nnunet_and_task_kinds()
        + config_and_training_kinds()
        + checkpoint_and_output_kinds()
        + seen_and_overwritten_kinds()
        + store_kinds()
    )


def catalogue() -> list[Kind]:
    return file_kinds() + other_kinds()


def workspace_template(base: Path) -> Path:
    """The demo data (6 cases), sound predictions (copies of its labels) and a tiny UNETR fine-tuned on it."""
    from medmae.data.synthetic import write_demo_dataset

    template = base / "template"
    write_demo_dataset(template / "data", cases=6, validation=1, seed=0)
    shutil.copytree(template / "data" / "labelsTr", template / "pred")
    one_step = ["train.epochs=1", "optim.warmup_epochs=0", "train.steps_per_epoch=1"]
    flags = [flag for key in one_step for flag in ("--set", key)]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(demo_run("finetune", template / "data", template / "unetr", *flags)) == 0
    return template


def tree(folder: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``folder`` (folders as ``<dir>``)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        key = path.relative_to(folder).as_posix()
        found[key] = "<dir>" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@contextlib.contextmanager
def working_directory(folder: Path) -> Iterator[None]:
    """Run the block in ``folder`` (``contextlib.chdir`` needs Python 3.11)."""
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


@contextlib.contextmanager
def captured() -> Iterator[io.StringIO]:
    """Standard output, standard error and medmae's log, into one buffer."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    logger = logging.getLogger("medmae")
    logger.addHandler(handler)
    try:
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            yield buffer
    finally:
        logger.removeHandler(handler)


def attempt(kind: Kind, template: Path, base: Path) -> Outcome:
    """Run ``kind`` in a fresh copy of ``template`` under ``base`` (which the run's cwd is)."""
    ws = base / "ws"
    shutil.rmtree(ws, ignore_errors=True)
    shutil.copytree(template, ws)
    with working_directory(ws), captured():
        given = kind.setup(ws)
    before = tree(ws)
    with working_directory(ws), captured() as said, contextlib.ExitStack() as stack:
        for patch in given.patches:
            stack.enter_context(patch)
        try:
            code = main(given.argv)
        except SystemExit as exit_:  # argparse refuses a malformed flag value with exit 2 and its usage
            code = exit_.code
    after = tree(ws)
    output = shown(said.getvalue(), ws)
    left = sorted(set(after) - set(before)) if code else []
    changed = sorted(
        path for path in before if path in after and before[path] != after[path] and before[path] != "<dir>"
    )
    return Outcome(kind, code, message(output, kind.said), output, "Traceback" in output, left, changed)


def shown(output: str, ws: Path) -> str:
    """Output as the table shows it: the workspace as ``<tmp>``, medmae's own folder as ``<medmae>``, file
    digests as ``<sha256>``."""
    output = output.replace(str(ws), "<tmp>").replace(str(resource_dir("data_manifests").parent), "<medmae>")
    output = re.sub(
        r"\(process \d+ on \S+ since \S+ \S+: .*?\); wait",
        "(process <pid> on <host> since <time>: <command>); wait",
        output,
    )
    return re.sub(r"\b[0-9a-f]{12}\.\.\.", "<sha256>...", output)


def message(output: str, said: str) -> str:
    """The line that says what went wrong: the error line (with its first detail when it lists them below,
    or the first case error of ``data check`` when it lists them above), else the first line matching
    ``said`` (a note or a warning of a command that went on)."""
    lines = output.splitlines()
    errors = [k for k, line in enumerate(lines) if re.match(r"medmae( \w+)*: (error|internal error|interrupted)", line)]
    if not errors:
        return next((line for line in lines if re.search(said, line)), "")
    first = lines[errors[0]]
    if first.endswith(":") and errors[0] + 1 < len(lines):
        first += " " + lines[errors[0] + 1].strip()
    if "(listed above)" in first:
        detail = next((line for line in lines if line.startswith("ERROR")), "")
        first = f"{detail} ({first.removeprefix('medmae: error: ')})"
    return first


def run_all(base: Path) -> list[Outcome]:
    template = workspace_template(base)
    return [attempt(kind, template, base) for kind in catalogue()]


def table(outcomes: list[Outcome]) -> str:
    """The markdown page: a summary line, then one row per kind."""
    failed = [o for o in outcomes if o.code == 2]
    summary = (
        f"{len(outcomes)} kinds of bad input, each tried on a fresh copy of a small demo workspace by "
        "`tests/guarantees/test_bad_input_table.py` (which also checks that this page is current; "
        "`python -m tests.guarantees.bad_input_catalogue` rewrites it). "
        f"{len(failed)} are refused with exit code 2, {len(outcomes) - len(failed)} accepted with a note or a "
        f"warning (exit 0); tracebacks printed: {sum(o.traceback for o in outcomes)}; "
        f"refusals that left anything behind: {sum(bool(o.left_behind) for o in outcomes)}; "
        f"inputs changed: {sum(bool(o.changed) for o in outcomes)}. Paths under the workspace are shown as `<tmp>`."
    )
    lines = [
        "# Bad input: what medmae does with it",
        "",
        summary,
        "",
        "| # | bad input | command | exit | what medmae says |",
        "|---|---|---|---|---|",
    ]
    for number, o in enumerate(outcomes, 1):
        said = o.message.replace("|", "\\|")
        lines.append(f"| {number} | {o.kind.name} | `{o.kind.command}` | {o.code} | {said} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    with tempfile.TemporaryDirectory() as folder:
        os.environ["MEDMAE_STORE"] = str(Path(folder) / "stores")  # as the tests do: no store outside the folder
        TABLE.write_text(table(run_all(Path(folder))), encoding="utf-8")
    print(f"wrote {TABLE}", file=sys.stderr)
