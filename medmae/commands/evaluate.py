"""``medmae evaluate``: predict a split's test (or validation) part and score it on the original grid.

Example: ``medmae evaluate --task btcv --data-root BTCV --checkpoint runs/btcv_finetune/checkpoints/best.pt``
"""

from __future__ import annotations

import argparse

from medmae.commands.common import add_data_flags, print_summary, print_written, subcommand


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = subcommand(commands, "evaluate", run, __doc__)
    add_data_flags(parser)
    parser.add_argument(
        "--checkpoint",
        required=True,
        nargs="+",
        metavar="CKPT",
        help="a fine-tuned checkpoint (checkpoints/best.pt); several: their ensemble (probabilities averaged)",
    )
    parser.add_argument("--mirror", action="store_true", help="average over the flips of every spatial axis")
    parser.add_argument("--part", choices=["test", "val"], default="test", help="which part to score (default: test)")
    parser.add_argument(
        "--output-dir",
        help="where predictions and reports go (default: evaluate_<part> in the run folder; "
        "evaluate_<split>_<part> for another split than the checkpoint's)",
    )
    parser.add_argument(
        "--allow-seen-cases",
        action="store_true",
        help="evaluate cases the checkpoint trained on (another split than its own) with a warning, not a refusal",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from medmae.inference.evaluate import evaluate

    summary, notes, written = evaluate(
        args.checkpoint,
        args.task,
        args.data_root,
        args.manifest,
        args.split,
        args.part,
        args.output_dir,
        progress=not args.quiet,
        allow_seen=args.allow_seen_cases,
        mirror=args.mirror,
    )
    for note in notes:
        print(f"note: {note}")
    if isinstance(summary, float):
        print(f"macro AUC {summary:.4f}")
    else:
        print_summary(summary)
    print_written(written)
    return 0
