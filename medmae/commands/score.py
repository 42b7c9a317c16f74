"""``medmae score``: score segmentations on disk: per-case DSC and HD95 (mm), CSV, figures.

Example: ``medmae score --task btcv --pred runs/btcv/predictions --ref BTCV/labelsTr --images BTCV/imagesTr``
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medmae.commands.common import distance_mm, print_summary, print_written, subcommand
from medmae.files import output_folder, removed_on_error


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = subcommand(commands, "score", run, __doc__)
    parser.add_argument("--task", required=True, help="the task whose classes are scored")
    parser.add_argument("--pred", required=True, help="folder of predicted label maps (NIfTI, NRRD, MetaImage)")
    parser.add_argument(
        "--ref", required=True, help="folder of reference label maps (NIfTI, NRRD, MetaImage), matched by case id"
    )
    parser.add_argument("--output-dir", help="where the reports go (default: <pred>_scores beside --pred)")
    parser.add_argument("--images", help="folder of the images, for the figure's background")
    parser.add_argument(
        "--hd95-penalty",
        type=distance_mm,
        metavar="MM",
        help="HD95 when exactly one side is empty (the BraTS challenges use 373.13); default the image diagonal",
    )
    parser.add_argument(
        "--allow-missing",
        action="store_true",
        help="score the references that have a prediction and list the others (default: refuse)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Score predicted label maps against reference label maps and write the reports."""
    from medmae.evaluation.scoring import score_to_folder
    from medmae.tasks import load_task

    pred = Path(args.pred).resolve()
    output = output_folder(args.output_dir or pred.parent / f"{pred.name}_scores")
    images = Path(args.images) if args.images else None
    with removed_on_error(output):
        summary, notes, written = score_to_folder(
            load_task(args.task),
            pred,
            Path(args.ref),
            output,
            images,
            args.hd95_penalty,
            progress=not args.quiet,
            allow_missing=args.allow_missing,
        )
    for note in notes:
        print(f"note: {note}")
    print_summary(summary)
    print_written(written)
    return 0
