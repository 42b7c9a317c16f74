"""The MAE paper's efficiency ablation: an encoder that skips the hidden patches against one that is fed
mask tokens for them, on the same device. Prints one JSON line per model and mode, one line per model
with the ratios, and writes them (``--output``) and a bar chart (``--figure``).

    python benchmarks/encoder_efficiency.py                      # GPU: ViT-B/16 and ViT-L/16, 2D 224^2 and 3D 96^3, bf16
    python benchmarks/encoder_efficiency.py --device cpu --tiny  # 2 CPU cores: tiny models, about a minute

Each measurement is one training step (forward, backward, fused AdamW) at mask ratio 0.75 with the
decoder of the model's size. FLOPs per step come from ``torch.utils.flop_counter`` (matrix products and
attention, forward and backward); the time per step is the median over ``--seconds`` of steps after three
untimed ones. The paper (He et al. 2022, table 2 and section 4.1): ViT-L, 8-block decoder, mask 0.75:
3.3x fewer FLOPs and 2.8x faster when the encoder skips the hidden patches.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch.utils.flop_counter import FlopCounterMode

from medmae.engine.loop import autocast
from medmae.engine.optim import build_optimizer
from medmae.models import MaskedAutoencoder
from medmae.models.masking import ENCODER_MODES

ENCODERS = {
    "tiny": {"width": 48, "depth": 12, "num_heads": 3, "mlp_dim": 192},
    "base": {"width": 768, "depth": 12, "num_heads": 12, "mlp_dim": 3072},
    "large": {"width": 1024, "depth": 24, "num_heads": 16, "mlp_dim": 4096},
}
DECODERS = {
    2: {"decoder_width": 512, "decoder_depth": 8, "decoder_heads": 16},
    3: {"decoder_width": 384, "decoder_depth": 8, "decoder_heads": 12},
    "tiny": {"decoder_width": 48, "decoder_depth": 2, "decoder_heads": 3},
}
# (name, encoder size, input size, batch): the paper's 2D setting, and medmae's 3D one
GPU_MODELS = [
    ("vit_large_2d", "large", (224, 224), 256),
    ("vit_base_2d", "base", (224, 224), 512),
    ("vit_base_3d", "base", (96, 96, 96), 256),
]
TINY_MODELS = [("vit_tiny_2d", "tiny", (128, 128), 32), ("vit_tiny_3d", "tiny", (96, 96, 96), 2)]


def build(size: str, img_size: tuple[int, ...], mode: str) -> MaskedAutoencoder:
    dims = len(img_size)
    decoder = DECODERS["tiny" if size == "tiny" else dims]
    return MaskedAutoencoder(dims, img_size, 16, 1, **ENCODERS[size], **decoder, mask_ratio=0.75, encoder_mode=mode)


def training_step(model: MaskedAutoencoder, batch: int, device: torch.device) -> Callable[[], None]:
    """One step on a fixed random batch (masks drawn anew each step), bf16 autocast on GPU."""
    images = torch.randn(batch, 1, *model.img_size, device=device)
    optimizer = build_optimizer(model, 1e-4, 0.05, (0.9, 0.95))

    def step() -> None:
        with autocast("auto", device):
            loss = model(images)[0]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def seconds_per_step(step: Callable[[], None], device: torch.device, seconds: float) -> float:
    """The median time of the steps run in about ``seconds``, after three untimed ones (the median, as
    other work on a shared machine delays single steps)."""
    for _ in range(3):
        step()
    times, started = [], time.perf_counter()
    while len(times) < 5 or time.perf_counter() - started < seconds:
        synchronize(device)
        begin = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - begin)
    return statistics.median(times)


def measure(
    name: str, size: str, img_size: tuple[int, ...], batch: int, device: torch.device, seconds: float
) -> list[dict]:
    """One record per encoder mode: FLOPs and seconds per training step, peak GPU memory."""
    records = []
    for mode in ENCODER_MODES:
        torch.manual_seed(0)
        model = build(size, img_size, mode).to(device)
        step = training_step(model, batch, device)
        counter = FlopCounterMode(display=False)
        with counter:
            step()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        per_step = seconds_per_step(step, device, seconds)
        memory = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
        records.append(
            {
                "model": name,
                "encoder_mode": mode,
                "img_size": list(img_size),
                "batch": batch,
                "tokens": math.prod(model.encoder.grid),
                "encoder_tokens": model.keep if mode == "skip" else math.prod(model.encoder.grid),
                "gflops_per_step": counter.get_total_flops() / 1e9,
                "seconds_per_step": per_step,
                "peak_memory_gib": memory,
            }
        )
        print(json.dumps(records[-1]), flush=True)
        del model, step
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return records


def ratios(records: list[dict]) -> list[dict]:
    """Per model: how many times more FLOPs and time the mask-token encoder takes than the skipping one."""
    lines = []
    for name in dict.fromkeys(r["model"] for r in records):
        skip, tokens = ({r["encoder_mode"]: r for r in records if r["model"] == name}[m] for m in ENCODER_MODES)
        lines.append(
            {
                "model": name,
                "flops_ratio": tokens["gflops_per_step"] / skip["gflops_per_step"],
                "speedup": tokens["seconds_per_step"] / skip["seconds_per_step"],
            }
        )
    return lines


def save_figure(lines: list[dict], path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(lines), 3.2))
    x = torch.arange(len(lines)).float()
    ax.bar(x - 0.2, [line["flops_ratio"] for line in lines], 0.4, label="FLOPs: mask tokens / skip")
    ax.bar(x + 0.2, [line["speedup"] for line in lines], 0.4, label="time: mask tokens / skip")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks(x.tolist(), [line["model"] for line in lines], fontsize=8)
    ax.set_ylabel("x (higher: skipping saves more)")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny models and small inputs (CPU, about a minute)")
    parser.add_argument("--seconds", type=float, default=None, help="timed seconds per measurement (5 GPU, 8 tiny)")
    parser.add_argument("--output", type=Path, help="also write every line to this JSON-lines file")
    parser.add_argument("--figure", type=Path, help="also draw the ratios (PNG)")
    args = parser.parse_args()
    device = torch.device(args.device)
    seconds = args.seconds or (8.0 if args.tiny else 5.0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    header = {"device": name, "torch": torch.__version__, "mode": "tiny" if args.tiny else "full", "mask_ratio": 0.75}
    print(json.dumps(header), flush=True)
    torch.backends.cuda.matmul.allow_tf32 = True
    records = [r for model in (TINY_MODELS if args.tiny else GPU_MODELS) for r in measure(*model, device, seconds)]
    lines = ratios(records)
    for line in lines:
        print(json.dumps(line), flush=True)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text("".join(json.dumps(line) + "\n" for line in [header, *records, *lines]))
    if args.figure:
        save_figure(lines, args.figure, f"{name}, {header['mode']} mode, mask ratio 0.75, torch {torch.__version__}")


if __name__ == "__main__":
    main()
