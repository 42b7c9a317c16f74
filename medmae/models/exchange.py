"""Pretrained weights in and out: medmae's own checkpoints, nnssl/OpenMind checkpoints (ResEnc), MONAI's
self-supervised ViT weights (``ViTAutoEnc``), and medmae ResEnc encoders written as nnssl checkpoints
that nnU-Net loads.

Every file is read with ``weights_only=True``: a pickle that would run code is refused, never run. A
foreign file becomes a medmae-style payload (``config`` with a registry ``name``, ``state_dict`` with the
encoder under ``encoder.``, ``task`` with what it was pretrained on, ``terms``: licence and citation), so
the families transfer it as they transfer their own (:mod:`medmae.models.families`).

Axis order: medmae's arrays are in the images' voxel order ``[x, y, z]`` (nibabel, MONAI); nnU-Net and nnssl
read ``[z, y, x]`` (SimpleITK's order, also kept by their nibabel readers). Weights crossing over have the
spatial axes of every 3D kernel reversed (:func:`reverse_axes`), and strides, spacings and patches are
written in each side's order. This fixes the axis order only: medmae reorients to a task's orientation
where the task sets one, nnU-Net keeps each file's index order, and flips between the two are not undone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from medmae.checkpoint import CheckpointError, checked_payload, checkpoint_file, read_weights_only, save_checkpoint
from medmae.errors import UserError
from medmae.files import write_text
from medmae.models.families import ENCODERS
from medmae.models.imagenet import HEAD_WIDTH
from medmae.models.resenc import RESENC_L
from medmae.models.weights import PATCH_KEY, POS_KEY

NNSSL_KEYS = ("network_weights", "nnssl_adaptation_plan")
NNSSL_RESENC = (
    "ResEncL",
    "ResidualEncoderUNet",
    "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
)
MONAI_DECODER = ("conv3d_transpose.", "conv3d_transpose_1.")  # ViTAutoEnc's reconstruction head
WRAPPERS = ("module.", "_orig_mod.")  # DistributedDataParallel and torch.compile key prefixes
TERM_KEYS = ("license", "licence", "citation")
OPENMIND_TERMS = (
    "the file names no licence or citation; OpenMind's released checkpoints are CC-BY-4.0: cite Wald et al., "
    "'An OpenMind for 3D medical vision self-supervised learning' (ICCV 2025) and the checkpoint's model card"
)
ZSCORE = {"ZScoreNormalization": {"rule": "zscore_nonzero"}}  # nnssl scheme -> medmae's nearest rule


def reverse_axes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every 3D kernel ``[O, I, a, b, c]`` as ``[O, I, c, b, a]`` (medmae's ``[x, y, z]`` <-> nnU-Net's
    ``[z, y, x]``); other tensors unchanged. Its own inverse."""
    return {k: v.permute(0, 1, 4, 3, 2).contiguous() if v.ndim == 5 else v for k, v in state.items()}


def read_pretrained(path: str | Path) -> tuple[dict[str, Any], list[str]]:
    """The payload of a ``--pretrained`` file and notes on what was read: a medmae checkpoint as it is; an
    nnssl checkpoint (:func:`nnssl_payload`); MONAI ``ViTAutoEnc`` weights (:func:`monai_vit_payload`).
    Anything else is refused with :class:`CheckpointError` saying what the file holds."""
    path = checkpoint_file(path)
    raw = read_weights_only(path)
    if isinstance(raw, dict) and "format" in raw:
        return checked_payload(raw, path), []
    if isinstance(raw, dict) and all(key in raw for key in NNSSL_KEYS):
        try:
            return nnssl_payload(raw, path)
        except (KeyError, TypeError, StopIteration) as error:
            raise CheckpointError(f"{path}: an nnssl checkpoint whose adaptation plan lacks {error}") from error
    nested = raw.get("state_dict", raw.get("model", raw)) if isinstance(raw, dict) else None
    state = unwrapped(nested) if isinstance(nested, dict) else {}
    if PATCH_KEY in state and "blocks.0.attn.qkv.weight" in state:
        return monai_vit_payload(state, path)
    found = sorted(map(str, raw))[:6] if isinstance(raw, dict) else type(raw).__name__
    raise CheckpointError(
        f"{path}: neither a medmae checkpoint, an nnssl checkpoint ({' and '.join(NNSSL_KEYS)}) nor MONAI ViT "
        f"weights ({PATCH_KEY}, blocks.*); found {found}. ImageNet ViT weights: --pretrained imagenet:FILE"
    )


def unwrapped(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with DistributedDataParallel's and torch.compile's key prefixes removed."""
    for prefix in WRAPPERS:
        if state and all(str(k).startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def terms_of(*records: dict[str, Any]) -> dict[str, Any]:
    """The licence and citation a file carries (top level or in its plan), None where it names none."""
    found = {key: record[key] for record in records for key in TERM_KEYS if record.get(key)}
    return {"licence": found.get("license", found.get("licence")), "citation": found.get("citation")}


def is_resenc_l(config: dict[str, Any]) -> bool:
    """Whether ``config``'s ``features``, ``blocks`` and ``strides`` are nnU-Net's ResEnc L."""
    return all(list(config[key]) == list(value) for key, value in RESENC_L.items())


def nnssl_architecture(plan: dict[str, Any], path: Path) -> dict[str, Any]:
    """ResEnc ``features``, ``blocks``, ``strides`` of an nnssl adaptation plan; a Primus or another
    architecture is refused naming it."""
    arch = plan["architecture_plans"]
    name, kwargs = arch.get("arch_class_name"), arch.get("arch_kwargs") or {}
    if name not in NNSSL_RESENC or (name != "ResEncL" and not kwargs):
        raise UserError(
            f"{path}: an nnssl checkpoint of architecture {name!r}; medmae fine-tunes nnssl's residual-encoder "
            "U-Nets (ResEncL, ResidualEncoderUNet) only (Primus, an EVA ViT on 8^3 patches, is not supported)"
        )
    if name == "ResEncL":
        return {key: list(value) for key, value in RESENC_L.items()}
    strides = [s if isinstance(s, int) else list(reversed(s)) for s in kwargs["strides"]]  # to [x, y, z]
    kernels = {k for size in kwargs["kernel_sizes"] for k in ([size] if isinstance(size, int) else size)}
    unsupported = {
        "kernel sizes": kernels != {3},
        "norm": "InstanceNorm" not in str(kwargs.get("norm_op")),
        "non-linearity": "LeakyReLU" not in str(kwargs.get("nonlin")),
        "dropout": kwargs.get("dropout_op") is not None,
    }
    if any(unsupported.values()):
        raise UserError(
            f"{path}: ResidualEncoderUNet with other {', '.join(k for k, v in unsupported.items() if v)} than "
            f"nnU-Net's ResEnc (kernel 3, instance norm, leaky ReLU, no dropout): {kwargs}"
        )
    blocks = kwargs["n_blocks_per_stage"]
    blocks = [blocks] * kwargs["n_stages"] if isinstance(blocks, int) else list(blocks)
    return {"features": list(kwargs["features_per_stage"]), "blocks": blocks, "strides": strides}


def nnssl_payload(raw: dict[str, Any], path: Path) -> tuple[dict[str, Any], list[str]]:
    """An nnssl/OpenMind checkpoint as a ResEnc payload: only the stem and encoder (the adaptation plan's
    ``key_to_stem`` and ``key_to_encoder``; never the decoder's second listing ``decoder.encoder.*``), axes
    reversed to medmae's order; ``task`` holds the pretraining spacing and normalisation with the task-file
    edits that follow them."""
    plan = raw["nnssl_adaptation_plan"]
    architecture = nnssl_architecture(plan, path)
    weights = unwrapped(raw["network_weights"])
    parts = {plan["key_to_stem"] + ".": "stem.", plan["key_to_encoder"] + ".": "stages."}
    state = {
        "encoder." + parts[prefix] + key[len(prefix) :]: tensor
        for key, tensor in weights.items()
        for prefix in parts
        if key.startswith(prefix)
    }
    if not state:
        raise CheckpointError(f"{path}: no weights under {' or '.join(parts)} in its network_weights")
    size = "l" if is_resenc_l(architecture) else "custom"
    config = {"name": f"mae_resenc_{size}_3d", "spatial_dims": 3, "in_channels": plan["pretrain_num_input_channels"]}
    configuration = next(iter(plan["pretrain_plan"]["configurations"].values()))
    schemes = configuration.get("normalization_schemes") or []
    spacing = configuration.get("spacing")
    source = {
        "spacing": None if spacing is None else [float(s) for s in reversed(spacing)],
        "intensity": ZSCORE.get(schemes[0], {"rule": schemes[0]}) if len(set(schemes)) == 1 else {"rule": schemes},
    }
    source["advice"] = {
        "spacing": f"spacing: {source['spacing']} in the task file",
        "intensity": f"intensity: {source['intensity']} in the task file (nnssl: {', '.join(schemes)})",
    }
    roi = plan.get("recommended_downstream_patchsize")
    roi = list(reversed(roi)) if roi else None  # nnU-Net's [z, y, x] -> medmae's [x, y, z]
    terms = terms_of(raw, plan)
    origin = (
        f"read an nnssl checkpoint from {path}: {plan['architecture_plans']['arch_class_name']} {architecture}, "
        f"{len(state)} stem and encoder tensors (decoder not read), pretrained on "
        f"{plan['pretrain_plan'].get('dataset_name')} at spacing {spacing} ({configuration.get('spacing_style')}), "
        f"normalisation {schemes}, patch {configuration.get('patch_size')}"
    )
    notes = [
        origin,
        *([f"nnssl recommends fine-tuning patches of {roi}: --set model.img_size={roi}"] if roi else []),
        "licence: " + (str(terms["licence"]) if terms["licence"] else OPENMIND_TERMS),
        *([f"citation: {terms['citation']}"] if terms["citation"] else []),
    ]
    payload = {"config": config | architecture, "state_dict": reverse_axes(state), "task": source, "terms": terms}
    return payload, notes


def monai_vit_payload(state: dict[str, torch.Tensor], path: Path) -> tuple[dict[str, Any], list[str]]:
    """MONAI ``ViTAutoEnc`` weights (MONAI's self-supervised pretraining tutorial) as a ViT payload. Its keys
    are medmae's encoder keys; its reconstruction head and the unused ``norm_cross_attn`` norms are left
    out (each named in the notes). The architecture is read off the tensors; heads are not stored: taken
    from medmae's preset of the same width and depth, else ``width // 64``."""
    skipped = sorted(k for k in state if k.startswith(MONAI_DECODER) or ".norm_cross_attn." in k)
    encoder = {k: v for k, v in state.items() if k not in skipped}
    weight = encoder[PATCH_KEY]
    width, channels, patch = weight.shape[0], weight.shape[1], list(weight.shape[2:])
    dims = len(patch)
    depth = 1 + max(int(k.split(".")[1]) for k in encoder if k.startswith("blocks."))
    tokens = encoder[POS_KEY].shape[1]
    side = round(tokens ** (1 / dims))
    if side**dims != tokens:
        raise CheckpointError(f"{path}: {tokens} position embeddings are no cubic grid; medmae cannot place them")
    preset = next((n for n, e in ENCODERS.items() if (e["width"], e["depth"]) == (width, depth)), None)
    heads = ENCODERS[preset]["num_heads"] if preset else width // HEAD_WIDTH
    if heads < 1 or width % heads:
        raise CheckpointError(f"{path}: width {width}: cannot infer the number of attention heads")
    config = {
        "name": f"mae_vit_{preset or 'custom'}_patch{patch[0]}_{dims}d",
        "spatial_dims": dims,
        "img_size": [side * p for p in patch],
        "patch_size": patch,
        "in_channels": channels,
        "width": width,
        "depth": depth,
        "num_heads": heads,
        "mlp_dim": encoder["blocks.0.mlp.linear1.weight"].shape[0],
        "qkv_bias": "blocks.0.attn.qkv.bias" in encoder,
        "norm_eps": 1e-5,
    }
    origin = (
        f"read MONAI ViTAutoEnc weights from {path}: width {width}, depth {depth}, {heads} heads "
        f"({'preset ' + preset if preset else 'width // 64'}; the file does not store it), patch {patch}, "
        f"grid {[side] * dims}, qkv bias {config['qkv_bias']}"
    )
    notes = [origin]
    unused = [k for k in skipped if ".norm_cross_attn." in k]
    for keys, why in (
        ([k for k in skipped if k not in unused], "ViTAutoEnc's reconstruction head"),
        (unused, "unused norms"),
    ):
        notes += [f"skipped {', '.join(keys)}: {why}"] if keys else []
    payload = {"config": config, "state_dict": {"encoder." + k: v for k, v in encoder.items()}, "task": None}
    return payload, notes


def nnssl_plan(config: dict[str, Any], task: dict[str, Any] | None) -> dict[str, Any]:
    """nnssl's adaptation plan (its JSON form) for a medmae ResEnc model ``config`` pretrained on ``task``
    (the checkpoint's task record): ``ResEncL`` for the L preset, else a ``ResidualEncoderUNet`` with its
    arguments; spacing and patch in nnU-Net's ``[z, y, x]`` order."""
    features = config["features"]
    if is_resenc_l(config):
        architecture = {"arch_class_name": "ResEncL", "arch_kwargs": None, "arch_kwargs_requiring_import": None}
    else:
        kwargs = {
            "n_stages": len(features),
            "features_per_stage": list(features),
            "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[3, 3, 3]] * len(features),
            "strides": [[s] * 3 if isinstance(s, int) else list(reversed(s)) for s in config["strides"]],
            "n_blocks_per_stage": list(config["blocks"]),
            "n_conv_per_stage_decoder": [1] * (len(features) - 1),
            "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-5, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.modules.activation.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        }
        architecture = {
            "arch_class_name": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
            "arch_kwargs": kwargs,
            "arch_kwargs_requiring_import": ["conv_op", "norm_op", "nonlin"],
        }
    task = task or {}
    spacing = task.get("spacing")
    rule = (task.get("intensity") or {}).get("rule")
    scheme = "ZScoreNormalization" if rule and "zscore" in rule else f"medmae:{rule}"  # no nnU-Net equivalent
    configuration = {
        "data_identifier": "medmae",
        "preprocessor_name": "medmae",
        "spacing_style": "noresample" if spacing is None else "median",
        "normalization_schemes": [scheme] * config["in_channels"],
        "use_mask_for_norm": [rule == "zscore_nonzero"] * config["in_channels"],
        "resampling_fn_data": "medmae",
        "resampling_fn_data_kwargs": {},
        "resampling_fn_mask": "medmae",
        "resampling_fn_mask_kwargs": {},
        "spacing": None if spacing is None else [float(s) for s in reversed(spacing)],
        "patch_size": list(reversed(config["img_size"])),
    }
    pretrain_plan = {
        "dataset_name": task.get("name", "unknown"),
        "plans_name": "medmaePlans",
        "original_median_spacing_after_transp": configuration["spacing"],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {"medmae": configuration},
        "experiment_planner_used": "medmae",
    }
    return {
        "architecture_plans": architecture,
        "pretrain_plan": pretrain_plan,
        "pretrain_num_input_channels": config["in_channels"],
        "recommended_downstream_patchsize": configuration["patch_size"],
        "key_to_encoder": "encoder.stages",
        "key_to_stem": "encoder.stem",
        "keys_to_in_proj": ["encoder.stem.convs.0.conv", "encoder.stem.convs.0.all_modules.0"],
        "key_to_lpe": None,
    }


def export_nnssl(payload: dict[str, Any], source: str | Path, output_dir: str | Path) -> list[Path]:
    """Write a medmae ResEnc checkpoint (``payload``, read from ``source``: its MAE, or a fine-tuned ResEnc
    U-Net) as nnssl's ``checkpoint_final.pth`` and ``adaptation_plan.json`` in ``output_dir``.

    ``network_weights`` is nnU-Net's whole ``ResidualEncoderUNet`` (``encoder.*``, ``decoder.*`` with the
    decoder's listing of the encoder; the MAE's mask tokens left out) with axes reversed to nnU-Net's
    order, so ``nnUNetv2_train -pretrained_weights`` loads it into a network of the same plan, and nnssl's
    fine-tuning reads its stem and encoder. Returns the two paths."""
    from medmae.models.registry import family_of_name

    config = payload["config"]
    family = family_of_name(config.get("name"))
    if family is None or family.name != "resenc" or config.get("spatial_dims") != 3:
        raise UserError(
            f"{source}: holds {config.get('name')}; nnssl exports take a 3D ResEnc checkpoint "
            "(pretrain with --set model.arch=resenc)"
        )
    weights = {k: v for k, v in payload["state_dict"].items() if not k.startswith("mask_tokens.")}
    terms = {"licence": None, "citation": None} | (payload.get("terms") or payload.get("pretrained_terms") or {})
    plan = nnssl_plan(config, payload.get("task"))
    checkpoint = {
        "network_weights": reverse_axes(weights),
        "nnssl_adaptation_plan": plan,
        "trainer_name": "medmae",
        "init_args": {"medmae_version": payload.get("medmae_version"), "source": str(source)},
        "medmae_config": config,
        **{key: value for key, value in (("license", terms["licence"]), ("citation", terms["citation"])) if value},
    }
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    target = save_checkpoint(checkpoint, output / "checkpoint_final.pth")
    plan_file = output / "adaptation_plan.json"
    write_text(plan_file, json.dumps(plan | {"trainer_name": "medmae"}, indent=4) + "\n")
    return [target, plan_file]
