"""Run configuration: typed defaults <- ``configs/<stage>/<task>.yaml`` <- ``--config FILE`` <- ``--set key=value``.

Keys are ``section.name`` (``optim.base_lr``, ``data.batch_size``). An unknown key is an error that
lists the close matches; a value of the wrong type is an error naming the key, the value and the source.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from medmae import resource_dir
from medmae.errors import UserError
from medmae.files import write_text

log = logging.getLogger("medmae")

STAGES = ("pretrain", "finetune")
MAX_CROPS = 64  # crops per volume at most (medmae.seeds: a crop's seed is its item's seed x 64 + the crop)
# The choices of a key are its Literal type; the models read theirs from here (``typing.get_args``).
MaskStrategy = Literal["random", "block", "grid"]  # random (MAE), block-wise (BEiT) or grid-wise masks
EncoderMode = Literal["skip", "mask_tokens"]  # the MAE encoder sees the visible patches only, or mask tokens too
Tuning = Literal["full", "linear", "partial"]  # what a classifier's fine-tuning trains
Pool = Literal["avg", "cls"]  # a classifier's pooled token
CompileMode = Literal["default", "reduce-overhead", "max-autotune"]  # torch.compile's modes
# unetr: ViT + UNETR decoder; light: ViT + light decoder; dynunet: MONAI's residual DynUNet; resenc: nnU-Net's
# residual-encoder U-Net; unet: MONAI U-Net (medmae.models.families)
Arch = Literal["unetr", "light", "dynunet", "resenc", "unet"]


@dataclass
class ModelConfig:
    size: Literal["base", "mini", "tiny", "m", "l"] = "base"  # ViT, DynUNet: base, mini, tiny; ResEnc: l, m, tiny
    arch: Arch = "unetr"  # backbone; unetr and light pretrain the ViT MAE, dynunet and resenc a sparse conv MAE
    patch_size: int | list[int] | None = None  # ViT patch (one or per axis); None: 16, or the pretrained encoder's
    img_size: list[int] | None = None  # input size; None: the task's ROI
    mask_ratio: float = 0.75
    norm_pix_loss: bool = True  # reconstruction target: per-patch normalised pixels (true) or raw pixels
    mask_strategy: MaskStrategy = "random"
    encoder_mode: EncoderMode = "skip"
    decoder_width: int | None = None  # None: the registry preset of the size
    decoder_depth: int | None = None
    drop_path: float = 0.0
    feature_size: int = 16  # UNETR decoder channels
    pool: Pool = "avg"
    tuning: Tuning = "full"  # linear: a probe (frozen encoder, BatchNorm + linear head); partial: the last blocks
    tuning_blocks: int = 1  # partial: the last N encoder blocks train (with the final norm and the head)


@dataclass
class DataConfig:
    batch_size: int = 2  # volumes (3D) or images (2D) per step, over all processes together
    crops_per_volume: int = 4  # 3D: ROI crops drawn from each loaded volume
    num_workers: int = 2
    store: bool | str = "auto"  # 3D: the preprocessed store's root folder, auto (medmae.data.store) or off (false)
    sampler: Literal["cached", "monai"] = "cached"  # 3D pretraining crops: medmae.data.crops or MONAI's chain
    crops_from: Literal["auto", "device", "store"] = "auto"  # cached sampler: volumes on the device, or the store
    cache_dtype: Literal["float32", "bfloat16"] = "float32"  # cached sampler on the device: how volumes are kept
    flips: bool = True  # cached sampler: flip each pretraining crop along each axis with probability 1/2
    skip_bad_cases: bool = False
    label_fraction: float = 1.0  # fine-tuning: share of the labelled training cases used
    label_seed: int = 0


@dataclass
class OptimConfig:
    base_lr: float = 1.5e-4  # learning rate = base_lr x effective batch / 256
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    layer_decay: float = 1.0  # fine-tuning: block k of L gets layer_decay ** (L + 1 - k) of the rate
    warmup_epochs: float = 40.0
    encoder_warmup_epochs: float = 0.0  # fine-tuning: the encoder's rate ramps from 0 over these epochs (nnssl)
    accumulate: int = 1  # gradient accumulation steps
    clip_grad: float | None = None  # max gradient norm; None: no clipping


@dataclass
class TrainConfig:
    epochs: int = 800
    steps_per_epoch: int | None = None  # None: one pass over the training cases
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # auto: bf16 on GPU, fp32 on CPU; fp16 scales
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = None  # CPU: torch's intra-op threads; None: OMP_NUM_THREADS, else from free cores and load
    dist_timeout_min: float = 60.0  # torchrun: minutes a process waits for the others before its group gives up
    seed: int = 0
    checkpoint_every: int = 1  # epochs
    figure_every: int = 20  # pretraining: reconstruction figure every N epochs (and at the end)
    val_every: int = 10  # fine-tuning: validation every N epochs (and at the end)
    patience: int | None = None  # fine-tuning: stop after this many validations without a better score (None: never)
    log_every: int = 20  # steps between progress-bar loss updates
    compile: bool = False  # torch.compile the transformer blocks and the MAE loss (a model without blocks: whole)
    compile_mode: CompileMode = "default"  # reduce-overhead: CUDA graphs for small host-bound steps
    activation_checkpointing: bool = False  # recompute each transformer block in the backward pass
    channels_last: bool = False  # fine-tuning: channels-last memory layout for UNETR's convolutions


@dataclass
class InferConfig:
    overlap: float = 0.5  # sliding-window overlap
    blend: Literal["gaussian", "constant"] = "gaussian"
    sw_batch_size: int = 8  # windows per forward pass


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    infer: InferConfig = field(default_factory=InferConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)


def known_keys() -> dict[str, Any]:
    """``section.name`` -> type hint, for every configurable key."""
    keys = {}
    for section in dataclasses.fields(Config):
        hints = typing.get_type_hints(section.default_factory)
        keys.update({f"{section.name}.{name}": hint for name, hint in hints.items()})
    return keys


def _close_matches(key: str, keys: list[str]) -> list[str]:
    leaf = key.rsplit(".", 1)[-1]
    same_leaf = [k for k in keys if k.rsplit(".", 1)[-1] == leaf]
    return (
        same_leaf
        or difflib.get_close_matches(key, keys, n=3, cutoff=0.5)
        or difflib.get_close_matches(leaf, [k.rsplit(".", 1)[-1] for k in keys], n=3, cutoff=0.5)
    )


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))


def _coerce(key: str, value: Any, hint: Any, source: str) -> Any:
    """``value`` as ``hint`` (int accepted for float, None for optional keys, the first member of a union
    that fits), else a UserError."""
    args = typing.get_args(hint)
    members = [a for a in args if a is not type(None)]
    if value is None and type(None) in args:
        return None
    if typing.get_origin(hint) is Literal:
        base = type(args[0])
    elif args and typing.get_origin(hint) is not list:
        for member in members[:-1]:
            try:
                return _coerce(key, value, member, source)
            except UserError:
                pass
        base = members[-1]
    else:
        base = hint
    if typing.get_origin(base) is list:
        item = typing.get_args(base)[0]
        if isinstance(value, list):
            return [_coerce(key, v, item, source) for v in value]
    elif base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif isinstance(value, base) and not (base is int and isinstance(value, bool)):
        return value
    names = (
        [_type_name(m) for m in members] if members and typing.get_origin(hint) is not Literal else [_type_name(base)]
    )
    expected = " or ".join(names) + (" or null" if type(None) in args else "")
    raise UserError(f"{source}: {key} must be {expected}, not {value!r}")


RETIRED = {"data.cache_dir": "the preprocessed per-case store (data.store) replaced the padded volume cache"}


def apply(cfg: Config, values: dict[str, Any], source: str) -> None:
    """Set dotted ``values`` on ``cfg``; unknown keys and wrong types raise a UserError naming ``source``;
    a retired key (:data:`RETIRED`, still in older runs' configs) is left out, with a note when it is set."""
    keys = known_keys()
    for key, value in values.items():
        if key in RETIRED:
            if value is not None:
                log.warning("%s: %s=%s is no longer read: %s", source, key, value, RETIRED[key])
            continue
        if key not in keys:
            matches = _close_matches(key, list(keys))
            listed = "; `medmae pretrain --task T --print-config` lists the keys"
            hint = f"; did you mean {', '.join(matches)}?" if matches else listed
            raise UserError(f"{source}: unknown config key {key!r}{hint}")
        section, name = key.split(".")
        setattr(getattr(cfg, section), name, _coerce(key, value, keys[key], source))


def flatten(mapping: Any, source: str) -> dict[str, Any]:
    """``{section: {name: value}}`` -> ``{"section.name": value}``."""
    if mapping is None:
        return {}
    if not isinstance(mapping, dict) or not all(isinstance(v, dict) for v in mapping.values()):
        raise UserError(
            f"{source}: a config file maps sections ({', '.join(f.name for f in dataclasses.fields(Config))}) "
            "to their keys, e.g. 'optim: {base_lr: 1.0e-3}'"
        )
    return {f"{section}.{name}": value for section, values in mapping.items() for name, value in values.items()}


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path}: no such config file")
    try:
        return flatten(yaml.safe_load(path.read_text()), str(path))
    except yaml.YAMLError as error:
        raise UserError(f"{path}: not valid YAML ({error})") from error


def parse_override(text: str) -> tuple[str, Any]:
    """``"optim.base_lr=1e-3"`` -> ``("optim.base_lr", 0.001)``; the value is read as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {text!r}: expected KEY=VALUE, e.g. --set optim.base_lr=1.0e-3")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as error:
        raise UserError(f"--set {text!r}: the value is not valid YAML ({error})") from error
    if isinstance(parsed, str) and _looks_numeric(parsed):
        parsed = float(parsed)  # YAML 1.1 reads 1e-3 (no dot) as text
    return key.strip(), parsed


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def stage_file(stage: str, task_name: str) -> Path:
    """The shipped recipe for ``task_name`` and ``stage``, or the stage's ``default.yaml``."""
    folder = resource_dir("configs") / stage
    path = folder / f"{task_name}.yaml"
    return path if path.is_file() else folder / "default.yaml"


def config_file(name: str | Path) -> Path:
    """A ``--config`` file: ``name`` itself when it is a file (or an absolute path); else, as task names
    are, the copy shipped with medmae, so that ``configs/test/tiny.yaml`` and ``test/tiny.yaml`` both find
    ``<configs>/test/tiny.yaml`` from any folder. Raises UserError naming both places it looked."""
    path = Path(name)
    if path.is_file() or path.is_absolute():
        return path
    parts = path.parts[1:] if path.parts[:1] == ("configs",) else path.parts
    shipped = resource_dir("configs").joinpath(*parts)
    if shipped.is_file():
        return shipped
    raise UserError(f"{name}: no such config file, neither in {Path.cwd()} nor among medmae's configs ({shipped})")


ConfigFiles = str | Path | list[str | Path] | None


def config_layers(
    stage: str, task_name: str, config_files: ConfigFiles, overrides: list[str]
) -> list[tuple[str, dict[str, Any]]]:
    """(source, values) in the order they apply: the stage's recipe for the task, each config file in the
    order given (found by :func:`config_file`), then the ``--set`` overrides."""
    if stage not in STAGES:
        raise ValueError(f"stage {stage!r}: choose one of {STAGES}")
    files = [] if config_files is None else [config_files] if isinstance(config_files, (str, Path)) else config_files
    recipe = stage_file(stage, task_name)
    layers = [(str(recipe), read_yaml(recipe)), *[(str(f), read_yaml(f)) for f in map(config_file, files)]]
    return [*layers, ("--set", dict(parse_override(text) for text in overrides))]


def resolve_config(
    stage: str, task_name: str, config_files: ConfigFiles = None, overrides: list[str] = ()
) -> tuple[Config, dict[str, str]]:
    """The config (typed defaults, then the stage's recipe for the task, then each of ``config_files`` in
    order, then ``overrides``) and, per key (``section.key``), where its value comes from: ``default``, a
    recipe, a file or ``--set``."""
    cfg = Config()
    sources = dict.fromkeys(known_keys(), "default")
    for source, values in config_layers(stage, task_name, config_files, list(overrides)):
        apply(cfg, values, source)
        sources |= dict.fromkeys(values, source)
    validate(cfg)
    return cfg, sources


def load_config(stage: str, task_name: str, config_files: ConfigFiles = None, overrides: list[str] = ()) -> Config:
    """The resolved config of :func:`resolve_config`."""
    return resolve_config(stage, task_name, config_files, overrides)[0]


def validate(cfg: Config) -> None:
    """Choices (every key typed ``Literal``) and the ranges that types alone do not say; what each backbone
    family allows is checked by the models (:func:`medmae.models.registry.check_model_config`)."""
    problems = [problem for ok, problem in _ranges(cfg) if not ok]
    for key, hint in known_keys().items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if typing.get_origin(hint) is Literal and value not in typing.get_args(hint):
            problems.append(f"{key} must be one of {', '.join(typing.get_args(hint))}")
    if problems:
        raise UserError("invalid config: " + "; ".join(problems))


def _ranges(cfg: Config) -> list[tuple[bool, str]]:
    """(holds, what it says) for every range check."""
    model, data, optim, train, infer = cfg.model, cfg.data, cfg.optim, cfg.train, cfg.infer
    every = (train.checkpoint_every, train.figure_every, train.val_every, train.log_every)
    return [
        (0 < model.mask_ratio < 1, "model.mask_ratio must lie in (0, 1): with nothing hidden, nothing is learnt"),
        (0 <= model.drop_path < 1, "model.drop_path must lie in [0, 1)"),
        (model.tuning_blocks >= 0, "model.tuning_blocks must be >= 0"),
        (model.patch_size is None or min(_as_list(model.patch_size) or [0]) >= 1, "model.patch_size must be > 0"),
        (
            data.batch_size >= 1 and 1 <= data.crops_per_volume <= MAX_CROPS,
            f"data.batch_size must be >= 1 and data.crops_per_volume in [1, {MAX_CROPS}]",
        ),
        (data.num_workers >= 0, "data.num_workers must be >= 0"),
        (0 < data.label_fraction <= 1, "data.label_fraction must lie in (0, 1]"),
        (optim.base_lr > 0 and optim.min_lr >= 0, "optim.base_lr must be > 0 and optim.min_lr >= 0"),
        (len(optim.betas) == 2 and all(0 <= b < 1 for b in optim.betas), "optim.betas must be two numbers in [0, 1)"),
        (0 < optim.layer_decay <= 1, "optim.layer_decay must lie in (0, 1]"),
        (optim.warmup_epochs >= 0 and optim.accumulate >= 1, "optim.warmup_epochs must be >= 0, optim.accumulate >= 1"),
        (optim.clip_grad is None or optim.clip_grad > 0, "optim.clip_grad must be > 0 or null"),
        (train.epochs >= 1, "train.epochs must be >= 1"),
        (optim.warmup_epochs < train.epochs, "optim.warmup_epochs must be fewer than train.epochs"),
        (0 <= optim.encoder_warmup_epochs < train.epochs, "optim.encoder_warmup_epochs must lie in [0, train.epochs)"),
        (train.steps_per_epoch is None or train.steps_per_epoch >= 1, "train.steps_per_epoch must be >= 1 or null"),
        (train.patience is None or train.patience >= 1, "train.patience must be >= 1 or null"),
        (train.dist_timeout_min > 0, "train.dist_timeout_min must be > 0"),
        (train.threads is None or train.threads >= 1, "train.threads must be >= 1 or null"),
        (min(every) >= 1, "train.checkpoint_every, figure_every, val_every and log_every must be >= 1"),
        (0 <= infer.overlap < 1, "infer.overlap must lie in [0, 1)"),
        (infer.sw_batch_size >= 1, "infer.sw_batch_size must be >= 1"),
        (
            data.cache_dtype == "float32" or (data.sampler == "cached" and data.crops_from != "store"),
            "data.cache_dtype=bfloat16 needs the cached sampler with volumes on the device (crops_from auto, device)",
        ),
        (
            train.compile_mode != "reduce-overhead" or (optim.accumulate == 1 and not train.activation_checkpointing),
            "train.compile_mode=reduce-overhead (CUDA graphs) needs optim.accumulate=1 and no activation checkpointing",
        ),
    ]


def _as_list(value: int | list[int]) -> list[int]:
    return [value] if isinstance(value, int) else list(value)


def from_dict(values: dict[str, dict[str, Any]], source: str) -> Config:
    """A Config from a resolved ``to_dict()`` (as stored in checkpoints and ``config.yaml``)."""
    cfg = Config()
    apply(cfg, flatten(values, source), source)
    return cfg


def save_config(cfg: Config, path: Path) -> Path:
    return write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
