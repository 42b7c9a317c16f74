"""``medmae pretrain``: MAE self-pretraining on a task's images (no labels used)."""

from __future__ import annotations

import argparse

from medmae.commands.common import add_run_flags, run_folder, run_request


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "pretrain",
        help="MAE self-pretraining on a task's images (no labels used)",
        epilog="example: medmae pretrain --task btcv --data-root BTCV --output-dir runs/btcv_mae",
    )
    add_run_flags(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from medmae.training import pretrain

    request = run_request(args)
    pretrain.run(request)
    print(f"pretraining finished; checkpoints in {run_folder(request, 'pretrain')}/checkpoints")
    return 0
