"""Config resolution: typed defaults <- configs/<stage>/<task>.yaml <- --config <- --set; errors name the key."""

from __future__ import annotations

import logging

import pytest
import yaml

from medmae import resource_dir
from medmae.cli import main
from medmae.config import Config, from_dict, known_keys, load_config, parse_override, resolve_config, save_config
from medmae.errors import UserError
from medmae.tasks import list_tasks

TINY = resource_dir("configs") / "test" / "tiny.yaml"


def test_later_sources_win():
    cfg = load_config("pretrain", "btcv", TINY, ["optim.base_lr=1e-3", "model.mask_ratio=0.5"])
    assert cfg.model.size == "tiny"  # tiny.yaml over the btcv recipe
    assert cfg.data.batch_size == 2 and cfg.optim.base_lr == 0.001  # --set over tiny.yaml
    assert cfg.model.mask_ratio == 0.5
    assert cfg.optim.betas == [0.9, 0.95]  # from the recipe, untouched by the later sources


def test_published_recipes():
    cx, btcv, brain = (load_config("pretrain", t) for t in ("chestxray14", "btcv", "msd_brain"))
    assert (cx.model.size, cx.model.mask_ratio, cx.data.batch_size, cx.train.epochs) == ("base", 0.75, 256, 800)
    assert (btcv.model.mask_ratio, btcv.data.batch_size, btcv.data.crops_per_volume, btcv.train.epochs) == (
        0.125,
        6,
        4,
        10000,
    )
    assert (brain.model.mask_ratio, brain.train.epochs) == (0.125, 500)
    for cfg in (cx, btcv, brain):
        assert cfg.optim.betas == [0.9, 0.95] and cfg.optim.weight_decay == 0.05
    for task in ("chestxray14", "btcv", "msd_brain", "msd_hippocampus"):
        tuned = load_config("finetune", task)
        assert (tuned.model.size, tuned.optim.layer_decay, tuned.model.drop_path) == ("base", 0.75, 0.1)


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
@pytest.mark.parametrize("task", list_tasks() + ["a_task_without_a_recipe"])
def test_every_shipped_recipe_loads(stage, task):
    assert isinstance(load_config(stage, task), Config)


def test_unknown_keys_list_the_close_matches(tmp_path):
    with pytest.raises(UserError, match=r"unknown config key 'optim.base_rl'.*optim.base_lr"):
        load_config("pretrain", "btcv", overrides=["optim.base_rl=1"])
    with pytest.raises(UserError, match=r"'model.batch_size'.*data.batch_size"):
        load_config("pretrain", "btcv", overrides=["model.batch_size=4"])
    path = tmp_path / "bad.yaml"
    path.write_text("train: {epoch: 3}\n")
    with pytest.raises(UserError, match=rf"{path}: unknown config key 'train.epoch'.*train.epochs"):
        load_config("pretrain", "btcv", path)


def test_wrong_types_and_ranges_are_errors():
    with pytest.raises(UserError, match=r"--set: data.batch_size must be int, not 'four'"):
        load_config("pretrain", "btcv", overrides=["data.batch_size=four"])
    with pytest.raises(UserError, match=r"data.batch_size must be int, not True"):
        load_config("pretrain", "btcv", overrides=["data.batch_size=true"])
    for hidden in (1.0, 0):  # all hidden, or nothing hidden (a loss of 0 that teaches nothing)
        with pytest.raises(UserError, match=r"model.mask_ratio must lie in \(0, 1\): with nothing hidden"):
            load_config("pretrain", "btcv", overrides=[f"model.mask_ratio={hidden}"])
    with pytest.raises(UserError, match=r"train.dist_timeout_min must be > 0"):
        load_config("pretrain", "btcv", overrides=["train.dist_timeout_min=0"])
    with pytest.raises(UserError, match="expected KEY=VALUE"):
        load_config("pretrain", "btcv", overrides=["optim.base_lr"])
    assert load_config("pretrain", "btcv", overrides=["optim.clip_grad=null"]).optim.clip_grad is None


def test_override_values_are_read_as_yaml():
    assert parse_override("optim.base_lr=1e-3") == ("optim.base_lr", 0.001)  # YAML 1.1 alone reads this as text
    assert parse_override("model.img_size=[64, 64, 32]") == ("model.img_size", [64, 64, 32])
    assert parse_override("data.skip_bad_cases=true") == ("data.skip_bad_cases", True)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config("finetune", "msd_brain", TINY, ["optim.clip_grad=1"])
    path = save_config(cfg, tmp_path / "config.yaml")
    assert from_dict(yaml.safe_load(path.read_text()), str(path)) == cfg
    assert cfg.optim.clip_grad == 1.0 and isinstance(cfg.optim.clip_grad, float)
    assert set(known_keys()) == {f"{s}.{k}" for s, values in cfg.to_dict().items() for k in values}


def test_speed_switches_that_cannot_work_together_are_refused():
    with pytest.raises(UserError, match="data.cache_dtype=bfloat16 needs the cached sampler with volumes on the"):
        load_config("pretrain", "btcv", overrides=["data.cache_dtype=bfloat16", "data.crops_from=store"])
    with pytest.raises(UserError, match="data.cache_dtype=bfloat16 needs the cached sampler"):
        load_config("pretrain", "btcv", overrides=["data.cache_dtype=bfloat16", "data.sampler=monai"])
    with pytest.raises(UserError, match="compile_mode=reduce-overhead .CUDA graphs. needs optim.accumulate=1"):
        load_config("pretrain", "btcv", overrides=["train.compile_mode=reduce-overhead", "optim.accumulate=2"])
    assert load_config("pretrain", "btcv", overrides=["data.cache_dtype=bfloat16"]).data.cache_dtype == "bfloat16"


def test_more_crops_per_volume_than_the_seed_rule_allows_are_refused():
    with pytest.raises(UserError, match=r"data.crops_per_volume in \[1, 64\]"):
        load_config("pretrain", "btcv", overrides=["data.crops_per_volume=65"])


def test_backbone_keys_patch_size_one_or_per_axis_and_vit_keys_refused_for_u_nets():
    assert load_config("pretrain", "btcv", overrides=["model.patch_size=8"]).model.patch_size == 8
    cfg = load_config("finetune", "btcv", overrides=["model.patch_size=[8, 8, 4]", "model.arch=light"])
    assert (cfg.model.patch_size, cfg.model.arch, cfg.model.size) == ([8, 8, 4], "light", "base")
    assert load_config("pretrain", "btcv", overrides=["model.size=mini"]).model.size == "mini"
    with pytest.raises(UserError, match=r"model.patch_size must be int or list or null, not 'big'"):
        load_config("pretrain", "btcv", overrides=["model.patch_size=big"])
    with pytest.raises(UserError, match=r"model.patch_size must be > 0"):
        load_config("pretrain", "btcv", overrides=["model.patch_size=[8, 0, 8]"])
    with pytest.raises(UserError, match=r"model.arch"):
        load_config("finetune", "btcv", overrides=["model.arch=segformer"])
    assert load_config("finetune", "btcv", overrides=["model.arch=dynunet"]).model.drop_path == 0.1  # ignored, said so


def test_the_encoder_warm_up_lies_within_the_run():
    with pytest.raises(UserError, match=r"optim.encoder_warmup_epochs must lie in \[0, train.epochs\)"):
        load_config("finetune", "btcv", overrides=["optim.encoder_warmup_epochs=5000"])


@pytest.mark.parametrize(
    "backbone", sorted((resource_dir("configs") / "backbones").glob("*.yaml")), ids=lambda p: p.stem
)
def test_every_backbone_file_picks_its_arch_for_both_stages(backbone):
    arch = backbone.stem.split("_")[0]
    for stage in ("pretrain", "finetune"):
        cfg = load_config(stage, "msd_hippocampus", backbone)
        assert (cfg.model.arch, cfg.model.size) == (arch, "mini")


def test_config_files_apply_in_order_and_every_key_names_its_source(tmp_path):
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first.write_text("optim: {base_lr: 0.1, warmup_epochs: 3}\n")
    second.write_text("optim: {base_lr: 0.2}\n")
    cfg = load_config("pretrain", "demo", [first, second], ["train.epochs=7"])
    assert (cfg.optim.base_lr, cfg.optim.warmup_epochs, cfg.train.epochs) == (0.2, 3, 7)  # both files count
    assert resolve_config("pretrain", "demo", [first, second], ["train.epochs=7"])[0] == cfg
    sources = resolve_config("pretrain", "demo", [first, second], ["train.epochs=7"])[1]
    assert (sources["optim.base_lr"], sources["optim.warmup_epochs"]) == (str(second), str(first))
    assert sources["train.epochs"] == "--set" and sources["model.mask_ratio"].endswith("configs/pretrain/demo.yaml")
    assert sources["optim.clip_grad"] == "default" and set(sources) == set(known_keys())


@pytest.mark.parametrize("name", ["configs/test/tiny.yaml", "test/tiny.yaml"])
def test_a_relative_config_that_is_not_a_file_here_is_the_shipped_one(tmp_path, monkeypatch, name):
    """As in a clone, from any folder: the README's ``--config configs/test/tiny.yaml`` after a pip install."""
    monkeypatch.chdir(tmp_path)
    shipped = resource_dir("configs") / "test" / "tiny.yaml"
    cfg, sources = resolve_config("pretrain", "demo", name)
    assert cfg == load_config("pretrain", "demo", shipped) and sources["model.size"] == str(shipped)


def test_a_config_file_here_wins_over_the_shipped_one_and_a_missing_one_names_where_it_was_looked_for(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "tiny.yaml").write_text("train: {epochs: 3}\n")
    assert load_config("pretrain", "demo", "test/tiny.yaml").train.epochs == 3  # the shipped one says 2
    folder = resource_dir("configs")
    with pytest.raises(UserError, match="test/huge.yaml: no such config file, neither in .* nor among") as error:
        load_config("pretrain", "demo", "configs/test/huge.yaml")
    assert str(tmp_path) in str(error.value) and str(folder / "test" / "huge.yaml") in str(error.value)


def test_print_config_shows_each_value_with_its_source_and_trains_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["finetune", "--task", "demo", "--config", str(TINY), "--config", str(TINY), "--set", "optim.base_lr=0.5"]
    assert main([*argv, "--label-fraction", "0.5", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "  base_lr: 0.5  # --set\n" in out and f'  size: "tiny"  # {TINY}\n' in out
    assert "  label_fraction: 0.5  # --label-fraction\n" in out and not (tmp_path / "runs").exists()


def test_the_help_of_set_says_where_every_key_is_listed(capsys):
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "--print-config" in shown and "docs/reference/config.md" in shown


def test_a_retired_key_in_an_older_runs_config_is_left_out_with_a_note_when_set(caplog):
    caplog.set_level(logging.WARNING, logger="medmae")
    saved = Config().to_dict()
    saved["data"]["cache_dir"] = None  # every run config written before the store has it
    assert from_dict(saved, "old/config.yaml") == Config()
    assert "cache_dir" not in caplog.text
    saved["data"]["cache_dir"] = "medmae_cache"
    assert from_dict(saved, "old/config.yaml") == Config()
    assert "old/config.yaml: data.cache_dir=medmae_cache is no longer read" in caplog.text
    with pytest.raises(UserError, match="unknown config key 'data.cache_dri'"):
        load_config("pretrain", "btcv", overrides=["data.cache_dri=x"])
