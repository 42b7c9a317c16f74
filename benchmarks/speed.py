"""medmae against MONAI's own MAE, UNETR and data pipelines, in one process on one device. Prints one
JSON line per measurement, then one line per ratio and a summary against the speed targets.

    python benchmarks/speed.py                          # GPU: ViT-B/16 at 96^3, bf16, about 6 minutes
    python benchmarks/speed.py --device cpu --tiny      # 2 CPU cores: tiny models, MSD hippocampus, < 5 minutes

Cases (``--cases``, default all):

- ``pretrain``: 3D MAE pretraining end to end from cached volumes, data path included: medmae's batched
  crops on the device + its MAE, against MONAI's ``MaskedAutoEncoderViT`` fed by MONAI's label-free chain
  (CacheDataset, RandSpatialCropSamplesd x4, flips, loader workers) and by the medical paper's label-based
  chain (RandCropByPosNegLabeld x4 instead).
- ``model``: the MAE training step alone on a fixed batch, with FLOPs counted by
  ``torch.utils.flop_counter`` and the share of this device's measured matmul peak.
- ``unetr``: the UNETR training step (DiceCE, AdamW): medmae's, also channels-last (and compiled on GPU),
  against MONAI's ``UNETR``.
- ``inference``: sliding-window segmentation of one volume (Gaussian, overlap 0.5) to probabilities on
  the CPU, as ``medmae evaluate`` does, against MONAI's ``sliding_window_inference`` with its UNETR.
- ``pretrain2d``: 2D MAE pretraining at 224^2 (ChestX-ray14 sizes; generated images, random 224^2 crops
  of 256^2) from images cached on the device, against MONAI's 2D ``MaskedAutoEncoderViT`` on the same batches.

Both sides use the same sizes, batch and optimiser (AdamW). Precision: fp32 everywhere on CPU; on GPU
bf16 autocast for medmae and for MONAI's UNETR, fp32 with TF32 for MONAI's MAE, which fails under bf16
autocast ("Index put requires the source and destination dtypes match"). The anchors run eager; each
medmae variant (compiled ones included) gets its own ratio. Peak memory is the CUDA allocator's peak per
variant on GPU; on CPU it is the whole process's resident peak so far (every variant stays loaded
there, loader workers not counted), so it is no per-variant figure. The committed results (``--output`` and
``--figure``) are in docs/results/speed/ (``speed_gpu.*``, ``speed_tiny_cpu.*``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from lean_mae import LeanMAE
from monai.data import CacheDataset, DataLoader, list_data_collate
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.networks.nets import UNETR, MaskedAutoEncoderViT
from monai.transforms import Compose, RandCropByPosNegLabeld, RandFlipd, RandSpatialCropSamplesd

from harness import (
    HIPPOCAMPUS,
    PeakMemory,
    device_name,
    free,
    grouped,
    ratio_chart,
    step_flops,
    step_times,
    task_volumes,
    train_step,
    write_lines,
)
from medmae.config import InferConfig
from medmae.data.crops import CropSampler
from medmae.devices import autocast
from medmae.inference.segment import segment, to_host, to_label_map
from medmae.models import create_model
from medmae.models.compilation import RECOMPILE_LIMIT, compile_regions
from medmae.models.families import DECODERS, ENCODERS
from medmae.models.patchify import patchify
from medmae.seeds import seeded_noise
from medmae.tasks import load_task
from medmae.training.session import with_roi

CASES = ("pretrain", "btcv", "model", "unetr", "inference", "pretrain2d")
CROPS_PER_VOLUME = 4
FLOP_KEYS = ("gflop_per_crop", "tflops", "matmul_peak_tflops", "share_of_matmul_peak")
TARGETS = {  # from the second speed issue (20); GPU targets need an H100 or H200
    "gpu": {
        "pretrain medmae crops/s": 6000,
        "model share of matmul peak": 0.40,
        "btcv medmae crops/s": 1200,
        "pretrain2d medmae images/s": 5000,
        "unetr medmae over monai": 1.5,
        "unetr medmae over monai_cudnn_benchmark": 1.1,
        "inference labels to host seconds (at most)": 0.40,
        "inference kept on device seconds (at most)": 0.25,
    },
    "cpu": {"pretrain medmae over monai_label_free": 3.0},
}


@dataclass
class Settings:
    """Sizes of one benchmark mode."""

    size: str  # registry size: base (ViT-B/16) or tiny
    roi: tuple[int, ...]
    batch: int  # 3D crops per pretraining step
    btcv_batch: int  # crops per step of the BTCV recipe
    unetr_batch: int
    classes: int
    volume: tuple[int, ...]  # inference volume
    sw_batch: int  # medmae's windows per forward pass
    roi2d: tuple[int, int]
    image2d: tuple[int, int]  # cached 2D image size (crops of roi2d are drawn from it)
    batch2d: int
    workers: int
    seconds: float  # timed seconds per variant
    rounds: int  # alternating windows per variant (CPU) or 1 (GPU: one variant at a time)
    compile: bool


GPU = Settings(
    "base",
    (96, 96, 96),
    192,
    24,
    4,
    14,
    (320, 320, 128),
    8,
    (224, 224),
    (256, 256),
    512,
    min(12, os.cpu_count() or 1),
    8.0,
    1,
    True,
)
TINY = Settings("tiny", (48, 48, 32), 32, 8, 2, 3, (96, 96, 64), 4, (48, 48), (64, 64), 64, 2, 7.0, 3, False)


@dataclass
class Variant:
    """One implementation of a case: ``build()`` returns its step, run only when measured."""

    impl: str
    build: Callable[[], Callable[[], object]]
    extra: dict = field(default_factory=dict)


def compare(
    case: str, variants: list[Variant], items_per_step: int, unit: str, s: Settings, device: torch.device, **common
) -> list[dict]:
    """Rate of each variant, printed as it is measured.

    On CPU the variants take turns in ``s.rounds`` windows (a shared machine's drift then hits all of
    them alike); on GPU each is built, timed for ``s.seconds`` and freed before the next, so the CUDA peak
    memory is its own.
    """
    steps: dict[str, Callable[[], object]] = {}
    totals = {v.impl: {"steps": 0, "seconds": 0.0, "peak": 0.0, "windows": []} for v in variants}
    for round_ in range(s.rounds):
        for variant in variants:
            with PeakMemory(device) as memory:
                if variant.impl not in steps:
                    steps[variant.impl] = variant.build()
                step = steps[variant.impl]
                times = step_times(step, device, s.seconds / s.rounds, warmup=2 if round_ == 0 else 0)
            total = totals[variant.impl]
            total["steps"] += len(times)
            total["seconds"] += sum(times)
            total["peak"] = max(total["peak"], memory.peak)
            total["windows"].append(len(times) * items_per_step / sum(times))
            if s.rounds == 1:
                del steps[variant.impl], step
                free(device)
    records = []
    for variant in variants:
        total = totals[variant.impl]
        records.append(
            {
                "case": case,
                "impl": variant.impl,
                "rate": round(total["steps"] * items_per_step / total["seconds"], 2),
                "unit": unit,
                "seconds_per_step": round(total["seconds"] / total["steps"], 5),
                "steps": total["steps"],
                "window_rates": [round(r, 2) for r in total["windows"]],  # median and spread over windows
                "rate_median": round(statistics.median(total["windows"]), 2),
                "peak_memory_mb": round(total["peak"]),
                **common,
                **variant.extra,
            }
        )
        print(json.dumps(records[-1]), flush=True)
    return records


# ---------------------------------------------------------------------------------------------- models


def compiled(model: torch.nn.Module, mode: str = "default") -> torch.nn.Module:
    """``model`` as ``train.compile`` trains it: regions compiled in place (a fresh dynamo cache)."""
    torch._dynamo.reset()
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    return compile_regions(model, mode)


def medmae_mae(s: Settings, dims: int, img_size: tuple[int, ...], mask_ratio: float = 0.75) -> torch.nn.Module:
    return create_model(f"mae_vit_{s.size}_patch16_{dims}d", img_size=img_size, mask_ratio=mask_ratio)


def monai_mae(s: Settings, dims: int, img_size: tuple[int, ...]) -> torch.nn.Module:
    """MONAI's MAE with medmae's encoder and decoder sizes (q/k/v bias on, as in medmae)."""
    enc, dec = ENCODERS[s.size], DECODERS[(s.size, dims)]
    return MaskedAutoEncoderViT(
        1,
        img_size,
        16,
        hidden_size=enc["width"],
        mlp_dim=enc["mlp_dim"],
        num_layers=enc["depth"],
        num_heads=enc["num_heads"],
        masking_ratio=0.75,
        decoder_hidden_size=dec["decoder_width"],
        decoder_mlp_dim=4 * dec["decoder_width"],
        decoder_num_layers=dec["decoder_depth"],
        decoder_num_heads=dec["decoder_heads"],
        spatial_dims=dims,
        qkv_bias=True,
    )


def lean_mae(s: Settings, dims: int, img_size: tuple[int, ...]) -> torch.nn.Module:
    """The lean reference MAE (benchmarks/lean_mae.py) with medmae's sizes."""
    return LeanMAE(img_size, 16, ENCODERS[s.size], DECODERS[(s.size, dims)])


def lean_step(s: Settings, device: torch.device, batches: Callable[[], torch.Tensor], compile_it: bool = False):
    """The lean reference's training step (bf16 autocast on GPU, as medmae's), compiled whole if asked."""
    model = lean_mae(s, 3, s.roi).to(device)
    forward = torch.compile(model) if compile_it else model
    return train_step(model, lambda: forward(batches()), "auto", device)


def monai_mae_loss(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The same per-patch normalised MSE over hidden patches as medmae's, on MONAI's outputs."""
    pred, mask = model(images)
    target = patchify(images.float(), (16,) * (images.ndim - 2))
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True, unbiased=False) + 1e-6).sqrt()
    per_patch = (pred.float() - target).pow(2).mean(-1)
    return (per_patch * mask).sum() / mask.sum()


def medmae_pretrain_step(
    model: torch.nn.Module, batches: Callable[[], torch.Tensor], device: torch.device
) -> Callable[[], None]:
    """medmae's training step: a batch from ``batches()``, masks hashed from per-sample seeds on the device,
    the lean loss path (``loss_only``)."""
    tokens = math.prod(model.encoder.grid)
    generator = torch.Generator(device=device).manual_seed(0)

    def loss() -> torch.Tensor:
        images = batches()
        seeds = torch.randint(2**31 - 1, (len(images),), generator=generator, device=device)
        return model(images, noise=seeded_noise(seeds, tokens), loss_only=True)[0]

    return train_step(model, loss, "auto", device)


# ------------------------------------------------------------------------------------------------ data


def synthetic_volumes(count: int, shape: tuple[int, ...], seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """``count`` noise volumes ``[1, *shape]``, each with a labelled ball (2 classes) for the label-based chain."""
    generator = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, n) for n in shape], indexing="ij"))
    volumes = []
    for _ in range(count):
        centre = (torch.rand(3, generator=generator) - 0.5).view(3, 1, 1, 1)
        label = ((grid - centre).pow(2).sum(0) < 0.1).to(torch.uint8)[None]
        volumes.append({"image": torch.randn(1, *shape, generator=generator) + label, "label": label})
    return volumes


def monai_loader(
    volumes: list[dict[str, torch.Tensor]],
    roi: tuple[int, ...],
    volumes_per_step: int,
    workers: int,
    label_based: bool,
    device: torch.device,
) -> Iterator[torch.Tensor]:
    """Endless batches from MONAI's CPU crop chain over cached volumes, as the medical paper's code uses it
    (``label_based``: RandCropByPosNegLabeld) or label-free (RandSpatialCropSamplesd)."""
    keys = ["image", "label"] if label_based else ["image"]
    crop = (
        RandCropByPosNegLabeld(keys, "label", roi, pos=1, neg=1, num_samples=CROPS_PER_VOLUME)
        if label_based
        else RandSpatialCropSamplesd(keys, roi, num_samples=CROPS_PER_VOLUME, random_size=False)
    )
    chain = Compose([crop, *[RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in range(len(roi))]])
    dataset = CacheDataset([{k: v[k].numpy() for k in keys} for v in volumes], chain, progress=False)
    loader = DataLoader(
        dataset,
        batch_size=volumes_per_step,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
        collate_fn=list_data_collate,
    )
    for batch in itertools.chain.from_iterable(itertools.repeat(loader)):
        yield batch["image"].as_tensor().to(device, non_blocking=True)


# ----------------------------------------------------------------------------------------------- cases


def case_pretrain(s: Settings, device: torch.device, volumes: list[dict[str, torch.Tensor]]) -> list[dict]:
    sampler = CropSampler([v["image"] for v in volumes], s.roi, device)
    generator = torch.Generator(device=device).manual_seed(1)

    def crops() -> torch.Tensor:
        ids = torch.randint(len(sampler), (s.batch // CROPS_PER_VOLUME,), generator=generator, device=device)
        seeds = torch.randint(2**31 - 1, (s.batch,), generator=generator, device=device)  # as training: a seed per crop
        return sampler.draw(ids.repeat_interleave(CROPS_PER_VOLUME), seeds=seeds)[0]

    def medmae(compile_it: bool) -> Callable[[], None]:
        model = medmae_mae(s, 3, s.roi).to(device)
        return medmae_pretrain_step(compiled(model) if compile_it else model, crops, device)

    def monai(label_based: bool) -> Callable[[], None]:
        model = monai_mae(s, 3, s.roi).to(device)
        batches = monai_loader(volumes, s.roi, s.batch // CROPS_PER_VOLUME, s.workers, label_based, device)
        return train_step(model, lambda: monai_mae_loss(model, next(batches)), "fp32", device)

    variants = [
        Variant("medmae", lambda: medmae(False)),
        Variant("lean_reference", lambda: lean_step(s, device, crops)),
    ]
    if s.compile:
        variants.append(Variant("medmae_compiled", lambda: medmae(True)))
        variants.append(Variant("lean_reference_compiled", lambda: lean_step(s, device, crops, compile_it=True)))
    variants += [
        Variant("monai_label_free", lambda: monai(False), {"workers": s.workers}),
        Variant("monai_label_based", lambda: monai(True), {"workers": s.workers}),
    ]
    return compare(
        "pretrain", variants, s.batch, "crops/s", s, device, batch=s.batch, roi=list(s.roi), volumes=len(volumes)
    )


def case_btcv(s: Settings, device: torch.device, volumes: list[dict[str, torch.Tensor]]) -> list[dict]:
    """The shipped BTCV recipe's step (configs/pretrain/btcv.yaml: 6 volumes x 4 crops, mask ratio 0.125):
    small and host-bound, eager against compiled and, on a GPU, CUDA graphs (``reduce-overhead``)."""
    sampler = CropSampler([v["image"] for v in volumes], s.roi, device)
    generator = torch.Generator(device=device).manual_seed(3)
    batch = s.btcv_batch

    def crops() -> torch.Tensor:
        ids = torch.randint(len(sampler), (batch // CROPS_PER_VOLUME,), generator=generator, device=device)
        seeds = torch.randint(2**31 - 1, (batch,), generator=generator, device=device)
        return sampler.draw(ids.repeat_interleave(CROPS_PER_VOLUME), seeds=seeds)[0]

    def medmae(mode: str | None) -> Callable[[], None]:
        model = medmae_mae(s, 3, s.roi, mask_ratio=0.125).to(device)
        return medmae_pretrain_step(model if mode is None else compiled(model, mode), crops, device)

    variants = [Variant("medmae", lambda: medmae(None))]
    if s.compile:
        variants.append(Variant("medmae_compiled", lambda: medmae("default")))
        if device.type == "cuda":
            variants.append(Variant("medmae_graphs", lambda: medmae("reduce-overhead")))
    return compare("btcv", variants, batch, "crops/s", s, device, batch=batch, roi=list(s.roi), mask_ratio=0.125)


def matmul_peak_tflops(device: torch.device) -> float:
    """This device's dense matmul rate (bf16 on GPU, fp32 on CPU) in TFLOP/s: the reference for 'peak'."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (1024, torch.float32)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    times = step_times(lambda: a @ b, device, 2.0)
    return 2 * n**3 * len(times) / sum(times) / 1e12


def case_model(s: Settings, device: torch.device) -> list[dict]:
    images = torch.randn(s.batch, 1, *s.roi, device=device)

    def monai() -> Callable[[], None]:
        model = monai_mae(s, 3, s.roi).to(device)
        return train_step(model, lambda: monai_mae_loss(model, images), "fp32", device)

    builders = {
        "medmae": lambda: medmae_pretrain_step(medmae_mae(s, 3, s.roi).to(device), lambda: images, device),
        "monai": monai,
    }
    builders["lean_reference"] = lambda: lean_step(s, device, lambda: images)
    if s.compile:
        builders["medmae_compiled"] = lambda: medmae_pretrain_step(
            compiled(medmae_mae(s, 3, s.roi).to(device)), lambda: images, device
        )
        builders["lean_reference_compiled"] = lambda: lean_step(s, device, lambda: images, compile_it=True)
    flops = {}

    def counted(impl: str) -> Callable[[], None]:
        step = builders[impl]()
        flops[impl] = step_flops(step)
        return step

    records = compare(
        "model",
        [Variant(impl, lambda i=impl: counted(i)) for impl in builders],
        s.batch,
        "crops/s",
        s,
        device,
        batch=s.batch,
    )
    peak = matmul_peak_tflops(device)  # after the steps: a hot matmul test first would leave the clocks lower
    for record in records:
        record["matmul_peak_tflops"] = round(peak, 2)
        record["gflop_per_crop"] = round(flops[record["impl"]] / s.batch / 1e9, 3)
        record["tflops"] = round(flops[record["impl"]] * record["rate"] / s.batch / 1e12, 3)
        record["share_of_matmul_peak"] = round(record["tflops"] / peak, 3)
        print(
            json.dumps({key: record[key] for key in ("case", "impl", *FLOP_KEYS)}),
            flush=True,
        )
    return records


def case_unetr(s: Settings, device: torch.device) -> list[dict]:
    images = torch.randn(s.unetr_batch, 1, *s.roi, device=device)
    labels = torch.randint(s.classes, (s.unetr_batch, 1, *s.roi), device=device)
    criterion = DiceCELoss(to_onehot_y=True, softmax=True)

    def medmae(layout: torch.memory_format, compile_it: bool, benchmark: bool = True) -> Callable[[], None]:
        model = create_model(
            f"unetr_vit_{s.size}_patch16_3d", img_size=s.roi, out_channels=s.classes, feature_size=16
        ).to(device, memory_format=layout)
        x, forward = images.contiguous(memory_format=layout), compiled(model) if compile_it else model
        step = train_step(model, lambda: criterion(forward(x).float(), labels), "auto", device)
        return with_cudnn_benchmark(benchmark, step)

    def monai(benchmark: bool) -> Callable[[], None]:
        model = monai_unetr(s, s.classes).to(device)
        step = train_step(model, lambda: criterion(model(images).float(), labels), "auto", device)
        return with_cudnn_benchmark(benchmark, step)

    variants = [
        Variant("medmae", lambda: medmae(torch.preserve_format, False)),
        Variant("medmae_channels_last", lambda: medmae(torch.channels_last_3d, False)),
    ]
    if s.compile:
        variants.append(Variant("medmae_compiled", lambda: medmae(torch.preserve_format, True)))
    if device.type == "cuda":  # MONAI's default leaves cuDNN benchmarking off; medmae's pick_device turns it on
        variants.append(Variant("medmae_no_cudnn_benchmark", lambda: medmae(torch.preserve_format, False, False)))
        variants.append(Variant("monai_cudnn_benchmark", lambda: monai(True)))
    variants.append(Variant("monai", lambda: monai(False)))
    return compare("unetr", variants, s.unetr_batch, "crops/s", s, device, batch=s.unetr_batch, roi=list(s.roi))


def with_cudnn_benchmark(enabled: bool, step: Callable[[], None]) -> Callable[[], None]:
    """``step`` with cuDNN benchmarking set as given (a global switch, so it is set before every call)."""

    def run() -> None:
        torch.backends.cudnn.benchmark = enabled
        step()

    return run


def monai_unetr(s: Settings, classes: int) -> torch.nn.Module:
    enc = ENCODERS[s.size]
    return UNETR(
        1,
        classes,
        s.roi,
        feature_size=16,
        hidden_size=enc["width"],
        mlp_dim=enc["mlp_dim"],
        num_heads=enc["num_heads"],
        qkv_bias=True,
    )


def case_inference(s: Settings, device: torch.device) -> list[dict]:
    image = torch.randn(1, *s.volume)
    task = with_roi(load_task("btcv"), list(s.roi))
    classes = len(task.class_names)

    def medmae(windows: int, keep: str = "probabilities") -> Callable[[], torch.Tensor]:
        """Probabilities to the host (as evaluate), labels to the host, or probabilities kept on the device."""
        model = (
            create_model(f"unetr_vit_{s.size}_patch16_3d", img_size=s.roi, out_channels=classes, feature_size=16)
            .to(device)
            .eval()
        )
        infer = InferConfig(overlap=0.5, blend="gaussian", sw_batch_size=windows)
        if keep == "probabilities":
            return lambda: segment(model, task, image, infer, "auto", device)
        if keep == "device":
            return lambda: segment(model, task, image, infer, "auto", device, on_device=True)
        return lambda: to_host(to_label_map(task, segment(model, task, image, infer, "auto", device, on_device=True)))

    def monai() -> Callable[[], torch.Tensor]:
        model = monai_unetr(s, classes).to(device).eval()

        @torch.no_grad()
        def run() -> torch.Tensor:
            with autocast("auto", device):
                logits = sliding_window_inference(image[None].to(device), s.roi, 4, model, overlap=0.5, mode="gaussian")
            return torch.softmax(logits.float(), 1)[0].cpu()

        return run

    variants = [
        Variant("medmae", lambda: medmae(s.sw_batch), {"sw_batch_size": s.sw_batch}),
        Variant("medmae_labels_to_host", lambda: medmae(s.sw_batch, "labels"), {"sw_batch_size": s.sw_batch}),
        Variant("medmae_on_device", lambda: medmae(s.sw_batch, "device"), {"sw_batch_size": s.sw_batch}),
    ]
    if s.sw_batch != 4:  # the effect of batching more windows, against medmae at MONAI's 4
        variants.append(Variant("medmae_sw4", lambda: medmae(4), {"sw_batch_size": 4}))
    variants.append(Variant("monai", monai, {"sw_batch_size": 4}))
    records = compare("inference", variants, 1, "volumes/s", s, device, volume=list(s.volume), roi=list(s.roi))
    for record in records:
        record["seconds_per_volume"] = record["seconds_per_step"]
    return records


def case_pretrain2d(s: Settings, device: torch.device) -> list[dict]:
    images = [torch.randn(1, *s.image2d) for _ in range(512)]
    sampler = CropSampler(images, s.roi2d, device)
    generator = torch.Generator(device=device).manual_seed(2)

    def crops() -> torch.Tensor:
        ids = torch.randint(len(sampler), (s.batch2d,), generator=generator, device=device)
        return sampler.draw(ids, seeds=torch.randint(2**31 - 1, (s.batch2d,), generator=generator, device=device))[0]

    def monai() -> Callable[[], None]:
        model = monai_mae(s, 2, s.roi2d).to(device)
        return train_step(model, lambda: monai_mae_loss(model, crops()), "fp32", device)

    variants = [Variant("medmae", lambda: medmae_pretrain_step(medmae_mae(s, 2, s.roi2d).to(device), crops, device))]
    if s.compile:
        variants.append(
            Variant(
                "medmae_compiled",
                lambda: medmae_pretrain_step(compiled(medmae_mae(s, 2, s.roi2d).to(device)), crops, device),
            )
        )
    variants.append(Variant("monai", monai))
    return compare(
        "pretrain2d",
        variants,
        s.batch2d,
        "images/s",
        s,
        device,
        batch=s.batch2d,
        image=list(s.roi2d),
        cached_image=list(s.image2d),
    )


# ----------------------------------------------------------------------------------------------- report


def ratios(records: list[dict]) -> list[dict]:
    """Each medmae variant's rate over each MONAI anchor of the same case (compiled variants included, as
    ``medmae_compiled_over_...``; the anchors run eager)."""
    lines = []
    for case, rows in grouped(records, "case", "impl").items():
        rates = {impl: row["rate"] for impl, row in rows.items()}
        ours = [impl for impl in rates if impl.startswith("medmae")]
        lines += [
            {"case": case, "ratio": f"{impl}_over_{anchor}", "value": round(rates[impl] / rates[anchor], 2)}
            for anchor in rates
            if anchor not in ours
            for impl in ours
        ]
    return lines


def summary(records: list[dict], ratio_lines: list[dict], device: torch.device) -> dict:
    """Each target of the speed issue for this kind of device, with medmae's best variant, its value and
    whether the target holds."""

    def best(case: str, anchor: str | None = None) -> tuple[str | None, float | None]:
        if anchor is None:
            rows = {r["impl"]: r["rate"] for r in records if r["case"] == case and r["impl"].startswith("medmae")}
        else:
            rows = {
                line["ratio"].removesuffix(f"_over_{anchor}"): line["value"]
                for line in ratio_lines
                if line["case"] == case and line["ratio"].endswith(f"_over_{anchor}")
            }
        return max(rows.items(), key=lambda item: item[1]) if rows else (None, None)

    model = {
        r["impl"]: r["share_of_matmul_peak"] for r in records if r["case"] == "model" and r["impl"].startswith("medmae")
    }

    def seconds(impl: str) -> tuple[str | None, float | None]:
        rate = next((r["rate"] for r in records if r["case"] == "inference" and r["impl"] == impl), None)
        return (impl, 1 / rate) if rate else (None, None)

    values = {
        "pretrain medmae crops/s": best("pretrain"),
        "pretrain medmae over monai_label_free": best("pretrain", "monai_label_free"),
        "model share of matmul peak": max(model.items(), key=lambda item: item[1]) if model else (None, None),
        "btcv medmae crops/s": best("btcv"),
        "pretrain2d medmae images/s": best("pretrain2d"),
        "unetr medmae over monai": best("unetr", "monai"),
        "unetr medmae over monai_cudnn_benchmark": best("unetr", "monai_cudnn_benchmark"),
        "inference labels to host seconds (at most)": seconds("medmae_labels_to_host"),
        "inference kept on device seconds (at most)": seconds("medmae_on_device"),
    }
    checks = {}
    for name, target in TARGETS["gpu" if device.type == "cuda" else "cpu"].items():
        variant, value = values[name]
        met = None if value is None else (value <= target if "at most" in name else value >= target)
        checks[name] = {
            "variant": variant,
            "value": None if value is None else round(value, 3),
            "target": target,
            "met": met,
        }
    return {"case": "summary", "checks": checks}


def save_figure(ratio_lines: list[dict], path: Path, title: str) -> None:
    """Horizontal bars: each medmae variant's rate over each MONAI anchor, per case, with the line of parity."""
    labels = [f"{line['case']}: {line['ratio'].replace('_over_', ' / ')}" for line in ratio_lines]
    values = {"medmae / MONAI": [line["value"] for line in ratio_lines]}
    ratio_chart(path, labels, values, title, "medmae's rate / MONAI's rate (1 = parity)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny models and small inputs (CPU; under 5 minutes)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {', '.join(CASES)}")
    parser.add_argument(
        "--data",
        choices=["hippocampus", "synthetic"],
        default=None,
        help="3D volumes: MSD hippocampus (default with --tiny) or generated CT-sized volumes",
    )
    parser.add_argument("--data-root", type=Path, default=HIPPOCAMPUS)
    parser.add_argument("--seconds", type=float, default=None, help="timed seconds per measurement")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    parser.add_argument("--output", type=Path, default=None, help="also write every line to this JSON-lines file")
    parser.add_argument("--figure", type=Path, default=None, help="also draw the ratios as a bar chart (PNG)")
    args = parser.parse_args()
    device = torch.device(args.device)
    s = TINY if args.tiny else GPU
    s = Settings(**{**asdict(s), "seconds": args.seconds or s.seconds, "compile": s.compile and not args.no_compile})
    cases = args.cases.split(",")
    if unknown := set(cases) - set(CASES):
        parser.error(f"unknown cases {sorted(unknown)}; choose from {', '.join(CASES)}")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # MONAI's fp32 anchor as TF32
    torch.manual_seed(0)
    header = {
        "case": "setup",
        "device": device_name(device),
        "torch": torch.__version__,
        "mode": "tiny" if args.tiny else "full",
        **asdict(s),
    }
    print(json.dumps(header), flush=True)
    records = []
    if "pretrain" in cases or "btcv" in cases:
        data = args.data or ("hippocampus" if args.tiny else "synthetic")
        if data == "hippocampus" and not (args.data_root / "dataset.json").is_file():
            parser.error(
                f"{args.data_root}: no dataset.json; give --data-root (MSD Task04_Hippocampus) or --data synthetic"
            )
        volumes = (
            task_volumes(load_task("msd_hippocampus"), args.data_root)
            if data == "hippocampus"
            else synthetic_volumes(48, (160, 160, 128))
        )
        records += case_pretrain(s, device, volumes) if "pretrain" in cases else []
        records += case_btcv(s, device, volumes) if "btcv" in cases else []
    for name, run in (
        ("model", case_model),
        ("unetr", case_unetr),
        ("inference", case_inference),
        ("pretrain2d", case_pretrain2d),
    ):
        if name in cases:
            records += run(s, device)
    ratio_lines = ratios(records)
    lines = [header, *records, *ratio_lines, summary(records, ratio_lines, device)]
    for line in lines[len(records) + 1 :]:
        print(json.dumps(line), flush=True)
    if args.output is not None:
        write_lines(args.output, lines)
    if args.figure is not None and ratio_lines:
        save_figure(ratio_lines, args.figure, f"{header['device']}, {header['mode']} mode, torch {torch.__version__}")


if __name__ == "__main__":
    main()
