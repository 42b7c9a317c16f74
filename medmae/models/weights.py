"""Moving a pretrained ViT encoder into UNETR, the light decoder or a classifier, with an exact account of every tensor.

One pure function, :func:`adapt_encoder_state`, decides what happens to each tensor (loaded as is,
adapted, skipped, or left at its initialisation); :func:`load_encoder` applies it and asserts that the
missing and unexpected keys are exactly the ones it announced.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medmae.checkpoint import load_checkpoint
from medmae.errors import UserError
from medmae.models.classifier import ViTClassifier
from medmae.models.encoder import ViTEncoder
from medmae.models.light import LightDecoderViT
from medmae.models.patchify import as_tuple, grid_size
from medmae.models.pos_embed import resample_pos_embed
from medmae.models.unetr import EncoderUNETR

ENCODER_PREFIXES = ("encoder.", "vit.")  # MAE and classifier; UNETR
ARCHITECTURE_KEYS = (
    "spatial_dims",
    "img_size",
    "patch_size",
    "in_channels",
    "width",
    "depth",
    "num_heads",
    "mlp_dim",
    "qkv_bias",
)
POS_KEY = "patch_embedding.position_embeddings"
PATCH_KEY = "patch_embedding.patch_embeddings.weight"
GEOMETRY = ("in_channels", "img_size")  # what a convolutional segmenter may set apart from its checkpoint


class WeightTransferError(UserError, ValueError):
    """A pretrained encoder that does not fit the target; the message lists the keys and shapes."""


@dataclass
class TransferReport:
    """What happened to each tensor: loaded unchanged, adapted (how), skipped (why), initialised (why)."""

    loaded: list[str] = field(default_factory=list)
    adapted: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    initialised: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        counts = f"{len(self.loaded)} tensors loaded, {len(self.adapted)} adapted, {len(self.skipped)} skipped"
        lines = [f"encoder transfer: {counts}, {len(self.initialised)} initialised"]
        for title, notes in (("adapted", self.adapted), ("skipped", self.skipped), ("initialised", self.initialised)):
            lines += [f"  {title} {key}: {why}" for key, why in notes.items()]
        return "\n".join(lines)


def encoder_source(checkpoint: str | Path | dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The encoder tensors (prefix removed) and the config of a medmae checkpoint (a path or its payload)."""
    payload = load_checkpoint(checkpoint) if isinstance(checkpoint, (str, Path)) else checkpoint
    state, config = payload["state_dict"], payload["config"]
    for prefix in ENCODER_PREFIXES:
        if prefix + PATCH_KEY in state:
            return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}, config
    raise WeightTransferError(
        f"no encoder in checkpoint (no key {ENCODER_PREFIXES[0] + PATCH_KEY!r} or {ENCODER_PREFIXES[1] + PATCH_KEY!r})"
    )


def pretrained_geometry(payload: dict[str, Any], overrides: dict[str, Any], who: str) -> dict[str, Any]:
    """``in_channels`` and ``img_size`` of a convolutional segmenter built around ``payload``'s encoder: the
    checkpoint's, with ``overrides`` of these two only (ValueError naming ``who`` for any other)."""
    unknown = sorted(set(overrides) - set(GEOMETRY))
    if unknown:
        raise ValueError(f"{who}: cannot override {unknown}; only {list(GEOMETRY)}")
    return {key: payload["config"].get(key) for key in GEOMETRY} | overrides


def _adapt_channels(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """``[D, C_src, *p]`` -> ``[D, channels, *p]``: the sum over source channels, shared equally, so an
    image with the same signal in every channel gives the same embedding as before."""
    return weight.sum(dim=1, keepdim=True).repeat_interleave(channels, dim=1) / channels


def _fit_pos_embed(
    tensor: torch.Tensor,
    source_config: dict[str, Any],
    target: ViTEncoder,
    state: dict[str, torch.Tensor],
    report: TransferReport,
) -> str | None:
    """Load the position embedding when the patch grids agree, resample it when they differ (the token
    count alone can agree on different grids); return a problem when it cannot fit."""
    old_grid = grid_size(source_config["img_size"], source_config["patch_size"])
    width = target.patch_embedding.position_embeddings.shape[-1]
    tokens = math.prod(old_grid)
    if len(old_grid) != len(target.grid) or tensor.shape[-1] != width or tensor.shape[1] != tokens:
        return (
            f"shape of {POS_KEY}: checkpoint {tuple(tensor.shape)} on grid {old_grid}, "
            f"model {tuple(target.patch_embedding.position_embeddings.shape)} on grid {target.grid}"
        )
    if old_grid == target.grid:
        state[POS_KEY] = tensor
        report.loaded.append(POS_KEY)
    else:
        state[POS_KEY] = resample_pos_embed(tensor, old_grid, target.grid)
        mode = "bicubic" if len(old_grid) == 2 else "trilinear"
        report.adapted[POS_KEY] = f"resampled from grid {old_grid} to {target.grid} ({mode})"
    return None


def _check_patch_size(pretrained: list[int], wanted: list[int]) -> None:
    """Refuse another patch size of the same dimensionality: a patch embedding is never resampled."""
    if len(pretrained) == len(wanted) and list(pretrained) != list(wanted):
        raise WeightTransferError(
            f"the encoder was pretrained with patch size {list(pretrained)}; this model wants {list(wanted)}. A "
            "patch embedding is not resampled: pretrain at the patch size you fine-tune with (model.patch_size)"
        )


def adapt_encoder_state(
    source: dict[str, torch.Tensor], source_config: dict[str, Any], target: ViTEncoder
) -> tuple[dict[str, torch.Tensor], TransferReport]:
    """Fit a pretrained encoder's tensors to ``target`` without touching ``target``.

    A different patch size is refused; position embeddings are resampled to the target grid; the patch
    embedding is adapted to the target channel count; a cls token present on one side only is skipped or
    left initialised. Any other difference in keys or shapes raises :class:`WeightTransferError` naming
    each key and both shapes.

    Returns:
        the tensors to load (every target key except those reported as initialised) and the report.
    """
    _check_patch_size(source_config["patch_size"], target.config["patch_size"])
    wanted = target.state_dict()
    report = TransferReport()
    state = {}
    problems = []
    for key in sorted(set(source) - set(wanted)):
        if key == "cls_token":
            report.skipped[key] = "the target encoder has no cls token"
        else:
            problems.append(f"unexpected key {key} {tuple(source[key].shape)}")
    for key in sorted(set(wanted) - set(source)):
        if key == "cls_token":
            report.initialised[key] = "the pretrained encoder has no cls token; kept the fresh initialisation"
        else:
            problems.append(f"missing key {key} {tuple(wanted[key].shape)}")
    for key in sorted(set(source) & set(wanted)):
        tensor, shape = source[key], wanted[key].shape
        if key == POS_KEY:
            problem = _fit_pos_embed(tensor, source_config, target, state, report)
        elif tensor.shape == shape:
            state[key] = tensor
            problem = None
            report.loaded.append(key)
        elif key == PATCH_KEY and tensor.shape[0] == shape[0] and tensor.shape[2:] == shape[2:]:
            state[key] = _adapt_channels(tensor, shape[1])
            problem = None
            report.adapted[key] = (
                f"input channels {tensor.shape[1]} -> {shape[1]}: summed over the source "
                f"channels and shared equally over the target channels"
            )
        else:
            problem = f"shape of {key}: checkpoint {tuple(tensor.shape)}, model {tuple(shape)}"
        if problem:
            problems.append(problem)
    if problems:
        raise WeightTransferError("pretrained encoder does not fit the model:\n  " + "\n  ".join(problems))
    return state, report


def load_encoder(target: ViTEncoder, source: dict[str, torch.Tensor], source_config: dict[str, Any]) -> TransferReport:
    """Load pretrained encoder tensors into ``target``; asserts the exact missing and unexpected key sets."""
    state, report = adapt_encoder_state(source, source_config, target)
    missing, unexpected = target.load_state_dict(state, strict=False)
    if set(missing) != set(report.initialised) or unexpected:
        raise WeightTransferError(
            f"unexpected load result: missing {sorted(missing)} "
            f"(expected {sorted(report.initialised)}), unexpected {sorted(unexpected)}"
        )
    return report


def _target_encoder(config: dict[str, Any], overrides: dict[str, Any]) -> ViTEncoder:
    """An encoder with the pretrained architecture; ``overrides`` may change img_size, in_channels,
    drop_path_rate, cls_token or trainable_pos_embed, and may repeat (only) the pretrained patch_size."""
    patch_size = overrides.pop("patch_size", None)
    if patch_size is not None:
        dims = overrides.get("spatial_dims", config["spatial_dims"])
        _check_patch_size(config["patch_size"], list(as_tuple(patch_size, dims, "patch_size")))
        overrides["patch_size"] = patch_size
    architecture = {key: config[key] for key in ARCHITECTURE_KEYS} | {"norm_eps": config.get("norm_eps", 1e-5)}
    return ViTEncoder(**{**architecture, "trainable_pos_embed": True, **overrides})


def _derived_name(config: dict[str, Any], prefix: str, suffix: str = "") -> str:
    """Registry name of the fine-tuned model: ``mae_vit_base_patch16_3d`` -> ``unetr_vit_base_patch16_3d``."""
    core = re.search(r"vit_[a-z0-9]+_patch[0-9x]+_[23]d", str(config.get("name")))
    return f"{prefix}{core.group(0)[4:]}{suffix}" if core else f"{prefix}custom{suffix}"


def unetr_from_pretrained(
    checkpoint: str | Path | dict[str, Any],
    out_channels: int,
    feature_size: int = 16,
    norm_name: str = "instance",
    **encoder_overrides: Any,
) -> tuple[EncoderUNETR, TransferReport]:
    """UNETR for segmentation with the pretrained encoder.

    Args:
        checkpoint: a medmae checkpoint path or payload (MAE, UNETR, light-decoder model or classifier).
        out_channels: classes including background.
        feature_size, norm_name: UNETR decoder settings.
        encoder_overrides: e.g. ``img_size=(96, 96, 96)``, ``in_channels=4``, ``drop_path_rate=0.1``;
            ``patch_size`` must equal the pretrained one.

    Returns:
        the model and the :class:`TransferReport`.
    """
    source, config = encoder_source(checkpoint)
    encoder = _target_encoder(config, {"cls_token": False, **encoder_overrides})
    model = EncoderUNETR(encoder, out_channels, feature_size=feature_size, norm_name=norm_name)
    report = load_encoder(model.vit, source, config)
    model.config["name"] = _derived_name(config, "unetr_vit_")
    return model, report


def light_from_pretrained(
    checkpoint: str | Path | dict[str, Any], out_channels: int, **encoder_overrides: Any
) -> tuple[LightDecoderViT, TransferReport]:
    """The ViT with the light decoder (:mod:`medmae.models.light`) around the pretrained encoder; arguments
    as :func:`unetr_from_pretrained`."""
    source, config = encoder_source(checkpoint)
    encoder = _target_encoder(config, {"cls_token": False, **encoder_overrides})
    model = LightDecoderViT(encoder, out_channels)
    report = load_encoder(model.vit, source, config)
    model.config["name"] = _derived_name(config, "light_vit_")
    return model, report


def classifier_from_pretrained(
    checkpoint: str | Path | dict[str, Any],
    num_classes: int,
    pool: str = "avg",
    head_norm: bool = False,
    **encoder_overrides: Any,
) -> tuple[ViTClassifier, TransferReport]:
    """Multi-label ViT classifier (raw logits) with the pretrained encoder; ``pool="cls"`` adds a cls token
    (kept from the checkpoint when it has one); ``head_norm`` a linear probe's BatchNorm. Other arguments
    as :func:`unetr_from_pretrained`."""
    source, config = encoder_source(checkpoint)
    encoder = _target_encoder(config, {"cls_token": pool == "cls", **encoder_overrides})
    model = ViTClassifier(encoder, num_classes, pool=pool, head_norm=head_norm)
    report = load_encoder(model.encoder, source, config)
    model.config["name"] = _derived_name(config, "vit_", "_cls")
    return model, report
