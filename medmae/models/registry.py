"""One registry for every model variant.

ViTs: ``{mae_vit|unetr_vit|light_vit|vit}_{size}_patch{p}_{2d|3d}[_cls]`` with ``p`` 16, 8 or 4 (any
power-of-two patch, or one per axis such as ``patch8x8x4``, is built too):

- ``mae_vit_*``: the MAE (ViT encoder over the visible patches, transformer decoder);
- ``unetr_vit_*``: UNETR's decoder (:mod:`medmae.models.unetr`; at patch 16 MONAI's ``UNETR``);
- ``light_vit_*``: the light, Primus-like decoder (:mod:`medmae.models.light`);
- ``vit_*_cls``: multi-label classifier.

Sizes: ``base`` (ViT-B: width 768, 12 blocks, 12 heads, MLP 3072; MAE decoder 384 x 8 in 3D, 512 x 8 in
2D), ``mini`` (width 192, 12 blocks, 3 heads, MLP 768, timm's ViT-Ti; decoder 96 x 4), ``tiny`` (width 48,
12 blocks, 3 heads, MLP 192; decoder 48 x 2) for tests.

Convolutional: ``dynunet_{size}_{2d|3d}`` (MONAI's residual DynUNet, nnU-Net's architecture) and
``mae_dynunet_{size}_{2d|3d}`` (its encoder pretrained by sparse masked modelling), sizes as
:data:`medmae.models.dynunet.DYNUNET_FILTERS`. Baselines: ``unet_2d``, ``unet_3d`` (MONAI U-Net, scratch).

Keyword arguments override the defaults (``img_size``, ``in_channels``, ``mask_ratio``, ``out_channels``,
``num_classes``, ``drop_path_rate``, ...).
"""

from __future__ import annotations

import inspect
import math
import re
from pathlib import Path
from typing import Any

from torch import nn

from medmae.checkpoint import CheckpointError, load_weights
from medmae.models.classifier import ViTClassifier
from medmae.models.dynunet import DYNUNET_FILTERS, DYNUNET_STRIDES, KERNEL_SIZE, ResidualUNet, total_stride
from medmae.models.encoder import ViTEncoder
from medmae.models.light import LightDecoderViT
from medmae.models.mae import MaskedAutoencoder
from medmae.models.patchify import as_tuple
from medmae.models.sparse_mae import SparseConvMAE
from medmae.models.unet import BaselineUNet
from medmae.models.unetr import EncoderUNETR

ENCODERS = {
    "base": {"width": 768, "depth": 12, "num_heads": 12, "mlp_dim": 3072},
    "mini": {"width": 192, "depth": 12, "num_heads": 3, "mlp_dim": 768},
    "tiny": {"width": 48, "depth": 12, "num_heads": 3, "mlp_dim": 192},
}
DECODERS = {
    ("base", 3): {"decoder_width": 384, "decoder_depth": 8, "decoder_heads": 12},
    ("base", 2): {"decoder_width": 512, "decoder_depth": 8, "decoder_heads": 16},
    ("mini", 3): {"decoder_width": 96, "decoder_depth": 4, "decoder_heads": 3},
    ("mini", 2): {"decoder_width": 96, "decoder_depth": 4, "decoder_heads": 3},
    ("tiny", 3): {"decoder_width": 48, "decoder_depth": 2, "decoder_heads": 3},
    ("tiny", 2): {"decoder_width": 48, "decoder_depth": 2, "decoder_heads": 3},
}
DEFAULT_IMG_SIZE = {2: 224, 3: 96}
PATCH_SIZE = 16  # the default ViT patch size
CONV_STRIDE = math.prod(DYNUNET_STRIDES)  # the DynUNets' total stride (16), their masking unit
PATCH_SIZES = (16, 8, 4)  # the patch sizes listed by name (any power of two builds)
HEADS = {"unetr_vit": EncoderUNETR, "light_vit": LightDecoderViT, "vit": ViTClassifier}
VIT = re.compile(r"(mae_vit|unetr_vit|light_vit|vit)_([a-z0-9]+)_patch(\d+(?:x\d+)*)_([23])d(_cls)?")
CONV = re.compile(r"(mae_dynunet|dynunet)_([a-z0-9]+)_([23])d")
BASELINES = {"unet_3d": 3, "unet_2d": 2}  # MONAI U-Nets, trained from scratch only
ARCHITECTURE = ("width", "depth", "num_heads", "mlp_dim")


def patch_name(patch_size: int | list[int] | tuple[int, ...]) -> str:
    """``8`` or ``[8, 8, 8]`` -> ``"8"``; ``[8, 8, 4]`` -> ``"8x8x4"``."""
    sizes = [patch_size] if isinstance(patch_size, int) else list(patch_size)
    return str(sizes[0]) if len(set(sizes)) == 1 else "x".join(map(str, sizes))


def vit_name(kind: str, size: str, patch_size: int | list[int], spatial_dims: int) -> str:
    """Registry name of a ViT model: ``vit_name("light_vit", "mini", 8, 3)`` -> ``light_vit_mini_patch8_3d``;
    ``kind`` ``"vit"`` gives the classifier (``vit_..._cls``)."""
    return f"{kind}_{size}_patch{patch_name(patch_size)}_{spatial_dims}d" + ("_cls" if kind == "vit" else "")


def input_multiple(arch: str, patch_size: int | list[int] | None) -> int | list[int]:
    """What every input size of a ``model.arch`` must be a multiple of (and its masking unit): the ViT's
    patch size (16 when None), or the U-Nets' total stride, 16."""
    return (patch_size or PATCH_SIZE) if arch in ("unetr", "light") else CONV_STRIDE


def list_models() -> list[str]:
    """Every listed model name (ViTs at patch 16, 8 and 4)."""
    vits = [
        vit_name(kind, size, p, dims)
        for kind in ("mae_vit", "unetr_vit", "light_vit", "vit")
        for size in ENCODERS
        for p in PATCH_SIZES
        for dims in (2, 3)
    ]
    convs = [
        f"{kind}_{size}_{dims}d" for kind in ("mae_dynunet", "dynunet") for size in DYNUNET_FILTERS for dims in (2, 3)
    ]
    return sorted([*vits, *convs, *BASELINES])


def _accepted(target: Any) -> set[str]:
    """The named arguments of ``target`` (not its ``**kwargs``)."""
    parameters = inspect.signature(target).parameters.values()
    return {p.name for p in parameters if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def _check_known(name: str, args: dict[str, Any], allowed: set[str]) -> None:
    unknown = set(args) - allowed
    if unknown:
        raise ValueError(f"{name}: unknown arguments {sorted(unknown)}")


def _unknown(name: str) -> ValueError:
    return ValueError(
        f"unknown model {name!r}: names are {{mae_vit|unetr_vit|light_vit}}_SIZE_patchP_{{2d|3d}}, "
        f"vit_SIZE_patchP_{{2d|3d}}_cls, {{mae_dynunet|dynunet}}_SIZE_{{2d|3d}} or unet_{{2d|3d}} with SIZE one "
        f"of {', '.join(ENCODERS)} (another ViT size with {', '.join(ARCHITECTURE)} given); `medmae info` lists them"
    )


def _vit(name: str, match: re.Match, kwargs: dict[str, Any]) -> nn.Module:
    """A ViT model of a name ``VIT`` matched; the patch size comes from the name."""
    kind, size, patch, dims, cls = match.groups()
    dims = int(dims)
    if (kind == "vit") != bool(cls) or (size not in ENCODERS and not all(k in kwargs for k in ARCHITECTURE)):
        raise _unknown(name)
    patch_size = as_tuple([int(p) for p in patch.split("x")] if "x" in patch else int(patch), dims, "patch_size")
    if "patch_size" in kwargs and as_tuple(kwargs.pop("patch_size"), dims, "patch_size") != patch_size:
        raise ValueError(f"{name}: patch_size differs from the {patch_name(patch_size)} of its name")
    defaults = dict(ENCODERS.get(size, {}), spatial_dims=dims, img_size=DEFAULT_IMG_SIZE[dims], patch_size=patch_size)
    if kind == "mae_vit":
        frozen = {"trainable_pos_embed"}  # an MAE's position embedding stays fixed
        _check_known(name, kwargs, _accepted(MaskedAutoencoder) | _accepted(ViTEncoder) - frozen)
        return MaskedAutoencoder(**{**defaults, **DECODERS.get((size, dims), {}), **kwargs})
    head = HEADS[kind]
    _check_known(name, kwargs, _accepted(ViTEncoder) | _accepted(head))
    head_args = {k: kwargs.pop(k) for k in list(kwargs) if k in _accepted(head) - {"encoder"}}
    encoder = ViTEncoder(**{**defaults, "trainable_pos_embed": True, **kwargs})
    return head(encoder, **head_args)


def _conv(name: str, match: re.Match, kwargs: dict[str, Any]) -> nn.Module:
    """A DynUNet or its sparse MAE of a name ``CONV`` matched."""
    kind, size, dims = match.groups()
    if size not in DYNUNET_FILTERS and "filters" not in kwargs:
        raise _unknown(name)
    target = SparseConvMAE if kind == "mae_dynunet" else ResidualUNet
    settings = {"spatial_dims": int(dims), "filters": DYNUNET_FILTERS.get(size), **kwargs}
    dims = settings["spatial_dims"]
    derived = {  # recorded in the model's config, fixed by its other settings
        "kernel_size": (KERNEL_SIZE,) * dims,
        "patch_size": total_stride(settings.get("strides", DYNUNET_STRIDES), dims),
    }
    for key, value in derived.items():
        if key in settings and as_tuple(settings.pop(key), dims, key) != value:
            raise ValueError(f"{name}: {key} is fixed at {list(value)} by the architecture")
    _check_known(name, settings, _accepted(target))
    return target(**settings)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model; ``kwargs`` override the preset (unknown ones raise ``ValueError``).

    The model's ``config`` dict records its registry ``name`` and its architecture and geometry.
    """
    if name in BASELINES:
        _check_known(name, kwargs, _accepted(BaselineUNet))
        model = BaselineUNet(**{"spatial_dims": BASELINES[name], **kwargs})
    elif match := VIT.fullmatch(str(name)):
        model = _vit(name, match, kwargs)
    elif match := CONV.fullmatch(str(name)):
        model = _conv(name, match, kwargs)
    else:
        raise _unknown(name)
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
