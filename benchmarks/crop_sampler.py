"""Random ROI crops with flips from cached volumes: medmae's batched CropSampler against MONAI's
per-sample chain (RandSpatialCropSamplesd + RandFlipd per axis, list collation). Prints one JSON line
per case.

    python benchmarks/crop_sampler.py                       # 160 MSD hippocampus MRIs, 32^3 crops, CPU
    python benchmarks/crop_sampler.py --device cuda --roi 96 96 96 --task btcv --data-root BTCV

Both sides start from the same volumes, preprocessed once by the task's deterministic chain and kept
in memory; only the random crops and flips are timed. Pretraining uses the sampler with
``--set data.sampler=cached``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from monai.data import list_data_collate
from monai.transforms import Compose, RandFlipd, RandSpatialCropSamplesd

from harness import HIPPOCAMPUS, step_times, task_volumes
from medmae.data.crops import CropSampler
from medmae.tasks import load_task


def crops_per_second(
    draw: Callable[[], torch.Tensor], crops_per_call: int, seconds: float, device: torch.device
) -> float:
    """Crops per second of ``draw()`` (a batch ``[crops_per_call, C, *roi]``) over about ``seconds``, after one
    warm-up call."""
    times = step_times(draw, device, seconds, warmup=1, at_least=1)
    return crops_per_call * len(times) / sum(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="msd_hippocampus")
    parser.add_argument("--data-root", type=Path, default=HIPPOCAMPUS)
    parser.add_argument(
        "--roi",
        type=int,
        nargs="+",
        default=[32, 32, 32],
        help="crop size (default 32^3: the hippocampus volumes are padded to their 48 x 64 x 48 ROI)",
    )
    parser.add_argument("--batch", type=int, default=32, help="crops per batch (volumes x 4 crops each)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    task = load_task(args.task)
    roi = tuple(args.roi)
    started = time.perf_counter()
    items = task_volumes(task, args.data_root, "inference", parts=("train", "validation"))
    volumes = [item["image"] for item in items if all(s >= r for s, r in zip(item["image"].shape[1:], roi))]
    preprocess_s = time.perf_counter() - started
    device = torch.device(args.device)
    per_volume = 4
    monai_chain = Compose(
        [
            RandSpatialCropSamplesd("image", roi_size=roi, num_samples=per_volume, random_size=False),
            *[RandFlipd("image", prob=0.5, spatial_axis=axis) for axis in range(len(roi))],
        ]
    )
    monai_chain.set_random_state(0)
    generator = torch.Generator().manual_seed(0)

    def monai_batch() -> torch.Tensor:
        picks = torch.randint(len(volumes), (args.batch // per_volume,), generator=generator).tolist()
        items = [monai_chain({"image": volumes[k]}) for k in picks]
        return list_data_collate(items)["image"].to(device)

    sampler = CropSampler(volumes, roi, device)
    device_generator = torch.Generator(device=device).manual_seed(0)

    def medmae_batch() -> torch.Tensor:
        ids = torch.randint(len(sampler), (args.batch // per_volume,), generator=device_generator, device=device)
        return sampler.draw(ids.repeat_interleave(per_volume), device_generator)[0]

    common = {
        "task": task.name,
        "volumes": len(volumes),
        "roi": list(roi),
        "batch": args.batch,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "preprocess_s": round(preprocess_s, 1),
    }
    results = {}
    for name, draw in (("monai_chain", monai_batch), ("medmae_crop_sampler", medmae_batch)):
        results[name] = crops_per_second(draw, args.batch, args.seconds, device)
        print(json.dumps({"case": name, **common, "crops_per_s": round(results[name], 1)}))
    print(
        json.dumps(
            {
                "case": "ratio",
                **common,
                "medmae_over_monai": round(results["medmae_crop_sampler"] / results["monai_chain"], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
