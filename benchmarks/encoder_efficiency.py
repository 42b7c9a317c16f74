"""The MAE paper's efficiency ablation: an encoder that skips the hidden patches against one that is fed
mask tokens for them, on the same device. Prints one JSON line per model and mode, one line per model
with the ratios, and writes them (``--output``) and a bar chart (``--figure``).

    python benchmarks/encoder_efficiency.py                      # GPU: ViT-B/16, ViT-L/16, 2D 224^2, 3D 96^3, bf16
    python benchmarks/encoder_efficiency.py --device cpu --tiny  # 2 CPU cores: tiny models, about a minute

Each measurement is one training step (forward, backward, fused AdamW) at mask ratio 0.75 with the
decoder of the model's size. FLOPs per step come from ``torch.utils.flop_counter`` (matrix products and
attention, forward and backward); the time per step is the median over ``--seconds`` of steps after three
untimed ones. The paper (He et al. 2022, table 2 and section 4.1): ViT-L, 8-block decoder, mask 0.75:
3.3x fewer FLOPs and 2.8x faster when the encoder skips the hidden patches. The committed results
(``--output`` and ``--figure``) are in docs/results/speed/ (``encoder_efficiency_gpu.*``,
``encoder_efficiency_cpu_tiny.*``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections.abc import Callable
from pathlib import Path

import torch

from harness import PeakMemory, device_name, free, grouped, ratio_chart, step_flops, step_times, train_step, write_lines
from medmae.models import MaskedAutoencoder
from medmae.models.families import DECODERS, ENCODERS
from medmae.models.masking import ENCODER_MODES

VIT_LARGE = {"width": 1024, "depth": 24, "num_heads": 16, "mlp_dim": 4096}  # the paper's ViT-L, not in medmae
# (name, encoder size, input size, batch): the paper's 2D setting, and medmae's 3D one
GPU_MODELS = [
    ("vit_large_2d", "large", (224, 224), 256),
    ("vit_base_2d", "base", (224, 224), 512),
    ("vit_base_3d", "base", (96, 96, 96), 256),
]
TINY_MODELS = [("vit_tiny_2d", "tiny", (128, 128), 32), ("vit_tiny_3d", "tiny", (96, 96, 96), 2)]


def build(size: str, img_size: tuple[int, ...], mode: str) -> MaskedAutoencoder:
    """The MAE of encoder ``size`` (tiny, base or large) with medmae's decoder of its size (base's, the
    paper's 8 blocks, for large)."""
    dims = len(img_size)
    encoder = VIT_LARGE if size == "large" else ENCODERS[size]
    decoder = DECODERS["tiny" if size == "tiny" else "base", dims]
    return MaskedAutoencoder(
        dims, img_size, **decoder, mask_ratio=0.75, encoder_mode=mode, patch_size=16, in_channels=1, **encoder
    )


def training_step(model: MaskedAutoencoder, batch: int, device: torch.device) -> Callable[[], None]:
    """One step on a fixed random batch ``[batch, 1, *img_size]`` (masks drawn anew each step), bf16 autocast
    on GPU."""
    images = torch.randn(batch, 1, *model.img_size, device=device)
    return train_step(model, lambda: model(images)[0], "auto", device)


def measure(
    name: str, size: str, img_size: tuple[int, ...], batch: int, device: torch.device, seconds: float
) -> list[dict]:
    """One record per encoder mode: FLOPs and seconds per training step (the median over about ``seconds``
    after three untimed steps, as other work on a shared machine delays single steps), peak GPU memory."""
    records = []
    for mode in ENCODER_MODES:
        torch.manual_seed(0)
        model = build(size, img_size, mode).to(device)
        step = training_step(model, batch, device)
        flops = step_flops(step)
        with PeakMemory(device) as memory:
            per_step = statistics.median(step_times(step, device, seconds, warmup=3, at_least=5))
        records.append(
            {
                "model": name,
                "encoder_mode": mode,
                "img_size": list(img_size),
                "batch": batch,
                "tokens": math.prod(model.encoder.grid),
                "encoder_tokens": model.keep if mode == "skip" else math.prod(model.encoder.grid),
                "gflops_per_step": flops / 1e9,
                "seconds_per_step": per_step,
                "peak_memory_gib": memory.peak / 2**10 if device.type == "cuda" else None,
            }
        )
        print(json.dumps(records[-1]), flush=True)
        del model, step
        free(device)
    return records


def ratios(records: list[dict]) -> list[dict]:
    """Per model: how many times more FLOPs and time the mask-token encoder takes than the skipping one."""
    lines = []
    for name, modes in grouped(records, "model", "encoder_mode").items():
        skip, tokens = (modes[mode] for mode in ENCODER_MODES)
        lines.append(
            {
                "model": name,
                "flops_ratio": tokens["gflops_per_step"] / skip["gflops_per_step"],
                "speedup": tokens["seconds_per_step"] / skip["seconds_per_step"],
            }
        )
    return lines


def save_figure(lines: list[dict], path: Path, title: str) -> None:
    """Horizontal bars per model: the FLOPs and the time of the mask-token encoder over the skipping one."""
    series = {
        "FLOPs: mask tokens / skip": [line["flops_ratio"] for line in lines],
        "time: mask tokens / skip": [line["speedup"] for line in lines],
    }
    ratio_chart(path, [line["model"] for line in lines], series, title, "x (higher: skipping saves more)")


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
    name = device_name(device)
    header = {"device": name, "torch": torch.__version__, "mode": "tiny" if args.tiny else "full", "mask_ratio": 0.75}
    print(json.dumps(header), flush=True)
    torch.backends.cuda.matmul.allow_tf32 = True
    records = [r for model in (TINY_MODELS if args.tiny else GPU_MODELS) for r in measure(*model, device, seconds)]
    lines = ratios(records)
    for line in lines:
        print(json.dumps(line), flush=True)
    if args.output:
        write_lines(args.output, [header, *records, *lines])
    if args.figure:
        save_figure(lines, args.figure, f"{name}, {header['mode']} mode, mask ratio 0.75, torch {torch.__version__}")


if __name__ == "__main__":
    main()
