"""Sweep points: swept keys, stage prefixes, per-stage overrides and folder names."""

from __future__ import annotations

import pytest

from medmae.errors import UserError
from medmae.training.sweep import Param, folder_name, parse_param, stage_overrides


def test_keys_are_config_keys_or_their_unique_leaf_names_with_an_optional_stage():
    assert parse_param("mask_ratio=0.125,0.25,0.75") == Param(None, "model.mask_ratio", (0.125, 0.25, 0.75))
    assert parse_param("pretrain:epochs=100,200") == Param("pretrain", "train.epochs", (100, 200))
    assert parse_param("finetune:model.tuning=full,linear") == Param("finetune", "model.tuning", ("full", "linear"))
    assert parse_param("img_size=[64,64],[96,96]").values == ([64, 64], [96, 96])
    assert parse_param("optim.base_lr=1e-3,5e-4").values == (0.001, 0.0005)  # YAML's 1e-3 read as a number
    with pytest.raises(
        UserError, match="--param warmup: not one config key; `medmae pretrain --task T --print-config` lists the keys"
    ):
        parse_param("warmup=1,2")
    with pytest.raises(UserError, match="listed twice"):
        parse_param("mask_ratio=0.5,0.5")
    with pytest.raises(UserError, match=r"expected \[pretrain:\|finetune:\]KEY=VALUE"):
        parse_param("mask_ratio")


def test_each_stage_gets_its_own_and_the_shared_keys_and_folders_name_the_values():
    params = [parse_param("mask_ratio=0.5,0.75"), parse_param("finetune:optim.base_lr=0.01,0.05")]
    fixed = [("finetune", "train.epochs", "3"), (None, "model.size", "tiny")]
    assert stage_overrides(params, (0.5, 0.01), fixed, "pretrain") == ["model.size=tiny", "model.mask_ratio=0.5"]
    assert stage_overrides(params, (0.5, 0.01), fixed, "finetune") == [
        "train.epochs=3",
        "model.size=tiny",
        "model.mask_ratio=0.5",
        "optim.base_lr=0.01",
    ]
    assert folder_name(params, (0.5, 0.01), ("pretrain",)) == "mask_ratio=0.5"
    assert folder_name(params, (0.5, 0.01), ("pretrain", "finetune")) == "mask_ratio=0.5_base_lr=0.01"
