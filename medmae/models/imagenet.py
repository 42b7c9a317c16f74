"""ImageNet ViT weights (timm or torchvision layout, a file the user downloaded) as a medmae encoder payload.

:func:`imagenet_payload` reads the file without unpickling code, maps every tensor to medmae's
:class:`~medmae.models.encoder.ViTEncoder` names (or skips it with a reason: the classification head),
infers the architecture from the tensors and returns a payload that
:func:`~medmae.models.weights.classifier_from_pretrained` and
:func:`~medmae.models.weights.unetr_from_pretrained` take as they take a medmae checkpoint; they then
fit it to the task (input channels, patch grid, cls token) and report what they adapted. For 3D tasks
the 2D patch embedding is inflated along a new last axis. Nothing is ever downloaded.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medmae.checkpoint import CheckpointError, unreadable_reason, verify_checksum
from medmae.models.weights import PATCH_KEY, POS_KEY, WeightTransferError

NESTED = ("model", "state_dict", "module")  # where training scripts keep the weights inside a checkpoint
NORM_EPS = 1e-6  # timm's and torchvision's ViT LayerNorms
HEAD_WIDTH = 64  # channels per attention head in ViT-Ti/S/B/L
SIZE_NAMES = {(192, 12): "tiny", (384, 12): "small", (768, 12): "base", (1024, 24): "large", (1280, 32): "huge"}


def _weight_and_bias(names: dict[str, str]) -> dict[str, str]:
    """``{"ln_1": "norm1"}`` -> ``{"ln_1.weight": "norm1.weight", "ln_1.bias": "norm1.bias"}``."""
    return {f"{src}.{p}": f"{dst}.{p}" for src, dst in names.items() for p in ("weight", "bias")}


@dataclass(frozen=True)
class Layout:
    """Key names of one ViT implementation: global tensors, per-block tensors (``block`` matches the
    block index and the rest of the key), the cls token, the position table and head prefixes."""

    name: str
    cls: str
    pos: str
    block: str
    block_map: dict[str, str]
    globals_map: dict[str, str]
    head: tuple[str, ...]


TIMM = Layout(
    "timm",
    "cls_token",
    "pos_embed",
    r"blocks\.(\d+)\.(.+)",
    _weight_and_bias(
        {
            "norm1": "norm1",
            "attn.qkv": "attn.qkv",
            "attn.proj": "attn.out_proj",
            "norm2": "norm2",
            "mlp.fc1": "mlp.linear1",
            "mlp.fc2": "mlp.linear2",
        }
    ),
    _weight_and_bias({"patch_embed.proj": "patch_embedding.patch_embeddings", "norm": "norm"}),
    ("head.", "pre_logits."),
)
TORCHVISION = Layout(
    "torchvision",
    "class_token",
    "encoder.pos_embedding",
    r"encoder\.layers\.encoder_layer_(\d+)\.(.+)",
    {
        "self_attention.in_proj_weight": "attn.qkv.weight",
        "self_attention.in_proj_bias": "attn.qkv.bias",
        **_weight_and_bias(
            {
                "ln_1": "norm1",
                "self_attention.out_proj": "attn.out_proj",
                "ln_2": "norm2",
                "mlp.0": "mlp.linear1",
                "mlp.3": "mlp.linear2",  # torchvision >= 0.13
                "mlp.linear_1": "mlp.linear1",
                "mlp.linear_2": "mlp.linear2",
            }
        ),
    },  # older torchvision
    _weight_and_bias({"conv_proj": "patch_embedding.patch_embeddings", "encoder.ln": "norm"}),
    ("heads.",),
)
LAYOUTS = {"patch_embed.proj.weight": TIMM, "conv_proj.weight": TORCHVISION}  # detected by their patch projection
BLOCK_KEYS = (
    "norm1.weight",
    "norm1.bias",
    "attn.qkv.weight",
    "attn.out_proj.weight",
    "attn.out_proj.bias",
    "norm2.weight",
    "norm2.bias",
    "mlp.linear1.weight",
    "mlp.linear1.bias",
    "mlp.linear2.weight",
    "mlp.linear2.bias",
)  # required in every block; attn.qkv.bias when the first block has one


@dataclass
class ImportedEncoder:
    """A converted ViT: medmae encoder tensors (no prefix), its config, and where each source key went."""

    state: dict[str, torch.Tensor]
    config: dict[str, Any]
    layout: str
    mapped: dict[str, str] = field(default_factory=dict)  # source key -> medmae key
    skipped: dict[str, str] = field(default_factory=dict)  # source key -> why
    notes: list[str] = field(default_factory=list)


def imagenet_payload(
    path: str | Path, spatial_dims: int, num_heads: int | None = None
) -> tuple[dict[str, Any], list[str]]:
    """A medmae-style payload from a downloaded ImageNet ViT file (timm or torchvision layout).

    Args:
        path: a ``torch.save`` file (a state dict, bare or under ``"model"``, ``"state_dict"`` or
            ``"module"``) or a ``.safetensors`` file.
        spatial_dims: 2, or 3 to inflate the patch embedding along a new last axis.
        num_heads: attention heads; by default ``width // 64`` (the file does not store it).

    Returns:
        ``{"state_dict": {"encoder." + key: tensor}, "config": {...}, "task": None}`` for
        ``classifier_from_pretrained`` / ``unetr_from_pretrained``, and notes on what the import did.

    Raises:
        CheckpointError: the file is missing, unreadable, or its pickle would run code.
        WeightTransferError: not a ViT, or unknown or missing keys (the message lists them).
    """
    state, notes = read_state_dict(path)
    try:
        imported = convert_vit_state(state, spatial_dims, num_heads)
    except WeightTransferError as error:
        raise WeightTransferError(f"{path}: {error}") from error
    payload = {
        "state_dict": {"encoder." + k: v for k, v in imported.state.items()},
        "config": imported.config,
        "task": None,
    }
    return payload, [f"read {imported.layout} ViT weights from {path}", *notes, *imported.notes]


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The tensors of a ``torch.save`` or ``.safetensors`` file (``module.`` prefixes removed) and notes."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file (medmae never downloads; download it first)")
    verify_checksum(path)
    raw = _load_safetensors(path) if _is_safetensors(path) else load_torch(path)
    state, notes = _unnest(raw, path)
    prefixed = [k for k in state if k.startswith("module.")]
    if prefixed:
        state = {k.removeprefix("module."): v for k, v in state.items()}
        notes.append(f"removed the 'module.' prefix (a DistributedDataParallel save) from {len(prefixed)} keys")
    return state, notes


def _is_safetensors(path: Path) -> bool:
    """By suffix, or by content: an 8-byte header length followed by a JSON header."""
    with path.open("rb") as handle:
        head = handle.read(9)
    return path.suffix == ".safetensors" or (len(head) == 9 and head[8:9] == b"{")


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError as error:
        raise CheckpointError(
            f"{path}: a .safetensors file; reading it needs the safetensors package: pip install safetensors"
        ) from error
    try:
        return load_file(str(path), device="cpu")
    except Exception as error:  # SafetensorError, OSError, a truncated header
        raise CheckpointError(f"{path}: not a readable .safetensors file ({type(error).__name__}: {error})") from error


def load_torch(path: Path) -> Any:
    """``torch.load(weights_only=True)``: a pickle that would call code is refused, never executed."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for damaged or unsafe files
        why = unreadable_reason(error)
        if why.startswith("refused"):
            why = why.rsplit(". ", 1)[0] + (
                ". Save the weights alone (torch.save(model.state_dict(), FILE)) or use the .safetensors file"
            )
        raise CheckpointError(f"{path}: {why}") from error


def _unnest(raw: Any, path: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The state dict inside ``raw`` (bare, or under one of :data:`NESTED`, possibly twice)."""
    notes = []
    for _ in range(3):
        entry = next((k for k in NESTED if isinstance(raw, dict) and isinstance(raw.get(k), dict)), None)
        if entry is None:
            break
        raw = raw[entry]
        notes.append(f"weights read from the file's {entry!r} entry")
    if not (
        isinstance(raw, dict)
        and raw
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in raw.items())
    ):
        found = sorted(map(str, raw))[:8] if isinstance(raw, dict) else type(raw).__name__
        raise WeightTransferError(
            f"{path}: not a ViT state dict (a dict of tensors, bare or under one of {NESTED}); found {found}"
        )
    return raw, notes


def convert_vit_state(
    state: dict[str, torch.Tensor], spatial_dims: int, num_heads: int | None = None
) -> ImportedEncoder:
    """Map a timm or torchvision ViT state dict onto medmae's encoder names, exactly.

    Args:
        state: source tensors, e.g. timm's ``pos_embed [1, 1 + gh * gw, D]``, ``patch_embed.proj.weight
            [D, C, ph, pw]``, ``blocks.N.attn.qkv.weight [3D, D]``.
        spatial_dims: 2 or 3 (3 inflates the patch embedding to ``[D, C, ph, pw, ph]``).
        num_heads: attention heads; ``width // 64`` when not given.

    Returns:
        an :class:`ImportedEncoder` whose ``state`` holds exactly the keys of the ``ViTEncoder`` its
        ``config`` describes. Unknown or missing keys raise :class:`WeightTransferError`.
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims={spatial_dims!r} must be 2 or 3")
    layout = _detect_layout(state)
    out = ImportedEncoder({}, {}, layout.name)
    _map_keys(state, layout, out)
    _check_complete(out, layout)
    _fold_positions(state, layout, out)
    out.state = {k: v.float() if v.is_floating_point() else v for k, v in out.state.items()}
    dtypes = sorted({str(v.dtype) for v in state.values() if v.dtype != torch.float32})
    if dtypes:
        out.notes.append(f"converted tensors of dtype {', '.join(dtypes)} to float32")
    out.config = _infer_config(out, spatial_dims, num_heads)
    if spatial_dims == 3:
        _inflate(out)
    return out


def _detect_layout(state: dict[str, torch.Tensor]) -> Layout:
    for key, layout in LAYOUTS.items():
        if key in state:
            return layout
    raise WeightTransferError(
        f"not a ViT in timm or torchvision layout (no key {' or '.join(LAYOUTS)}); its keys begin {sorted(state)[:8]}"
    )


def _map_keys(state: dict[str, torch.Tensor], layout: Layout, out: ImportedEncoder) -> None:
    """Fill ``out.state``/``mapped``/``skipped`` (cls token and position table raw, folded later); raise on
    unknown keys or two source keys for one target."""
    unknown, clashes = [], []
    for key, tensor in state.items():
        block = re.fullmatch(layout.block, key)
        if key in layout.globals_map:
            target = layout.globals_map[key]
        elif key in (layout.cls, layout.pos):
            target = "cls_token" if key == layout.cls else POS_KEY
        elif block and block.group(2) in layout.block_map:
            target = f"blocks.{int(block.group(1))}.{layout.block_map[block.group(2)]}"
        elif key.startswith(layout.head):
            out.skipped[key] = "the ImageNet classification head (the task gets its own head)"
            continue
        else:
            unknown.append(f"{key} {tuple(tensor.shape)}")
            continue
        if target in out.state:
            clashes.append(f"{key} and {next(k for k, t in out.mapped.items() if t == target)} both map to {target}")
        out.state[target] = tensor
        out.mapped[key] = target
    if unknown or clashes:
        raise WeightTransferError(
            f"{layout.name} ViT with keys medmae's encoder cannot take:\n  "
            + "\n  ".join([f"unknown key {k}" for k in unknown] + clashes)
        )
    if out.skipped:
        out.notes.append(f"skipped {', '.join(sorted(out.skipped))}: the ImageNet classification head")


def _check_complete(out: ImportedEncoder, layout: Layout) -> None:
    """Raise :class:`WeightTransferError` naming (in the source's names) every required key not found."""
    blocks = {int(k.split(".")[1]) for k in out.state if k.startswith("blocks.")}
    depth = max(blocks, default=-1) + 1
    per_block = BLOCK_KEYS + (("attn.qkv.bias",) if "blocks.0.attn.qkv.bias" in out.state else ())
    required = [*layout.globals_map.values(), POS_KEY] + [f"blocks.{i}.{k}" for i in range(depth) for k in per_block]
    missing = [t for t in required if t not in out.state]
    if depth == 0:
        missing.append("blocks.0.*")
    if missing:
        names = {v: k for k, v in reversed(list(layout.globals_map.items()))} | {POS_KEY: layout.pos}
        source = {v: k for k, v in reversed(list(layout.block_map.items()))}
        shown = [names.get(t) or _source_block_key(t, layout, source) for t in missing]
        raise WeightTransferError(f"{layout.name} ViT without keys medmae's encoder needs: {', '.join(shown)}")


def _source_block_key(target: str, layout: Layout, source: dict[str, str]) -> str:
    """``blocks.3.mlp.linear1.weight`` -> torchvision's ``encoder.layers.encoder_layer_3.mlp.0.weight``."""
    _, index, rest = target.split(".", 2)
    prefix = layout.block.split(r"(\d+)")[0].replace("\\", "")
    return f"{prefix}{index}.{source[rest]}" if rest in source else target


def _fold_positions(state: dict[str, torch.Tensor], layout: Layout, out: ImportedEncoder) -> None:
    """``pos [1, 1 + N, D]`` -> patch positions ``[1, N, D]`` and ``cls_token + pos[:, :1]`` (medmae adds no
    position to its cls token, so the encoder's output is unchanged). A table of ``N`` patch positions
    only (timm's ``no_embed_class``) is kept as it is."""
    pos = out.state[POS_KEY]
    if pos.ndim != 3 or pos.shape[0] != 1:
        raise WeightTransferError(f"{layout.pos} of shape {tuple(pos.shape)}; expected [1, tokens, width]")
    n = pos.shape[1]
    if "cls_token" in out.state and n > 1 and math.isqrt(n - 1) ** 2 == n - 1:
        out.state["cls_token"] = out.state["cls_token"].reshape(1, 1, -1) + pos[:, :1]
        out.state[POS_KEY] = pos[:, 1:]
        out.notes.append(
            f"folded the cls token's position embedding ({layout.pos}[:, 0]) into the cls token "
            f"(cls_token + position): medmae adds no position to its cls token, so the encoder "
            f"gives the source model's output"
        )
    elif math.isqrt(n) ** 2 != n:
        raise WeightTransferError(
            f"{layout.pos} holds {n} tokens: neither a square grid nor a cls token plus a square grid"
        )
    elif "cls_token" in out.state:
        out.notes.append(f"{layout.pos} holds patch positions only; the cls token carries no position")


def _infer_config(out: ImportedEncoder, spatial_dims: int, num_heads: int | None) -> dict[str, Any]:
    """The 2D encoder config read off the tensors: ``patch [D, C, ph, pw]``, grid = sqrt(tokens)."""
    weight = out.state[PATCH_KEY]
    if weight.ndim != 4:
        raise WeightTransferError(
            f"patch projection of shape {tuple(weight.shape)}; expected a 2D ViT's [width, channels, ph, pw]"
        )
    width, channels, patch = weight.shape[0], weight.shape[1], list(weight.shape[2:])
    depth = 1 + max(int(k.split(".")[1]) for k in out.state if k.startswith("blocks."))
    if num_heads is None:
        if width % HEAD_WIDTH:
            raise WeightTransferError(
                f"width {width} is not a multiple of {HEAD_WIDTH}: cannot infer the "
                f"number of attention heads; pass num_heads"
            )
        num_heads = width // HEAD_WIDTH
        out.notes.append(
            f"num_heads {num_heads} inferred as width {width} // {HEAD_WIDTH} (the file does not "
            f"store it; ViT-Ti/S/B/L all use {HEAD_WIDTH} channels per head)"
        )
    side = math.isqrt(out.state[POS_KEY].shape[1])
    grid = [side, side]
    size = SIZE_NAMES.get((width, depth), f"w{width}d{depth}")
    config = {
        "spatial_dims": 2,
        "img_size": [g * p for g, p in zip(grid, patch)],
        "patch_size": patch,
        "in_channels": channels,
        "width": width,
        "depth": depth,
        "num_heads": num_heads,
        "mlp_dim": out.state["blocks.0.mlp.linear1.weight"].shape[0],
        "qkv_bias": "blocks.0.attn.qkv.bias" in out.state,
        "cls_token": "cls_token" in out.state,
        "norm_eps": NORM_EPS,
        "name": f"imagenet_vit_{size}_patch{patch[0]}_{spatial_dims}d",
    }
    out.notes.append(
        f"architecture: width {width}, depth {depth}, mlp_dim {config['mlp_dim']}, patch {patch}, "
        f"grid {grid} (img_size {config['img_size']}), {channels} input channels, qkv bias "
        f"{config['qkv_bias']}, cls token {config['cls_token']}, LayerNorm eps {NORM_EPS}"
    )
    return config


def _inflate(out: ImportedEncoder) -> None:
    """2D -> 3D: patch weight ``[D, C, ph, pw]`` -> ``[D, C, ph, pw, ph]`` (repeated along the new last axis,
    divided by ``ph``); the position table of grid ``(gh, gw)`` is used unchanged as grid ``(gh, gw, 1)``."""
    weight, config = out.state[PATCH_KEY], out.config
    depth = config["patch_size"][0]
    out.state[PATCH_KEY] = weight.unsqueeze(-1).expand(*weight.shape, depth) / depth
    grid = [s // p for s, p in zip(config["img_size"], config["patch_size"])]
    config.update(spatial_dims=3, patch_size=[*config["patch_size"], depth], img_size=[*config["img_size"], depth])
    out.notes.append(
        f"3D: inflated the patch embedding {list(weight.shape)} -> {list(out.state[PATCH_KEY].shape)}: "
        f"repeated along a new last axis and divided by {depth}, so a volume constant along that "
        f"axis embeds as the 2D image does"
    )
    out.notes.append(
        f"3D: the position table of grid {tuple(grid)} is used as grid {(*grid, 1)} (img_size "
        f"{tuple(config['img_size'])}); fitting it to the task's grid replicates it along the new "
        f"axis (trilinear)"
    )
