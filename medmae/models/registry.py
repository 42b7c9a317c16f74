"""One registry for every model variant: each backbone family is one :class:`Family` object, registered
once (:mod:`medmae.models.families` registers medmae's four), that names, builds, pretrains and transfers
its models. The commands and the training layer ask it; nothing else inspects a name or a config.

Names (`medmae info` lists them):

- ViT (``model.arch`` unetr, light; classification): ``{mae_vit|unetr_vit|light_vit|vit}_{size}_patch{p}_{2d|3d}[_cls]``
  with ``p`` 16, 8 or 4 (any power-of-two patch, or one per axis such as ``patch8x8x4``, is built too);
- DynUNet (``dynunet``, MONAI's residual DynUNet): ``{mae_dynunet|dynunet}_{size}_{2d|3d}``;
- ResEnc (``resenc``, nnU-Net's residual-encoder U-Net, dynamic-network-architectures):
  ``{mae_resenc|resenc}_{tiny|m|l}_{2d|3d}``;
- baselines (``unet``): ``unet_2d``, ``unet_3d`` (MONAI U-Net, from scratch only).

Keyword arguments override the defaults (``img_size``, ``in_channels``, ``mask_ratio``, ``out_channels``, ...).
"""

from __future__ import annotations

import inspect
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from torch import nn

from medmae.checkpoint import CheckpointError, load_weights
from medmae.errors import UserError
from medmae.models.weights import TransferReport

FAMILIES: dict[str, Family] = {}


class Family(ABC):
    """A backbone family: its registry names, its MAE, its segmenter (from scratch or around a pretrained
    encoder), its input multiple and its config checks. Subclasses set the class attributes and override
    the methods their family supports.

    Attributes:
        name: the family (``vit``, ``dynunet``, ``resenc``, ``unet``); archs: the ``model.arch`` values it serves.
        sizes: the ``model.size`` presets; pattern: the registry names it builds (a full-match regex).
        listed: (registry name prefix, what ``medmae info`` calls those models) pairs.
        encoder_prefixes: the parameter names of a segmenter's encoder (fine-tuning warm-up).
        layer_decay: whether layer-wise rate decay applies (ViT blocks); pretrains: has an MAE;
        classifies: the archs whose setting builds this family's classifier for a classification task.
    """

    name = ""
    archs: tuple[str, ...] = ()
    sizes: tuple[str, ...] = ()
    pattern: re.Pattern = re.compile("$^")
    listed: tuple[tuple[str, str], ...] = ()
    encoder_prefixes: tuple[str, ...] = ()
    layer_decay = False
    pretrains = True
    classifies: tuple[str, ...] = ()

    def names(self) -> list[str]:
        """The registry names ``medmae info`` lists."""
        return []

    @abstractmethod
    def create(self, name: str, match: re.Match, kwargs: dict[str, Any]) -> nn.Module:
        """The model of registry ``name`` (``match`` of :attr:`pattern`), ``kwargs`` overriding its preset."""

    def input_multiple(self, model: Any) -> int | list[int]:
        """What every input size of config section ``model`` must be a multiple of (the MAE's masking unit)."""
        return 16

    def config_problems(self, model: Any) -> list[str]:
        """What is wrong with config section ``model`` (a :class:`~medmae.config.ModelConfig`) for this family."""
        if model.size not in self.sizes:
            return [f"model.size={model.size} is not a {self.name} size; choose one of {', '.join(self.sizes)}"]
        return []

    def mae(self, model: Any, spatial_dims: int, geometry: dict[str, Any]) -> nn.Module:
        """The MAE of config section ``model`` for ``geometry`` (``img_size``, ``in_channels``)."""
        others = [arch for family in FAMILIES.values() if family.pretrains for arch in family.archs]
        raise UserError(
            f"model.arch={model.arch} is trained from scratch only; pretrain with model.arch {', '.join(others)}"
        )

    @abstractmethod
    def segmenter(
        self, model: Any, spatial_dims: int, outputs: int, geometry: dict[str, Any], classify: bool = False
    ) -> nn.Module:
        """A segmentation model from scratch (``classify``: the classifier of a classifying family)."""

    def from_pretrained(
        self, payload: dict[str, Any], model: Any, outputs: int, geometry: dict[str, Any], classify: bool = False
    ) -> tuple[nn.Module, TransferReport]:
        """The fine-tuning model around the encoder of ``payload`` (``config`` and ``state_dict``)."""
        raise UserError(f"model.arch={model.arch} is trained from scratch only: it takes no --pretrained")

    def rebuild_overrides(self, model: Any) -> dict[str, Any]:
        """What a resumed run sets that the saved weights do not fix (ViT: stochastic depth)."""
        return {}


def register(family: Family) -> Family:
    """Add ``family`` to the registry; its name and archs must be new."""
    taken = {arch for f in FAMILIES.values() for arch in f.archs}
    if family.name in FAMILIES or taken & set(family.archs):
        raise ValueError(f"family {family.name} (archs {family.archs}) is registered already")
    FAMILIES[family.name] = family
    return family


def family_of_arch(arch: str) -> Family:
    """The family serving ``model.arch``."""
    for family in FAMILIES.values():
        if arch in family.archs:
            return family
    raise UserError(f"model.arch={arch}: choose one of {', '.join(a for f in FAMILIES.values() for a in f.archs)}")


def check_model_config(model: Any) -> None:
    """Raise UserError listing what config section ``model`` sets that its family does not allow (sizes,
    ViT-only keys, decoder keys)."""
    problems = family_of_arch(model.arch).config_problems(model)
    if problems:
        raise UserError("invalid config: " + "; ".join(problems))


def family_of_name(name: str | None) -> Family | None:
    """The family whose names include registry ``name``, or None."""
    return next((f for f in FAMILIES.values() if f.pattern.fullmatch(str(name))), None)


def input_multiple(model: Any) -> int | list[int]:
    """What every input size of config section ``model`` must be a multiple of (and its masking unit):
    the ViT's patch size (16 when None), a U-Net's total stride."""
    return family_of_arch(model.arch).input_multiple(model)


def list_models() -> list[str]:
    """Every listed model name."""
    return sorted(name for family in FAMILIES.values() for name in family.names())


def accepted(target: Any) -> set[str]:
    """The named arguments of ``target`` (not its ``**kwargs``)."""
    parameters = inspect.signature(target).parameters.values()
    return {p.name for p in parameters if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def check_known(name: str, args: dict[str, Any], allowed: set[str]) -> None:
    unknown = set(args) - allowed
    if unknown:
        raise ValueError(f"{name}: unknown arguments {sorted(unknown)}")


def unknown_model(name: str) -> ValueError:
    return ValueError(
        f"unknown model {name!r}: names are {{mae_vit|unetr_vit|light_vit}}_SIZE_patchP_{{2d|3d}}, "
        f"vit_SIZE_patchP_{{2d|3d}}_cls, {{mae_dynunet|dynunet}}_SIZE_{{2d|3d}}, {{mae_resenc|resenc}}_SIZE_{{2d|3d}} "
        "or unet_{2d|3d} with SIZE one of the family's presets (another ViT size with width, depth, num_heads, "
        "mlp_dim given; another ResEnc with features, blocks, strides); `medmae info` lists them"
    )


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model; ``kwargs`` override the preset (unknown ones raise ``ValueError``).

    The model's ``config`` dict records its registry ``name`` and its architecture and geometry.
    """
    family = family_of_name(name)
    if family is None:
        raise unknown_model(name)
    model = family.create(name, family.pattern.fullmatch(str(name)), kwargs)
    model.config["name"] = name
    return model


def rebuild_model(payload: dict[str, Any], source: str | Path, **overrides: Any) -> nn.Module:
    """The model a checkpoint payload describes (its registry ``config``) holding the payload's weights.
    ``overrides`` set what the weights do not fix, such as ``drop_path_rate``; a config that names no
    model medmae can build, or weights that do not fit it, raise :class:`CheckpointError` naming ``source``."""
    config = dict(payload["config"])
    try:
        model = create_model(config.pop("name", None), **config, **overrides)
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{source}: describes no model medmae can build ({error})") from error
    load_weights(model, payload["state_dict"], source)
    return model
