"""``medmae pretrain``: MAE self-pretraining on a task's images (no labels used).

Example: ``medmae pretrain --task btcv --data-root BTCV``, or on any folder of scans:
``medmae pretrain --task btcv --images /scans/ct --images '/archive/**/*.nrrd'``
"""

from __future__ import annotations

import argparse

from medmae.commands.common import add_run_flags, print_config, run_request, subcommand
from medmae.errors import UserError


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = subcommand(commands, "pretrain", run, __doc__)
    add_run_flags(parser)
    parser.add_argument(
        "--images",
        action="append",
        metavar="DIR_OR_GLOB",
        help="pretrain on these unlabelled scans instead of a data root: a folder (searched recursively), a "
        "file or a glob pattern; repeatable",
    )


def run(args: argparse.Namespace) -> int:
    from medmae.training import pretrain
    from medmae.training.session import output_dir

    if args.print_config:
        print_config("pretrain", args)
        return 0
    data_flags = {"--data-root": args.data_root, "--manifest": args.manifest, "--split/--fold": args.split}
    given = [flag for flag, value in data_flags.items() if value]
    if args.images and given:
        raise UserError(f"--images replaces {', '.join(given)}: give one or the other")
    request = run_request(args)
    pretrain.run(request)
    print(f"pretraining finished; checkpoints in {output_dir(request, 'pretrain') / 'checkpoints'}")
    return 0
