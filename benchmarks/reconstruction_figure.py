"""Draw the reconstruction figure of a pretraining run from one of its checkpoints: the same fixed samples
and masks as the figures the run drew itself (``figures/reconstruction_epochNNNN.png``).

    python benchmarks/reconstruction_figure.py RUN_FOLDER OUTPUT.png [--data-root D] [--checkpoint last.pt]

Any backbone's MAE (ViT of any patch size, or the sparse convolutional MAE). Useful to redraw a finished
run's figure with a newer medmae (the figures once showed 2D images rotated).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medmae.checkpoint import load_checkpoint, load_weights
from medmae.config import from_dict
from medmae.data.loaders import CaseDataset
from medmae.data.manifests import load_split
from medmae.models.registry import input_multiple
from medmae.tasks import task_from_record
from medmae.training.pretrain import build_mae, figure_batch, save_figure
from medmae.training.session import with_roi


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a pretraining run folder")
    parser.add_argument("output", type=Path, help="the PNG to write")
    parser.add_argument("--data-root", help="the task's data (default: the run's $MEDMAE_DATA/<task>)")
    parser.add_argument("--checkpoint", default="last.pt", help="a checkpoint of the run (default last.pt)")
    args = parser.parse_args()
    path = args.run / "checkpoints" / args.checkpoint
    payload = load_checkpoint(path)
    cfg = from_dict(payload["run_config"], str(path))
    multiple = input_multiple(cfg.model)
    task = with_roi(task_from_record(payload["task"], str(path)), cfg.model.img_size, multiple)
    split = load_split(task, args.data_root, split=payload["split"]["split"])
    cases = sorted({c.id: c for c in split.train + split.validation + split.unlabelled}.values(), key=lambda c: c.id)
    crops = cfg.data.crops_per_volume if task.spatial_dims == 3 else 1
    model = build_mae(cfg, task)
    load_weights(model, payload["state_dict"], path)
    images = figure_batch(CaseDataset(task, cases, "pretrain", samples=crops), cfg, crops)
    loss = save_figure(model, images, args.output, f"{task.name}, epoch {payload['epoch']}")
    print(f"wrote {args.output} (loss on its samples {loss:.4f})")


if __name__ == "__main__":
    main()
