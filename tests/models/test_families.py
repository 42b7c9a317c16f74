"""The backbone families: each registered once, found by arch or by model name, and each checking the
config keys it allows before a run starts."""

from __future__ import annotations

import pytest

from medmae.cli import main
from medmae.config import load_config
from medmae.errors import UserError
from medmae.models.families import ResEncFamily
from medmae.models.registry import FAMILIES, check_model_config, family_of_arch, family_of_name, register
from tests.helpers import demo_run


def test_every_arch_and_every_listed_name_has_exactly_one_family():
    assert list(FAMILIES) == ["vit", "dynunet", "resenc", "unet"]
    assert {arch: family_of_arch(arch).name for arch in ("unetr", "light", "dynunet", "resenc", "unet")} == {
        "unetr": "vit",
        "light": "vit",
        "dynunet": "dynunet",
        "resenc": "resenc",
        "unet": "unet",
    }
    for family in FAMILIES.values():
        assert all(family_of_name(name) is family for name in family.names())
    assert family_of_name("resenc_custom_3d").name == "resenc" and family_of_name("imagenet_vit_base") is None
    with pytest.raises(ValueError, match="family resenc .* is registered already"):
        register(ResEncFamily())


def check(*overrides: str) -> None:
    check_model_config(load_config("pretrain", "btcv", overrides=list(overrides)).model)


def test_each_family_checks_its_own_sizes_and_keys():
    check("model.arch=resenc", "model.size=l")
    check("model.arch=unet", "model.size=l")  # the baseline has no sizes
    with pytest.raises(UserError, match=r"model.size=base is not a resenc size; choose one of tiny, m, l"):
        check("model.arch=resenc")
    with pytest.raises(UserError, match=r"model.size=l is not a vit size; choose one of base, mini, tiny"):
        check("model.size=l")
    with pytest.raises(UserError, match=r"model.decoder_width does not apply: the ResEnc MAE uses nnU-Net's decoder"):
        check("model.arch=resenc", "model.size=l", "model.decoder_width=64")
    with pytest.raises(
        UserError, match=r"model.encoder_mode, model.patch_size apply to ViTs only, not to model.arch=dynunet"
    ):
        check("model.arch=dynunet", "model.patch_size=8", "model.encoder_mode=mask_tokens")


def test_a_run_with_a_size_its_family_lacks_stops_before_reading_data(tmp_path, demo_root, capsys):
    args = demo_run("pretrain", demo_root, tmp_path / "run", "--set", "model.arch=resenc", "--set", "model.size=base")
    assert main(args) == 2
    assert "model.size=base is not a resenc size; choose one of tiny, m, l" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
