"""Seconds per pretraining and per fine-tuning step of each segmentation backbone. Prints one JSON line each.

    python benchmarks/backbones.py --device cpu           # 2 CPU cores: mini models, MSD hippocampus ROI 48 x 64 x 48
    python benchmarks/backbones.py                        # GPU: base models, BTCV ROI 96^3, bf16 autocast

A step is one AdamW step on a fixed batch (``--batch``, 2 by default) of generated volumes: the MAE loss of
the backbone's MAE (75 % hidden) for pretraining, DiceCE on ``--classes`` classes for fine-tuning. Backbones
(``--backbones``, default all): ``unetr_p16`` (UNETR, MONAI's at patch 16), ``unetr_p8``, ``light_p8``,
``light_p4`` (ViT with the light decoder), ``dynunet`` (MONAI's residual DynUNet, sparse conv MAE),
``resenc_l`` (nnU-Net's ResEnc L at every size, its ROI rounded up to its total stride, 32) and ``unet``
(MONAI's U-Net, no pretraining); an MAE that two backbones share is timed once. Each line gives
the median and quartiles of the step times and the parameter count; ``--output`` also writes the lines to
a JSON-lines file. The committed CPU run is in docs/results/backbones/ (``steps_cpu.jsonl``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from monai.losses import DiceCELoss

from harness import device_name, free, quartiles, step_times, train_step, write_lines
from medmae.models import create_model

BACKBONES = {  # name -> (pretraining model, fine-tuning model); {size} filled in
    "unetr_p16": ("mae_vit_{size}_patch16_3d", "unetr_vit_{size}_patch16_3d"),
    "unetr_p8": ("mae_vit_{size}_patch8_3d", "unetr_vit_{size}_patch8_3d"),
    "light_p8": ("mae_vit_{size}_patch8_3d", "light_vit_{size}_patch8_3d"),
    "light_p4": ("mae_vit_{size}_patch4_3d", "light_vit_{size}_patch4_3d"),
    "dynunet": ("mae_dynunet_{size}_3d", "dynunet_{size}_3d"),
    "resenc_l": ("mae_resenc_l_3d", "resenc_l_3d"),  # one size: nnU-Net's network
    "unet": (None, "unet_3d"),
}
ROI = {"cpu": (48, 64, 48), "cuda": (96, 96, 96)}  # MSD hippocampus, BTCV
UNETR_FEATURES = 16  # the recipes' feature_size
TOTAL_STRIDE = {"resenc_l": 32}  # backbones whose inputs must be multiples of more than 16


def step_record(stage: str, backbone: str, name: str, model: torch.nn.Module, times: list[float], args) -> dict:
    """One JSON line: the step-time median and quartiles in seconds, the model and the setting."""
    q1, median, q3 = quartiles(times)
    return {
        "case": "backbone_step",
        "stage": stage,
        "backbone": backbone,
        "model": name,
        "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "batch": args.batch,
        "roi": list(args.roi),
        "seconds_per_step": round(median, 4),
        "seconds_q1_q3": [round(q1, 4), round(q3, 4)],
        "steps_timed": len(times),
        "device": device_name(args.device),
    }


def pretraining_step(name: str, args) -> tuple[torch.nn.Module, list[float]]:
    """Step times of the MAE ``name`` on a fixed batch ``[batch, 1, *roi]``."""
    model = create_model(name, img_size=args.roi, mask_ratio=0.75).to(args.device)
    images = torch.randn(args.batch, 1, *args.roi, device=args.device)
    step = train_step(model, lambda: model(images)[0], "auto", args.device)
    return model, step_times(step, args.device, args.seconds)


def finetuning_step(name: str, args) -> tuple[torch.nn.Module, list[float]]:
    """Step times of the segmentation model ``name`` with DiceCE on a fixed batch and random labels."""
    extra = {"feature_size": UNETR_FEATURES} if name.startswith("unetr_") else {}
    model = create_model(name, img_size=args.roi, in_channels=1, out_channels=args.classes, **extra).to(args.device)
    images = torch.randn(args.batch, 1, *args.roi, device=args.device)
    labels = torch.randint(args.classes, (args.batch, 1, *args.roi), device=args.device)
    criterion = DiceCELoss(to_onehot_y=True, softmax=True)
    step = train_step(model, lambda: criterion(model(images).float(), labels), "auto", args.device)
    return model, step_times(step, args.device, args.seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", default=None, help="model size (default: mini on CPU, base on GPU)")
    parser.add_argument("--backbones", default=",".join(BACKBONES), help=f"comma-separated subset of {list(BACKBONES)}")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--classes", type=int, default=3, help="segmentation classes with background (hippocampus: 3)")
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per measurement (at least 3 steps)")
    parser.add_argument("--output", type=Path, default=None, help="also write every line to this JSON-lines file")
    args = parser.parse_args()
    args.device = torch.device(args.device)
    args.roi = ROI[args.device.type]
    size = args.size or ("mini" if args.device.type == "cpu" else "base")
    backbones = args.backbones.split(",")
    for backbone in set(backbones) - set(BACKBONES):
        parser.error(f"--backbones: unknown {backbone!r}; choose from {', '.join(BACKBONES)}")
    lines, measured = [], {}  # measured: model name -> its line (an MAE two backbones share is timed once)
    for backbone in backbones:
        for stage, template, measure in zip(
            ("pretrain", "finetune"), BACKBONES[backbone], (pretraining_step, finetuning_step)
        ):
            if template is None:
                continue
            name = template.format(size=size)
            if name not in measured:
                stride = TOTAL_STRIDE.get(backbone, 1)
                fitted = argparse.Namespace(**vars(args) | {"roi": tuple(-(-s // stride) * stride for s in args.roi)})
                model, times = measure(name, fitted)
                measured[name] = step_record(stage, backbone, name, model, times, fitted)
                del model
                free(args.device)
            lines.append(dict(measured[name], backbone=backbone))
            print(json.dumps(lines[-1]), flush=True)
    if args.output:
        write_lines(args.output, lines)


if __name__ == "__main__":
    main()
