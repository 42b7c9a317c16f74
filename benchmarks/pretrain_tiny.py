"""Pretrain a tiny 3D MAE on CPU and measure its held-out reconstruction loss. Prints one JSON line.

    python benchmarks/pretrain_tiny.py                        # generated volumes, no download (about a minute)
    python benchmarks/pretrain_tiny.py --data hippocampus     # 200 real MSD hippocampus MRIs, 300 steps
    python benchmarks/pretrain_tiny.py --data hippocampus --model mae_dynunet_tiny_3d   # another backbone's MAE

The held-out loss is the MAE loss (MSE of the per-patch normalised target over the hidden patches) on
volumes never trained on, with fixed masks, next to two references on the same patches: predicting zero
(the normalised target's mean: 1.0 on any patch that is not constant) and predicting each grid position's
mean training patch. ``--model`` picks the MAE (any registry MAE: ``mae_vit_*_3d`` of any patch size, or
the sparse convolutional ``mae_dynunet_*_3d``); each is compared with its own references, since the target is
per patch of its own size. Writes ``checkpoint.pt``, ``reconstruction.png`` and ``result.json`` into
``--output-dir`` (default ``runs/pretrain_tiny_<data>``).

The hippocampus volumes go through medmae's own msd_hippocampus chain (RAS, 1 mm spacing, clipped to the
0.5-99.5 percentiles, z-scored, padded to its 48 x 64 x 48 ROI). The committed hippocampus run (the second
command) is kept in docs/results/speed/ (``pretrain_tiny_hippocampus.json`` and ``.png``); the runs of every
backbone are in docs/results/backbones/.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from harness import HIPPOCAMPUS, task_volumes
from medmae.checkpoint import model_checkpoint, save_checkpoint
from medmae.evaluation.figures import save_reconstruction_figure
from medmae.models import create_model
from medmae.tasks import load_task

TASK = load_task("msd_hippocampus")
ROI = TASK.roi  # 48 x 64 x 48: multiples of 16 that hold every hippocampus crop
DEFAULT_MODEL = "mae_vit_tiny_patch16_3d"


def synthetic_volumes(count: int, generator: torch.Generator) -> torch.Tensor:
    """``[count, 1, *ROI]``: a noisy bright ellipsoid body holding 2 to 4 smaller ellipsoids of other intensity."""
    axes = torch.meshgrid(*[torch.linspace(-1, 1, s) for s in ROI], indexing="ij")
    grid = torch.stack(axes)  # [3, *ROI]
    volumes = torch.zeros(count, 1, *ROI)
    for i in range(count):
        u = torch.rand(5, 7, generator=generator)  # per ellipsoid: centre (3), radii (3), intensity (1)
        shapes = [(0.1 * (u[0, :3] - 0.5), 0.6 + 0.3 * u[0, 3:6], 1.0)]
        shapes += [(u[k, :3] - 0.5, 0.1 + 0.25 * u[k, 3:6], 2 * u[k, 6].item() - 1) for k in range(1, 3 + i % 3)]
        for centre, radii, value in shapes:
            inside = (((grid - centre.view(3, 1, 1, 1)) / radii.view(3, 1, 1, 1)) ** 2).sum(0) <= 1
            volumes[i, 0][inside] = value
    return volumes + 0.1 * torch.randn(volumes.shape, generator=generator)


def hippocampus_volumes(root: Path) -> torch.Tensor:
    """``[N, 1, *ROI]``: every labelled case in order of id through medmae's msd_hippocampus chain (RAS, 1 mm,
    clipped to the 0.5-99.5 percentiles, z-scored, zero-padded to the ROI)."""
    return torch.stack([item["image"] for item in task_volumes(TASK, root, "inference")])


def random_flips(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each spatial axis of the whole batch with probability 1/2."""
    axes = [2 + a for a in range(3) if torch.rand(1, generator=generator).item() < 0.5]
    return batch.flip(axes) if axes else batch


@torch.no_grad()
def heldout_loss(model, train_volumes: torch.Tensor, volumes: torch.Tensor, seed: int = 1234) -> dict[str, float]:
    """Held-out MAE loss over the hidden patches, with masks fixed by ``seed``, beside two references
    on the same hidden patches: predicting zero (the normalised target's mean; 1.0 on any patch that is
    not constant, 0 on a constant one such as pure padding) and predicting, at each grid position, the
    mean normalised patch of the training volumes (what a model learns from position alone on aligned
    crops). Also the MAE loss over the non-constant hidden patches only.
    """
    model.eval()
    positional_mean = model.patch_target(train_volumes)[0].mean(dim=0)  # [N, L]
    generator = torch.Generator().manual_seed(seed)
    errors, zero_errors, positional_errors = [], [], []
    for batch in volumes.split(8):
        _, pred, mask = model(batch, generator=generator)
        target, _, _ = model.patch_target(batch)
        hidden = mask.bool()
        errors.append((pred.float() - target).pow(2).mean(-1)[hidden])
        zero_errors.append(target.pow(2).mean(-1)[hidden])
        positional_errors.append((positional_mean - target).pow(2).mean(-1)[hidden])
    model.train()
    errors, zero_errors, positional_errors = map(torch.cat, (errors, zero_errors, positional_errors))
    varied = zero_errors > 0.5
    return {
        "heldout_loss": errors.mean().item(),
        "heldout_zero_prediction_loss": zero_errors.mean().item(),
        "heldout_positional_mean_loss": positional_errors.mean().item(),
        "heldout_loss_nonconstant_patches": errors[varied].mean().item(),
        "heldout_hidden_patches": [len(errors), int(varied.sum())],
    }


def train(
    model, train_volumes: torch.Tensor, steps: int, batch_size: int, lr: float, seed: int, flips: bool
) -> list[float]:
    """AdamW (betas 0.9, 0.95), linear warm-up over 5 % of the steps, then cosine decay; returns the losses."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=lr, betas=(0.9, 0.95), weight_decay=0.05
    )
    warmup = max(1, steps // 20)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    losses = []
    for _ in tqdm(range(steps), desc="pretraining", unit="step", disable=None):  # shown on a terminal only
        index = torch.randint(len(train_volumes), (batch_size,), generator=generator)
        batch = random_flips(train_volumes[index], generator) if flips else train_volumes[index]
        loss, _, _ = model(batch, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    return losses


def parse_model_arg(text: str) -> tuple[str, object]:
    """``"decoder_depth=4"`` -> ``("decoder_depth", 4)`` (the value read as YAML)."""
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--model-arg {text!r}: expected KEY=VALUE")
    return key, yaml.safe_load(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["synthetic", "hippocampus"], default="synthetic")
    parser.add_argument("--data-root", type=Path, default=HIPPOCAMPUS)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--mask-ratio", type=float, default=0.75)
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"the registry MAE to pretrain (default {DEFAULT_MODEL})"
    )
    parser.add_argument(
        "--model-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override an argument of the model, e.g. decoder_depth=4 (repeatable)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--flips", action="store_true", help="random flips along each axis while training")
    parser.add_argument("--output-dir", type=Path, default=None)
    args = parser.parse_args()
    output = args.output_dir or Path("runs") / f"pretrain_tiny_{args.data}"
    torch.manual_seed(args.seed)

    if args.data == "hippocampus":
        if not (args.data_root / "dataset.json").is_file():
            parser.error(f"{args.data_root}: no dataset.json; give --data-root, the MSD Task04_Hippocampus folder")
        volumes = hippocampus_volumes(args.data_root)
    else:
        volumes = synthetic_volumes(200, torch.Generator().manual_seed(args.seed))
    is_test = torch.arange(len(volumes)) % 5 == 4  # every 5th volume (by case id for hippocampus): 40 of 200
    train_volumes, test_volumes = volumes[~is_test], volumes[is_test]

    model_args = dict(parse_model_arg(a) for a in args.model_arg)
    if not args.model.startswith("mae_") or not args.model.endswith("_3d"):
        parser.error(f"--model {args.model}: give a 3D MAE, mae_vit_..._3d or mae_dynunet_..._3d")
    model = create_model(args.model, img_size=ROI, mask_ratio=args.mask_ratio, **model_args)
    start = time.perf_counter()
    losses = train(model, train_volumes, args.steps, args.batch_size, args.lr, args.seed, args.flips)
    seconds = time.perf_counter() - start
    heldout = heldout_loss(model, train_volumes, test_volumes)

    output.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model_checkpoint(model, steps=args.steps), output / "checkpoint.pt")
    model.eval()
    with torch.no_grad():
        sample = test_volumes[:4]
        _, pred, mask = model(sample, generator=torch.Generator().manual_seed(0))
    save_reconstruction_figure(
        output / "reconstruction.png",
        sample,
        model.reconstruct(sample, pred, mask),
        title=f"{args.data}: held-out volumes, {args.mask_ratio:.0%} hidden, after {args.steps} steps",
    )
    result = {
        "case": f"pretrain_tiny_{args.data}",
        "model": args.model,
        "roi": list(ROI),
        "train_volumes": len(train_volumes),
        "heldout_volumes": len(test_volumes),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "flips": args.flips,
        "seed": args.seed,
        "model_args": model_args,
        "mask_ratio": args.mask_ratio,
        "train_loss_first10": sum(losses[:10]) / 10,
        "train_loss_last10": sum(losses[-10:]) / 10,
        **heldout,
        "seconds": round(seconds, 1),
        "steps_per_s": round(args.steps / seconds, 2),
        "threads": torch.get_num_threads(),
        "output_dir": str(output),
    }
    (output / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
