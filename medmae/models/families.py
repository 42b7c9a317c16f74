"""medmae's backbone families, each registered once (:mod:`medmae.models.registry`): the ViT (UNETR or
light decoder, classifier), MONAI's residual DynUNet, nnU-Net's ResEnc (dynamic-network-architectures)
and MONAI's U-Net baseline. Each knows its names, presets, MAE, segmenter, transfer and config checks.

Functions and methods take the config's ``model`` section (:class:`~medmae.config.ModelConfig`) and a
``geometry`` dict (``img_size``: the ROI, ``in_channels``).
"""

from __future__ import annotations

import math
import re
from typing import Any

from torch import nn

from medmae.models.classifier import ViTClassifier
from medmae.models.dynunet import (
    DYNUNET_FILTERS,
    DYNUNET_STRIDES,
    KERNEL_SIZE,
    ResidualUNet,
    dynunet_from_pretrained,
    total_stride,
)
from medmae.models.encoder import ViTEncoder
from medmae.models.light import LightDecoderViT
from medmae.models.mae import MaskedAutoencoder
from medmae.models.patchify import as_tuple
from medmae.models.registry import Family, accepted, check_known, create_model, register, unknown_model
from medmae.models.resenc import KERNEL_SIZE as RESENC_KERNEL
from medmae.models.resenc import RESENC_PRESETS, ResEncUNet, SparseResEncMAE, resenc_from_pretrained
from medmae.models.sparse_mae import SparseConvMAE
from medmae.models.unet import BaselineUNet
from medmae.models.unetr import EncoderUNETR
from medmae.models.weights import (
    TransferReport,
    classifier_from_pretrained,
    light_from_pretrained,
    unetr_from_pretrained,
)

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
PATCH_SIZES = (16, 8, 4)  # the patch sizes listed by name (any power of two builds)
HEADS = {"unetr_vit": EncoderUNETR, "light_vit": LightDecoderViT, "vit": ViTClassifier}
ARCHITECTURE = ("width", "depth", "num_heads", "mlp_dim")


def patch_name(patch_size: int | list[int] | tuple[int, ...]) -> str:
    """``8`` or ``[8, 8, 8]`` -> ``"8"``; ``[8, 8, 4]`` -> ``"8x8x4"``."""
    sizes = [patch_size] if isinstance(patch_size, int) else list(patch_size)
    return str(sizes[0]) if len(set(sizes)) == 1 else "x".join(map(str, sizes))


def vit_name(kind: str, size: str, patch_size: int | list[int], spatial_dims: int) -> str:
    """Registry name of a ViT model: ``vit_name("light_vit", "mini", 8, 3)`` -> ``light_vit_mini_patch8_3d``;
    ``kind`` ``"vit"`` gives the classifier (``vit_..._cls``)."""
    return f"{kind}_{size}_patch{patch_name(patch_size)}_{spatial_dims}d" + ("_cls" if kind == "vit" else "")


def masking(model: Any) -> dict[str, Any]:
    """The MAE settings every family's MAE takes from config section ``model``."""
    return {"mask_ratio": model.mask_ratio, "norm_pix_loss": model.norm_pix_loss, "mask_strategy": model.mask_strategy}


def vit_only_problems(model: Any) -> list[str]:
    """The ViT-only keys a convolutional family's config must leave at their defaults."""
    changed = {"encoder_mode": model.encoder_mode != "skip", "patch_size": model.patch_size is not None}
    keys = ", ".join(f"model.{key}" for key, on in changed.items() if on)
    return [f"{keys} apply to ViTs only, not to model.arch={model.arch}"] if keys else []


def pop_derived(name: str, settings: dict[str, Any], derived: dict[str, tuple[int, ...]]) -> None:
    """Remove the config keys that a convolutional model's other settings fix (kernel, total stride),
    raising ValueError where a given value differs."""
    dims = settings["spatial_dims"]
    for key, value in derived.items():
        if key in settings and as_tuple(settings.pop(key), dims, key) != value:
            raise ValueError(f"{name}: {key} is fixed at {list(value)} by the architecture")


class VitFamily(Family):
    """ViT encoders with the UNETR or light decoder, the ViT classifier, and the ViT MAE."""

    name = "vit"
    archs = ("unetr", "light")
    sizes = tuple(ENCODERS)
    pattern = re.compile(r"(mae_vit|unetr_vit|light_vit|vit)_([a-z0-9]+)_patch(\d+(?:x\d+)*)_([23])d(_cls)?")
    listed = (
        ("mae_vit_", "ViT MAEs"),
        ("unetr_vit_", "ViT + UNETR decoder"),
        ("light_vit_", "ViT + light decoder"),
        ("vit_", "ViT classifiers"),
    )
    encoder_prefixes = ("vit.", "encoder.")
    layer_decay = True
    classifies = ("unetr",)

    def names(self) -> list[str]:
        kinds = ("mae_vit", "unetr_vit", "light_vit", "vit")
        return [vit_name(k, s, p, d) for k in kinds for s in ENCODERS for p in PATCH_SIZES for d in (2, 3)]

    def create(self, name: str, match: re.Match, kwargs: dict[str, Any]) -> nn.Module:
        kind, size, patch, dims, cls = match.groups()
        dims = int(dims)
        if (kind == "vit") != bool(cls) or (size not in ENCODERS and not all(k in kwargs for k in ARCHITECTURE)):
            raise unknown_model(name)
        patch_size = as_tuple([int(p) for p in patch.split("x")] if "x" in patch else int(patch), dims, "patch_size")
        if "patch_size" in kwargs and as_tuple(kwargs.pop("patch_size"), dims, "patch_size") != patch_size:
            raise ValueError(f"{name}: patch_size differs from the {patch_name(patch_size)} of its name")
        defaults = dict(
            ENCODERS.get(size, {}), spatial_dims=dims, img_size=DEFAULT_IMG_SIZE[dims], patch_size=patch_size
        )
        if kind == "mae_vit":
            frozen = {"trainable_pos_embed"}  # an MAE's position embedding stays fixed
            check_known(name, kwargs, accepted(MaskedAutoencoder) | accepted(ViTEncoder) - frozen)
            return MaskedAutoencoder(**{**defaults, **DECODERS.get((size, dims), {}), **kwargs})
        head = HEADS[kind]
        check_known(name, kwargs, accepted(ViTEncoder) | accepted(head))
        head_args = {k: kwargs.pop(k) for k in list(kwargs) if k in accepted(head) - {"encoder"}}
        encoder = ViTEncoder(**{**defaults, "trainable_pos_embed": True, **kwargs})
        return head(encoder, **head_args)

    def input_multiple(self, model: Any) -> int | list[int]:
        return model.patch_size or PATCH_SIZE

    def mae(self, model: Any, spatial_dims: int, geometry: dict[str, Any]) -> nn.Module:
        name = vit_name("mae_vit", model.size, model.patch_size or PATCH_SIZE, spatial_dims)
        extra = {"encoder_mode": model.encoder_mode, "drop_path_rate": model.drop_path}
        if model.decoder_width is not None:
            extra |= {"decoder_width": model.decoder_width, "decoder_heads": max(1, model.decoder_width // 32)}
        if model.decoder_depth is not None:
            extra["decoder_depth"] = model.decoder_depth
        return create_model(name, **geometry, **masking(model), **extra)

    def segmenter(
        self, model: Any, spatial_dims: int, outputs: int, geometry: dict[str, Any], classify: bool = False
    ) -> nn.Module:
        encoder = {**geometry, "drop_path_rate": model.drop_path}
        name = vit_name(
            "vit" if classify else f"{model.arch}_vit", model.size, model.patch_size or PATCH_SIZE, spatial_dims
        )
        if classify:
            head = {"num_classes": outputs, "pool": model.pool, "cls_token": model.pool == "cls"}
            return create_model(name, head_norm=model.tuning == "linear", **head, **encoder)
        decoder = {"feature_size": model.feature_size} if model.arch == "unetr" else {}
        return create_model(name, out_channels=outputs, **decoder, **encoder)

    def from_pretrained(
        self, payload: dict[str, Any], model: Any, outputs: int, geometry: dict[str, Any], classify: bool = False
    ) -> tuple[nn.Module, TransferReport]:
        encoder = {**geometry, "drop_path_rate": model.drop_path, "patch_size": model.patch_size}
        if classify:
            probe = model.tuning == "linear"
            return classifier_from_pretrained(payload, outputs, pool=model.pool, head_norm=probe, **encoder)
        if model.arch == "light":
            return light_from_pretrained(payload, outputs, **encoder)
        return unetr_from_pretrained(payload, outputs, feature_size=model.feature_size, **encoder)

    def rebuild_overrides(self, model: Any) -> dict[str, Any]:
        return {"drop_path_rate": model.drop_path}


class DynUNetFamily(Family):
    """MONAI's residual DynUNet (nnU-Net's architecture as MONAI builds it) and its sparse convolutional MAE."""

    name = "dynunet"
    archs = ("dynunet",)
    sizes = tuple(DYNUNET_FILTERS)
    pattern = re.compile(r"(mae_dynunet|dynunet)_([a-z0-9]+)_([23])d")
    listed = (("mae_dynunet_", "sparse convolutional MAEs (DynUNet)"), ("dynunet_", "residual U-Nets (MONAI DynUNet)"))
    encoder_prefixes = ("input_block.", "downsamples.", "bottleneck.")

    def names(self) -> list[str]:
        return [
            f"{kind}_{size}_{d}d" for kind in ("mae_dynunet", "dynunet") for size in DYNUNET_FILTERS for d in (2, 3)
        ]

    def create(self, name: str, match: re.Match, kwargs: dict[str, Any]) -> nn.Module:
        kind, size, dims = match.groups()
        if size not in DYNUNET_FILTERS and "filters" not in kwargs:
            raise unknown_model(name)
        target = SparseConvMAE if kind == "mae_dynunet" else ResidualUNet
        settings = {"spatial_dims": int(dims), "filters": DYNUNET_FILTERS.get(size), **kwargs}
        dims = settings["spatial_dims"]
        stride = total_stride(settings.get("strides", DYNUNET_STRIDES), dims)
        pop_derived(name, settings, {"kernel_size": (KERNEL_SIZE,) * dims, "patch_size": stride})
        check_known(name, settings, accepted(target))
        return target(**settings)

    def input_multiple(self, model: Any) -> int:
        return math.prod(DYNUNET_STRIDES)

    def config_problems(self, model: Any) -> list[str]:
        return super().config_problems(model) + vit_only_problems(model)

    def mae(self, model: Any, spatial_dims: int, geometry: dict[str, Any]) -> nn.Module:
        extra = {} if model.decoder_width is None else {"decoder_width": model.decoder_width}
        return create_model(f"mae_dynunet_{model.size}_{spatial_dims}d", **geometry, **masking(model), **extra)

    def segmenter(
        self, model: Any, spatial_dims: int, outputs: int, geometry: dict[str, Any], classify: bool = False
    ) -> nn.Module:
        return create_model(f"dynunet_{model.size}_{spatial_dims}d", out_channels=outputs, **geometry)

    def from_pretrained(
        self, payload: dict[str, Any], model: Any, outputs: int, geometry: dict[str, Any], classify: bool = False
    ) -> tuple[nn.Module, TransferReport]:
        return dynunet_from_pretrained(payload, outputs, **geometry)


class ResEncFamily(Family):
    """nnU-Net's residual-encoder U-Net (:mod:`medmae.models.resenc`) and its sparse MAE."""

    name = "resenc"
    archs = ("resenc",)
    sizes = ("tiny", "m", "l")
    pattern = re.compile(r"(mae_resenc|resenc)_([a-z0-9]+)_([23])d")
    listed = (("mae_resenc_", "sparse convolutional MAEs (ResEnc)"), ("resenc_", "nnU-Net ResEnc U-Nets (M, L)"))
    encoder_prefixes = ("encoder.",)

    def names(self) -> list[str]:
        return [f"{kind}_{size}_{d}d" for kind in ("mae_resenc", "resenc") for size in self.sizes for d in (2, 3)]

    def create(self, name: str, match: re.Match, kwargs: dict[str, Any]) -> nn.Module:
        kind, size, dims = match.groups()
        if size not in RESENC_PRESETS and "features" not in kwargs:
            raise unknown_model(name)
        target = SparseResEncMAE if kind == "mae_resenc" else ResEncUNet
        settings = {"spatial_dims": int(dims), **RESENC_PRESETS.get(size, {}), **kwargs}
        dims = settings["spatial_dims"]
        stride = total_stride(settings["strides"], dims)
        pop_derived(name, settings, {"kernel_size": (RESENC_KERNEL,) * dims, "patch_size": stride})
        check_known(name, settings, accepted(target))
        return target(**settings)

    def input_multiple(self, model: Any) -> int:
        return math.prod(RESENC_PRESETS.get(model.size, RESENC_PRESETS["l"])["strides"])

    def config_problems(self, model: Any) -> list[str]:
        fixed = [key for key in ("decoder_width", "decoder_depth") if getattr(model, key) is not None]
        decoder = [f"model.{key} does not apply: the ResEnc MAE uses nnU-Net's decoder" for key in fixed]
        return super().config_problems(model) + vit_only_problems(model) + decoder

    def mae(self, model: Any, spatial_dims: int, geometry: dict[str, Any]) -> nn.Module:
        return create_model(f"mae_resenc_{model.size}_{spatial_dims}d", **geometry, **masking(model))

    def segmenter(
        self, model: Any, spatial_dims: int, outputs: int, geometry: dict[str, Any], classify: bool = False
    ) -> nn.Module:
        return create_model(f"resenc_{model.size}_{spatial_dims}d", out_channels=outputs, **geometry)

    def from_pretrained(
        self, payload: dict[str, Any], model: Any, outputs: int, geometry: dict[str, Any], classify: bool = False
    ) -> tuple[nn.Module, TransferReport]:
        net, report = resenc_from_pretrained(payload, outputs, **geometry)
        core = re.fullmatch(r"(?:mae_)?(resenc_[a-z0-9]+_[23]d)", str(payload["config"].get("name")))
        net.config["name"] = core.group(1) if core else f"resenc_custom_{net.config['spatial_dims']}d"
        return net, report


class BaselineFamily(Family):
    """MONAI's U-Net, a segmentation baseline trained from scratch only."""

    name = "unet"
    archs = ("unet",)
    pattern = re.compile(r"unet_([23])d")
    listed = (("unet_", "MONAI U-Nets (from scratch)"),)
    pretrains = False

    def names(self) -> list[str]:
        return ["unet_2d", "unet_3d"]

    def create(self, name: str, match: re.Match, kwargs: dict[str, Any]) -> nn.Module:
        check_known(name, kwargs, accepted(BaselineUNet))
        return BaselineUNet(**{"spatial_dims": int(match.group(1)), **kwargs})

    def config_problems(self, model: Any) -> list[str]:
        return vit_only_problems(model)

    def segmenter(
        self, model: Any, spatial_dims: int, outputs: int, geometry: dict[str, Any], classify: bool = False
    ) -> nn.Module:
        return create_model(f"unet_{spatial_dims}d", out_channels=outputs, **geometry)


for _family in (VitFamily(), DynUNetFamily(), ResEncFamily(), BaselineFamily()):
    register(_family)
