"""The training engine end to end: pretrain -> finetune -> evaluate -> predict on real MRIs, resume after
SIGKILL, two-process DDP against one process, bf16 against fp32, divergence stops the run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import run_torchrun, shared

from medmae import resource_dir
from medmae.checkpoint import load_checkpoint
from medmae.cli import main
from medmae.config import load_config
from medmae.data.cases import Case
from medmae.data.loaders import ShardSampler
from medmae.devices import autocast
from medmae.errors import UserError
from medmae.inference.segment import to_label_map
from medmae.models import create_model
from medmae.tasks import load_task
from medmae.training import pretrain
from medmae.training.finetune import build_finetune_model, label_subset
from medmae.training.optim import learning_rate
from medmae.training.pretrain import mae_loss
from medmae.training.session import RunRequest, with_roi

TINY = str(resource_dir("configs") / "test" / "tiny.yaml")


def test_pretrain_finetune_evaluate_predict_on_hippocampus(tmp_path, hippocampus_root):
    common = ["--task", "msd_hippocampus", "--data-root", str(hippocampus_root), "--config", TINY]
    mae, unetr = tmp_path / "mae", tmp_path / "unetr"
    assert main(["pretrain", *common, "--output-dir", str(mae)]) == 0
    assert len(pd.read_csv(mae / "metrics.csv")) == 2 and (mae / "config.yaml").is_file()
    assert sorted(p.name for p in (mae / "figures").glob("*.png")) == [
        "reconstruction_epoch0001.png",
        "reconstruction_epoch0002.png",
    ]
    assert (
        main(
            [
                "finetune",
                *common,
                "--pretrained",
                str(mae / "checkpoints" / "last.pt"),
                "--output-dir",
                str(unetr),
                "--label-fraction",
                "0.5",
                "--set",
                "train.val_every=2",
            ]
        )
        == 0
    )
    best = load_checkpoint(unetr / "checkpoints" / "best.pt")
    assert best["config"]["name"] == "unetr_vit_tiny_patch16_3d" and best["config"]["img_size"] == [48, 64, 48]
    assert best["task"]["spacing"] == [1.0, 1.0, 1.0] and best["task"]["intensity"]["rule"] == "percentile_zscore"
    assert (best["stage"], best["epoch"], best["step"], best["medmae_version"]) == ("finetune", 2, 4, "0.1.0")
    assert best["run_config"]["data"]["label_fraction"] == 0.5 and "optimizer" not in best
    assert set(pd.read_csv(unetr / "metrics.csv").columns) >= {"loss", "lr", "samples_per_s", "val_mean_dsc"}

    evaluation = tmp_path / "evaluation"
    assert (
        main(
            [
                "evaluate",
                "--task",
                "msd_hippocampus",
                "--data-root",
                str(hippocampus_root),
                "--checkpoint",
                str(unetr / "checkpoints" / "best.pt"),
                "--output-dir",
                str(evaluation),
                "--quiet",
            ]
        )
        == 0
    )
    per_case = pd.read_csv(evaluation / "per_case.csv")
    assert len(per_case) == 40 * 2 and set(per_case["class"]) == {"anterior", "posterior"}
    assert (evaluation / "summary.csv").is_file() and len(list((evaluation / "predictions").glob("*.nii.gz"))) == 40

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in ("hippocampus_001.nii.gz", "hippocampus_004.nii.gz"):
        (inputs / name).write_bytes((hippocampus_root / "imagesTr" / name).read_bytes())
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(unetr / "checkpoints" / "best.pt"),
                "--input",
                str(inputs),
                "--output-dir",
                str(tmp_path / "predictions"),
                "--quiet",
            ]
        )
        == 0
    )
    for source in inputs.iterdir():
        image, prediction = nib.load(source), nib.load(tmp_path / "predictions" / source.name)
        assert prediction.shape == image.shape and np.allclose(prediction.affine, image.affine)
        assert set(np.unique(np.asarray(prediction.dataobj))) <= {0, 1, 2}
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(unetr / "checkpoints" / "best.pt"),
                "--input",
                str(inputs),
                "--output-dir",
                str(inputs / "out"),
            ]
        )
        == 2
    )  # never inside the input folder
    (inputs / "hippocampus_004.nii.gz").write_bytes(b"")
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(unetr / "checkpoints" / "best.pt"),
                "--input",
                str(inputs),
                "--output-dir",
                str(tmp_path / "again"),
            ]
        )
        == 2
    )  # an unreadable input is named, not a crash


def _pretrain_command(demo_root: Path, output: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "medmae",
        "pretrain",
        "--task",
        "demo",
        "--data-root",
        str(demo_root),
        "--config",
        TINY,
        "--output-dir",
        str(output),
        *extra,
    ]


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["cached", "monai"])
def test_a_killed_pretraining_resumes_where_its_checkpoint_left_off(tmp_path, demo_root, sampler):
    epochs = ["--set", "train.epochs=12", "--set", f"data.sampler={sampler}"]
    subprocess.run(_pretrain_command(demo_root, tmp_path / "whole", *epochs), check=True, capture_output=True)
    killed = tmp_path / "killed"
    process = subprocess.Popen(
        _pretrain_command(demo_root, killed, *epochs), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    while not (killed / "checkpoints" / "last.pt").exists() and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    saved = load_checkpoint(killed / "checkpoints" / "last.pt")
    assert 1 <= saved["epoch"] < 12
    resumed = subprocess.run(
        _pretrain_command(demo_root, killed, *epochs, "--resume"), capture_output=True, text=True, check=False
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed at epoch {saved['epoch']}, step {saved['step']}" in resumed.stderr
    whole, after = (pd.read_csv(tmp_path / name / "metrics.csv") for name in ("whole", "killed"))
    assert list(after["epoch"]) == list(range(1, 13)) and list(after["step"]) == list(whole["step"])
    assert np.array_equal(after["lr"], whole["lr"])  # the schedule continues at the saved step
    assert np.array_equal(after["loss"], whole["loss"])  # crops, flips and masks are seeded per sample and pass
    final = [load_checkpoint(tmp_path / name / "checkpoints" / "last.pt")["state_dict"] for name in ("whole", "killed")]
    assert all(torch.equal(final[0][k], final[1][k]) for k in final[0])

    again = main(["pretrain", "--task", "demo", "--data-root", str(demo_root), "--output-dir", str(killed)])
    assert again == 2  # an existing run is not overwritten without --resume
    assert (
        main(
            [
                "pretrain",
                "--task",
                "demo",
                "--data-root",
                str(demo_root),
                "--output-dir",
                str(killed),
                "--resume",
                "--config",
                TINY,
                *epochs,
                "--set",
                "optim.base_lr=1",
            ]
        )
        == 2
    )  # a resumed run keeps its saved config
    assert (
        main(
            [
                "pretrain",
                "--task",
                "demo",
                "--data-root",
                str(demo_root),
                "--output-dir",
                str(killed),
                "--resume",
                "--config",
                TINY,
                *epochs,
                "--set",
                "train.dist_timeout_min=5",
            ]
        )
        == 0
    )  # but may wait longer for other processes
    assert yaml.safe_load((killed / "config.yaml").read_text())["train"]["dist_timeout_min"] == 5


DDP_SCRIPT = """
import os, sys, torch
from medmae.training import finetune, pretrain
from medmae.training.session import RunRequest
rank = int(os.environ.get("RANK", 0))
output = sys.argv[2] if rank == 0 else sys.argv[3]  # rank 1 is pointed elsewhere: it must write nothing there
run = dict(task="demo", data_root=sys.argv[1], config_file=sys.argv[4],
           overrides=["data.batch_size=4", "train.epochs=2", "train.steps_per_epoch=2", *sys.argv[8:]])
if sys.argv[7] == "pretrain":
    model = pretrain.run(RunRequest(**run, output_dir=output + "/mae"))
else:
    model = finetune.run(RunRequest(**run, output_dir=output + "/unetr", pretrained=sys.argv[2] + "/mae/checkpoints/last.pt"))
torch.save(model.state_dict(), os.path.join(sys.argv[5], f"{sys.argv[7]}_{sys.argv[6]}_rank{rank}.pt"))
"""


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_over_the_same_global_batch(tmp_path, demo_root):
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)
    for stage in ("pretrain", "finetune"):  # one process group per command, as on the command line
        for name in ("ddp", "single"):
            args = [
                str(script),
                str(demo_root),
                str(tmp_path / f"{name}_run"),
                str(tmp_path / f"{name}_rank1_folder"),
                TINY,
                str(tmp_path),
                name,
                stage,
            ]
            run = (
                run_torchrun(args)
                if name == "ddp"
                else subprocess.run(
                    [sys.executable, *args],
                    capture_output=True,
                    text=True,
                    env=dict(os.environ, OMP_NUM_THREADS="1"),
                    check=False,
                )
            )
            assert run.returncode == 0, run.stderr[-3000:]
    rank0, rank1, single = (
        torch.load(tmp_path / f"pretrain_{n}.pt") for n in ("ddp_rank0", "ddp_rank1", "single_rank0")
    )
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    # Same samples, crops and masks; only the order of float32 sums differs (gloo averages two half-batch
    # gradients, one process sums the whole batch): round-off of about 1e-7 relative, which four AdamW
    # steps of at most lr = 7.8e-4 each keep far below 1e-5.
    assert max((rank0[k] - single[k]).abs().max().item() for k in rank0) < 1e-5
    assert not (tmp_path / "ddp_rank1_folder").exists()  # only rank 0 writes
    assert len(pd.read_csv(tmp_path / "ddp_run" / "mae" / "metrics.csv")) == 2
    # Fine-tuning UNETR from those weights: the first epoch's loss (same samples, same crops) agrees to
    # round-off. The weights agree only to Adam's bound: Adam's first updates are close to lr x sign(g), so
    # an element whose gradient is at round-off level (common in the ReLU / InstanceNorm conv decoder)
    # can step either way, up to 2 x the sum of the learning rates apart. Validation is sharded over the
    # ranks and gathered: both ranks agree on the score, and so on which checkpoint is best.
    rank0, rank1, single = (
        torch.load(tmp_path / f"finetune_{n}.pt") for n in ("ddp_rank0", "ddp_rank1", "single_rank0")
    )
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    rates = sum(learning_rate(step, total_steps=4, warmup_steps=2, peak=0.05 * 4 / 256) for step in range(4))
    assert max((rank0[k] - single[k]).abs().max().item() for k in rank0) <= 2 * rates
    ddp, one = (pd.read_csv(tmp_path / f"{name}_run" / "unetr" / "metrics.csv") for name in ("ddp", "single"))
    assert ddp["loss"][0] == pytest.approx(one["loss"][0], rel=1e-5)
    assert ddp["val_mean_dsc"].tolist() == pytest.approx(one["val_mean_dsc"].tolist(), abs=0.02)


@pytest.mark.slow
def test_two_process_ddp_pretraining_matches_one_process_with_the_monai_sampler(tmp_path, demo_root):
    """The fallback chain (MONAI transforms in loader processes) seeds each item alike, so it agrees too."""
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)
    for name in ("ddp", "single"):
        args = [
            str(script),
            str(demo_root),
            str(tmp_path / f"{name}_run"),
            str(tmp_path / "elsewhere"),
            TINY,
            str(tmp_path),
            name,
            "pretrain",
            "data.sampler=monai",
        ]
        run = (
            run_torchrun(args)
            if name == "ddp"
            else subprocess.run(
                [sys.executable, *args],
                capture_output=True,
                text=True,
                env=dict(os.environ, OMP_NUM_THREADS="1"),
                check=False,
            )
        )
        assert run.returncode == 0, run.stderr[-3000:]
    rank0, single = (torch.load(tmp_path / f"pretrain_{n}.pt") for n in ("ddp_rank0", "single_rank0"))
    assert max((rank0[k] - single[k]).abs().max().item() for k in rank0) < 1e-5


def test_shards_are_disjoint_and_make_up_the_global_batches():
    ranks = [ShardSampler(size=11, global_batch=4, rank=r, world=2, seed=3) for r in range(2)]
    single = ShardSampler(size=11, global_batch=4, rank=0, world=1, seed=3)
    for sampler in (*ranks, single):
        sampler.set_pass(5)
    shards = [[index for _, index in sampler] for sampler in ranks]
    assert not set(shards[0]) & set(shards[1]) and len(shards[0]) == len(shards[1]) == 4
    whole = [index for _, index in single]
    for step in range(2):  # each step's global batch is the same set of cases in one or two processes
        assert set(whole[4 * step : 4 * step + 4]) == set(
            shards[0][2 * step : 2 * step + 2] + shards[1][2 * step : 2 * step + 2]
        )


def test_bf16_autocast_step_matches_fp32():
    model = create_model("mae_vit_tiny_patch16_3d", img_size=(48, 48, 32))
    batch = {"image": torch.randn(4, 1, 48, 48, 32), "sample_seed": torch.arange(4)}
    losses, grads = [], []
    for precision in ("fp32", "bf16"):
        model.zero_grad()
        with autocast(precision, torch.device("cpu")):
            loss = mae_loss(model, batch, torch.device("cpu"))
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    # bf16 keeps 8 significant bits (rounding error 2^-9, 0.2 %) per operation; the loss is a mean over
    # thousands of squared errors, so the rounding mostly cancels. Measured: about 0.1 % apart.
    assert losses[1] == pytest.approx(losses[0], rel=1e-2)
    assert torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0) > 0.98


def test_a_diverging_run_stops_with_a_clear_message(tmp_path, demo_root, capsys):
    output = tmp_path / "diverged"
    code = main(
        [
            "pretrain",
            "--task",
            "demo",
            "--data-root",
            str(demo_root),
            "--config",
            TINY,
            "--output-dir",
            str(output),
            "--set",
            "optim.base_lr=1e30",
            "--set",
            "train.epochs=3",
        ]
    )
    assert code == 2
    assert "the loss became" in capsys.readouterr().err
    assert not (output / "checkpoints" / "last.pt").exists()


def test_label_fraction_takes_a_fixed_nested_subset():
    cases = [Case(f"case{k:03d}", Path(f"{k}.nii.gz")) for k in range(50)]
    tenth, half = label_subset(cases, 0.1, seed=0), label_subset(cases, 0.5, seed=0)
    assert len(tenth) == 5 and len(half) == 25 and set(map(id, tenth)) <= set(map(id, half))
    assert label_subset(list(reversed(cases)), 0.1, seed=0) == tenth  # the order given does not matter
    assert label_subset(cases, 0.1, seed=1) != tenth and len(label_subset(cases, 0.001, seed=0)) == 1


def test_brain_regions_become_msd_labels():
    task = load_task("msd_brain")
    probabilities = torch.zeros(3, 4, 1, 1)
    probabilities[0, 1:] = 0.9  # whole tumour
    probabilities[1, 2:] = 0.9  # tumour core
    probabilities[2, 3:] = 0.9  # enhancing
    assert to_label_map(task, probabilities)[:, 0, 0].tolist() == [0, 1, 2, 3]


def test_chest_xray_classifier_from_a_2d_mae(tmp_path):
    root = shared("chestxray14_nih_subset")
    common = ["--task", "chestxray14", "--data-root", str(root), "--config", TINY, "--set", "model.img_size=[64,64]"]
    assert main(["pretrain", *common, "--output-dir", str(tmp_path / "mae")]) == 0
    assert (
        main(
            [
                "finetune",
                *common,
                "--pretrained",
                str(tmp_path / "mae" / "checkpoints" / "last.pt"),
                "--output-dir",
                str(tmp_path / "cls"),
            ]
        )
        == 0
    )
    best = tmp_path / "cls" / "checkpoints" / "best.pt"
    assert load_checkpoint(best)["config"]["name"] == "vit_tiny_patch16_2d_cls"
    assert "val_macro_auc" in pd.read_csv(tmp_path / "cls" / "metrics.csv").columns
    assert (
        main(
            [
                "evaluate",
                "--task",
                "chestxray14",
                "--data-root",
                str(root),
                "--checkpoint",
                str(best),
                "--output-dir",
                str(tmp_path / "evaluation"),
            ]
        )
        == 0
    )
    per_image = pd.read_csv(tmp_path / "evaluation" / "per_image.csv")
    assert len(per_image) == 200 and (tmp_path / "evaluation" / "figures" / "roc.png").is_file()
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for image in sorted((root / "images").glob("*.png"))[:3]:
        (inputs / image.name).write_bytes(image.read_bytes())
    assert (
        main(["predict", "--checkpoint", str(best), "--input", str(inputs), "--output-dir", str(tmp_path / "out")]) == 0
    )
    probabilities = pd.read_csv(tmp_path / "out" / "probabilities.csv", comment="#")
    assert list(probabilities.columns[2:]) == list(load_task("chestxray14").findings) and len(probabilities) == 3
    assert ((probabilities.iloc[:, 2:] > 0) & (probabilities.iloc[:, 2:] < 1)).all().all()


def test_a_broken_case_in_a_loader_worker_exits_2_naming_the_file(tmp_path, demo_root, capsys):
    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    broken = root / "imagesTr" / "img0002.nii.gz"
    broken.write_bytes(broken.read_bytes()[:200])
    code = main(
        [
            "pretrain",
            "--task",
            "demo",
            "--data-root",
            str(root),
            "--config",
            TINY,
            "--output-dir",
            str(tmp_path / "run"),
            "--set",
            "data.num_workers=1",
            "--set",
            "train.steps_per_epoch=3",
        ]
    )
    message = capsys.readouterr().err
    assert code == 2 and str(broken) in message and "Traceback" not in message


def test_gradient_accumulation_matches_the_larger_batch(tmp_path, demo_root):
    """Two micro-batches of 2 take the same samples, masks and learning rate as one batch of 4."""
    common = {"task": "demo", "data_root": str(demo_root), "config_file": TINY}
    whole = pretrain.run(RunRequest(**common, output_dir=str(tmp_path / "a"), overrides=["data.batch_size=4"]))
    split = pretrain.run(
        RunRequest(**common, output_dir=str(tmp_path / "b"), overrides=["data.batch_size=2", "optim.accumulate=2"])
    )
    assert (
        pd.read_csv(tmp_path / "a" / "metrics.csv")["lr"].tolist()
        == pd.read_csv(tmp_path / "b" / "metrics.csv")["lr"].tolist()
    )
    a, b = whole.state_dict(), split.state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5  # float32 sums in another order


@pytest.mark.parametrize(
    "task_name, kind, outputs",
    [("msd_brain", "EncoderUNETR", 3), ("chestxray14", "ViTClassifier", 14), ("btcv", "EncoderUNETR", 14)],
)
def test_without_pretrained_weights_the_same_command_trains_from_scratch(task_name, kind, outputs):
    cfg = load_config("finetune", task_name, TINY, ["model.drop_path=0.1"])
    task = with_roi(load_task(task_name), [32] * load_task(task_name).spatial_dims)
    model = build_finetune_model(cfg, task, pretrained=None)
    assert type(model).__name__ == kind and model.config["in_channels"] == task.in_channels
    assert model.config.get("out_channels", model.config.get("num_classes")) == outputs
    blocks = model.vit.blocks if hasattr(model, "vit") else model.encoder.blocks
    assert blocks[-1].drop_path.rate == pytest.approx(0.1)


def test_a_resumed_finetuning_repeats_the_lost_epoch_exactly(tmp_path, demo_root):
    """Resume from previous.pt (as after a crash that cost last.pt): drop path, optimiser and RNG state
    come back, so the repeated epoch ends with the same weights."""
    command = [
        "finetune",
        "--task",
        "demo",
        "--data-root",
        str(demo_root),
        "--config",
        TINY,
        "--output-dir",
        str(tmp_path / "run"),
        "--set",
        "train.epochs=3",
        "--set",
        "model.drop_path=0.1",
    ]
    assert main(command) == 0
    checkpoints = tmp_path / "run" / "checkpoints"
    finished = load_checkpoint(checkpoints / "last.pt")["state_dict"]
    (checkpoints / "last.pt").write_bytes(b"lost in a crash")
    assert main([*command, "--resume"]) == 0
    resumed = load_checkpoint(checkpoints / "last.pt")
    assert resumed["epoch"] == 3 and list(pd.read_csv(tmp_path / "run" / "metrics.csv")["epoch"]) == [1, 2, 3]
    assert all(torch.equal(finished[k], resumed["state_dict"][k]) for k in finished)


def test_a_global_batch_that_does_not_split_over_the_processes_is_refused():
    with pytest.raises(UserError, match="does not split evenly over 4 processes"):
        ShardSampler(size=20, global_batch=6, rank=0, world=4, seed=0)


def test_a_monai_unet_baseline_trains_from_scratch_and_evaluates(tmp_path, demo_root, capsys):
    """``model.arch=unet``: the baseline a user would otherwise pick, through the same finetune and evaluate."""
    run = tmp_path / "unet"
    assert (
        main(
            [
                "finetune",
                "--task",
                "demo",
                "--data-root",
                str(demo_root),
                "--config",
                TINY,
                "--output-dir",
                str(run),
                "--set",
                "model.arch=unet",
            ]
        )
        == 0
    )
    saved = load_checkpoint(run / "checkpoints" / "best.pt")
    assert saved["config"]["name"] == "unet_3d" and saved["config"]["out_channels"] == len(
        load_task("demo").class_names
    )
    assert (
        main(
            [
                "evaluate",
                "--task",
                "demo",
                "--checkpoint",
                str(run / "checkpoints" / "best.pt"),
                "--data-root",
                str(demo_root),
                "--output-dir",
                str(tmp_path / "scores"),
                "--quiet",
            ]
        )
        == 0
    )
    assert pd.read_csv(tmp_path / "scores" / "per_case.csv")["case_id"].nunique() >= 1
    assert (
        main(
            [
                "finetune",
                "--task",
                "demo",
                "--data-root",
                str(demo_root),
                "--config",
                TINY,
                "--output-dir",
                str(tmp_path / "refused"),
                "--set",
                "model.arch=unet",
                "--pretrained",
                str(run / "checkpoints" / "best.pt"),
            ]
        )
        == 2
    )
    assert (
        "model.arch=unet is a segmentation baseline trained from scratch: it takes no --pretrained"
        in capsys.readouterr().err
    )
