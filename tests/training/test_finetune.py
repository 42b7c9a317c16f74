"""Fine-tuning: label subsets, models from scratch, the U-Net baseline, every backbone from its MAE, a
classifier from a 2D MAE, exact resume, channels-last UNETR, and refusals of settings that cannot train."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from medmae.checkpoint import load_checkpoint, model_checkpoint, save_checkpoint
from medmae.cli import main
from medmae.config import load_config
from medmae.data.cases import Case
from medmae.errors import UserError
from medmae.models import create_model
from medmae.tasks import load_task
from medmae.training import finetune
from medmae.training.finetune import build_finetune_model, label_subset
from medmae.training.session import RunRequest, with_roi
from tests.helpers import TINY, demo_run, shared


def test_label_fraction_takes_a_fixed_nested_subset():
    cases = [Case(f"case{k:03d}", Path(f"{k}.nii.gz")) for k in range(50)]
    tenth, half = label_subset(cases, 0.1, seed=0), label_subset(cases, 0.5, seed=0)
    assert len(tenth) == 5 and len(half) == 25 and set(map(id, tenth)) <= set(map(id, half))
    assert label_subset(list(reversed(cases)), 0.1, seed=0) == tenth  # the order given does not matter
    assert label_subset(cases, 0.1, seed=1) != tenth and len(label_subset(cases, 0.001, seed=0)) == 1


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
    command = demo_run(
        "finetune", demo_root, tmp_path / "run", "--set", "train.epochs=3", "--set", "model.drop_path=0.1"
    )
    assert main(command) == 0
    checkpoints = tmp_path / "run" / "checkpoints"
    finished = load_checkpoint(checkpoints / "last.pt")["state_dict"]
    (checkpoints / "last.pt").write_bytes(b"lost in a crash")
    assert main([*command, "--resume"]) == 0
    resumed = load_checkpoint(checkpoints / "last.pt")
    assert resumed["epoch"] == 3 and list(pd.read_csv(tmp_path / "run" / "metrics.csv")["epoch"]) == [1, 2, 3]
    assert all(torch.equal(finished[k], resumed["state_dict"][k]) for k in finished)


def test_patience_stops_a_run_whose_validation_stopped_improving_and_it_stays_stopped(tmp_path, demo_root):
    """At a vanishing learning rate the validation score never beats epoch 1's, so with patience 2 the
    run ends after epoch 3 of 6; resuming it trains nothing more."""
    command = demo_run(
        "finetune",
        demo_root,
        tmp_path / "run",
        *("--set", "train.epochs=6", "--set", "train.val_every=1", "--set", "train.patience=2"),
        *("--set", "optim.base_lr=1e-12", "--set", "optim.warmup_epochs=0"),
    )
    assert main(command) == 0
    assert list(pd.read_csv(tmp_path / "run" / "metrics.csv")["epoch"]) == [1, 2, 3]
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")["epoch"] == 1
    assert main([*command, "--resume"]) == 0
    assert list(pd.read_csv(tmp_path / "run" / "metrics.csv")["epoch"]) == [1, 2, 3]


def test_a_monai_unet_baseline_trains_from_scratch_and_evaluates(tmp_path, demo_root, capsys):
    """``model.arch=unet``: the baseline a user would otherwise pick, through the same finetune and evaluate."""
    run = tmp_path / "unet"
    assert main(demo_run("finetune", demo_root, run, "--set", "model.arch=unet")) == 0
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
            demo_run(
                "finetune",
                demo_root,
                tmp_path / "refused",
                "--set",
                "model.arch=unet",
                "--pretrained",
                str(run / "checkpoints" / "best.pt"),
            )
        )
        == 2
    )
    assert "model.arch=unet is trained from scratch only: it takes no --pretrained" in capsys.readouterr().err


def test_channels_last_unetr_trains_like_the_default_layout(tmp_path, demo_root):
    losses = []
    for layout in ("false", "true"):
        model = finetune.run(
            RunRequest(
                "demo",
                str(demo_root),
                config_file=TINY,
                output_dir=str(tmp_path / layout),
                overrides=[f"train.channels_last={layout}"],
            )
        )
        convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv3d)]
        assert all(
            w.is_contiguous(memory_format=torch.channels_last_3d) == (layout == "true")
            for w in convs
            if w.shape[1] > 1 and w.shape[2] > 1
        )
        losses.append(pd.read_csv(tmp_path / layout / "metrics.csv")["loss"].iloc[0])
    assert losses[1] == pytest.approx(losses[0], rel=1e-3)


@pytest.mark.parametrize("tuning", ["linear", "partial"])
def test_a_frozen_encoder_reading_an_untrained_cls_token_is_refused(tmp_path, tuning):
    """An MAE without a cls token gives a cls-pooled classifier a fresh token; frozen, it would never learn."""
    mae = create_model("mae_vit_tiny_patch16_2d", img_size=(64, 64), in_channels=1)
    path = save_checkpoint(model_checkpoint(mae, stage="pretrain"), tmp_path / "mae.pt")
    task = with_roi(load_task("chestxray14"), [64, 64])
    cfg = load_config("finetune", "chestxray14", None, [f"model.tuning={tuning}", "model.pool=cls"])
    with pytest.raises(UserError, match="has no cls token"):
        build_finetune_model(cfg, task, str(path))
    cfg = load_config("finetune", "chestxray14", None, [f"model.tuning={tuning}", "model.pool=avg"])
    assert type(build_finetune_model(cfg, task, str(path))).__name__ == "ViTClassifier"


@pytest.mark.parametrize(
    "backbone, mae_name, model_name",
    [
        (["model.arch=light", "model.patch_size=8"], "mae_vit_tiny_patch8_3d", "light_vit_tiny_patch8_3d"),
        (
            ["model.arch=unetr", "model.patch_size=[16, 16, 8]"],
            "mae_vit_tiny_patch16x16x8_3d",
            "unetr_vit_tiny_patch16x16x8_3d",
        ),
        (["model.arch=dynunet"], "mae_dynunet_tiny_3d", "dynunet_tiny_3d"),
        (["model.arch=resenc", "optim.encoder_warmup_epochs=1"], "mae_resenc_tiny_3d", "resenc_tiny_3d"),
    ],
)
def test_every_backbone_pretrains_fine_tunes_from_its_mae_and_evaluates(
    tmp_path, demo_root, backbone, mae_name, model_name
):
    settings = [flag for value in backbone for flag in ("--set", value)]
    assert main(demo_run("pretrain", demo_root, tmp_path / "mae", *settings)) == 0
    mae = load_checkpoint(tmp_path / "mae" / "checkpoints" / "last.pt")
    assert mae["config"]["name"] == mae_name and (tmp_path / "mae" / "figures").is_dir()
    pretrained = str(tmp_path / "mae" / "checkpoints" / "last.pt")
    assert main(demo_run("finetune", demo_root, tmp_path / "seg", *settings, "--pretrained", pretrained)) == 0
    best = tmp_path / "seg" / "checkpoints" / "best.pt"
    assert load_checkpoint(best)["config"]["name"] == model_name
    scores = tmp_path / "scores"
    assert (
        main(
            [
                "evaluate",
                "--task",
                "demo",
                "--checkpoint",
                str(best),
                "--data-root",
                str(demo_root),
                "--output-dir",
                str(scores),
                "--quiet",
            ]
        )
        == 0
    )
    assert pd.read_csv(scores / "per_case.csv")["case_id"].nunique() >= 1


def test_a_checkpoint_of_the_other_family_is_refused_naming_the_arch(tmp_path, demo_root, capsys):
    assert main(demo_run("pretrain", demo_root, tmp_path / "conv", "--set", "model.arch=dynunet")) == 0
    conv = str(tmp_path / "conv" / "checkpoints" / "last.pt")
    assert (
        main(demo_run("finetune", demo_root, tmp_path / "vit", "--set", "model.arch=light", "--pretrained", conv)) == 2
    )
    assert (
        "holds a dynunet encoder (mae_dynunet_tiny_3d); fine-tune it with --set model.arch=dynunet"
        in capsys.readouterr().err
    )


def test_regions_with_an_ignore_label_train_predict_and_score_without_it(tmp_path, demo_root):
    """A third of every label map unlabelled (value 5): training and scoring leave it out, and the written
    label maps hold only the regions' values of ``regions_class_order``."""
    import shutil

    import nibabel as nib
    import numpy as np
    import yaml

    root = Path(shutil.copytree(demo_root, tmp_path / "data"))
    for path in sorted((root / "labelsTr").glob("*.nii.gz")):
        image = nib.load(path)
        array = np.asarray(image.dataobj).copy()
        array[: array.shape[0] // 3] = 5
        nib.save(nib.Nifti1Image(array, image.affine, image.header), path)
    regions = {"organs": [1, 2, 3, 4], "kidneys": [3, 4], "left_kidney": [4]}
    record = dict(load_task("demo").record) | {"name": "sparse", "regions": regions, "mean_groups": {}}
    record |= {"regions_class_order": [1, 3, 4], "ignore_label": 5}
    record.pop("manifest")
    (tmp_path / "sparse.yaml").write_text(yaml.safe_dump(record))
    flags = ["--task", str(tmp_path / "sparse.yaml"), "--data-root", str(root)]
    one_step = ["train.epochs=1", "optim.warmup_epochs=0", "train.steps_per_epoch=1"]
    run = tmp_path / "run"
    sets = [flag for key in one_step for flag in ("--set", key)]
    assert main(["finetune", *flags, "--config", TINY, "--output-dir", str(run), *sets]) == 0
    assert main(["evaluate", *flags, "--checkpoint", str(run / "checkpoints" / "best.pt"), "--quiet"]) == 0
    per_case = pd.read_csv(run / "evaluate_test" / "per_case.csv", comment="#").set_index("class")
    predictions = sorted((run / "evaluate_test" / "predictions").glob("*.nii.gz"))
    assert predictions
    for prediction in predictions:
        written = np.asarray(nib.load(prediction).dataobj)
        reference = np.asarray(nib.load(root / "labelsTr" / prediction.name.replace("img", "label")).dataobj)
        assert set(np.unique(written).tolist()) <= {0, 1, 3, 4}  # never the ignore label
        for name, values in regions.items():
            scored = np.isin(written, values) & (reference != 5)
            assert per_case.loc[name, "n_pred"] == np.count_nonzero(scored)
