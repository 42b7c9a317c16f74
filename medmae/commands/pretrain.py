"""``medmae pretrain``: MAE self-pretraining on a task's images (no labels used).

Example: ``medmae pretrain --task btcv --data-root BTCV``
"""

from __future__ import annotations

import argparse

from medmae.commands.common import add_run_flags, run_request, subcommand


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = subcommand(commands, "pretrain", run, __doc__)
    add_run_flags(parser)


def run(args: argparse.Namespace) -> int:
    from medmae.training import pretrain
    from medmae.training.session import output_dir

    request = run_request(args)
    pretrain.run(request)
    print(f"pretraining finished; checkpoints in {output_dir(request, 'pretrain') / 'checkpoints'}")
    return 0
