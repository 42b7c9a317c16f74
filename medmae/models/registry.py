"""One registry for every model variant: ``{mae_vit|unetr_vit|vit}_{base|tiny}_patch16_{2d|3d}[_cls]``.

- ``mae_vit_base_patch16_3d`` / ``_2d``: ViT-B/16 (width 768, 12 blocks, 12 heads, MLP 3072, q/k/v bias)
  MAE; decoder 384 x 8 blocks in 3D, 512 x 8 in 2D.
- ``unetr_vit_base_patch16_3d`` / ``_2d``: MONAI UNETR around the same encoder.
- ``vit_base_patch16_2d_cls`` / ``_3d_cls``: multi-label classifier around the same encoder.
- ``tiny`` variants (width 48, 12 blocks, 3 heads, MLP 192; decoder 48 x 2) for tests and CPU runs.

Keyword arguments override the defaults (``img_size``, ``in_channels``, ``mask_ratio``,
``out_channels``, ``num_classes``, ``drop_path_rate``, ...).
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

from torch import nn

from medmae.checkpoint import CheckpointError, load_weights
from medmae.models.classifier import ViTClassifier
from medmae.models.encoder import ViTEncoder
from medmae.models.mae import MaskedAutoencoder
from medmae.models.unet import BaselineUNet
from medmae.models.unetr import EncoderUNETR

ENCODERS = {
    "base": {"width": 768, "depth": 12, "num_heads": 12, "mlp_dim": 3072},
    "tiny": {"width": 48, "depth": 12, "num_heads": 3, "mlp_dim": 192},
}
DECODERS = {
    ("base", 3): {"decoder_width": 384, "decoder_depth": 8, "decoder_heads": 12},
    ("base", 2): {"decoder_width": 512, "decoder_depth": 8, "decoder_heads": 16},
    ("tiny", 3): {"decoder_width": 48, "decoder_depth": 2, "decoder_heads": 3},
    ("tiny", 2): {"decoder_width": 48, "decoder_depth": 2, "decoder_heads": 3},
}
DEFAULT_IMG_SIZE = {2: 224, 3: 96}
PATCH_SIZE = 16  # every registered ViT's patch size (the ``patch16`` of its name)
HEADS = {"unetr": EncoderUNETR, "cls": ViTClassifier}


def _names() -> dict[str, tuple[str, str, int]]:
    names = {}
    for size in ENCODERS:
        for dims in (2, 3):
            names[f"mae_vit_{size}_patch16_{dims}d"] = ("mae", size, dims)
            names[f"unetr_vit_{size}_patch16_{dims}d"] = ("unetr", size, dims)
            names[f"vit_{size}_patch16_{dims}d_cls"] = ("cls", size, dims)
    return names


MODELS = _names()


BASELINES = {"unet_3d": 3, "unet_2d": 2}  # MONAI U-Nets, trained from scratch only


def list_models() -> list[str]:
    """Every registered model name."""
    return sorted([*MODELS, *BASELINES])


def _accepted(target: Any) -> set[str]:
    """The named arguments of ``target`` (not its ``**kwargs``)."""
    parameters = inspect.signature(target).parameters.values()
    return {p.name for p in parameters if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def _check_known(name: str, args: dict[str, Any], allowed: set[str]) -> None:
    unknown = set(args) - allowed
    if unknown:
        raise ValueError(f"{name}: unknown arguments {sorted(unknown)}")


NAME = re.compile(r"(mae_vit|unetr_vit|vit)_([a-z0-9]+)_patch\d+_([23])d(_cls)?")
KINDS = {"mae_vit": "mae", "unetr_vit": "unetr", "vit": "cls"}
ARCHITECTURE = ("width", "depth", "num_heads", "mlp_dim")


def _parse(name: str, kwargs: dict[str, Any]) -> tuple[str, str, int]:
    """(kind, size, dims) of a registered name, or of a name of the same form whose unregistered size
    (an imported ViT-S or ViT-L, say) comes with its whole architecture in ``kwargs``."""
    if name in MODELS:
        return MODELS[name]
    match = NAME.fullmatch(str(name))
    if match and (match.group(1) == "vit") == bool(match.group(4)) and all(k in kwargs for k in ARCHITECTURE):
        return KINDS[match.group(1)], match.group(2), int(match.group(3))
    raise ValueError(
        f"unknown model {name!r}; registered: {', '.join(list_models())} (or another size with "
        f"{', '.join(ARCHITECTURE)} given)"
    )


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model; ``kwargs`` override the preset (unknown ones raise ``ValueError``).

    The model's ``config`` dict records its registry ``name`` and its architecture and geometry.
    """
    if name in BASELINES:
        _check_known(name, kwargs, _accepted(BaselineUNet))
        model = BaselineUNet(**{"spatial_dims": BASELINES[name], **kwargs})
        model.config["name"] = name
        return model
    kind, size, dims = _parse(name, kwargs)
    defaults = dict(ENCODERS.get(size, {}), spatial_dims=dims, img_size=DEFAULT_IMG_SIZE[dims], patch_size=PATCH_SIZE)
    if kind == "mae":
        frozen = {"trainable_pos_embed"}  # an MAE's position embedding stays fixed
        _check_known(name, kwargs, _accepted(MaskedAutoencoder) | _accepted(ViTEncoder) - frozen)
        model = MaskedAutoencoder(**{**defaults, **DECODERS.get((size, dims), {}), **kwargs})
    else:
        head = HEADS[kind]
        _check_known(name, kwargs, _accepted(ViTEncoder) | _accepted(head))
        head_args = {k: kwargs.pop(k) for k in list(kwargs) if k in _accepted(head) - {"encoder"}}
        encoder = ViTEncoder(**{**defaults, "trainable_pos_embed": True, **kwargs})
        model = head(encoder, **head_args)
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
