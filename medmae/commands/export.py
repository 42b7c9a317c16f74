"""``medmae export``: write a medmae checkpoint in another toolkit's format.

``--format nnssl``: a ResEnc encoder (its MAE, or a fine-tuned ResEnc U-Net) as nnssl's
``checkpoint_final.pth`` and ``adaptation_plan.json``, which nnU-Net loads (``nnUNetv2_train
-pretrained_weights``) and nnssl's fine-tuning adapts.

Example: ``medmae export --format nnssl runs/hippo_resenc/checkpoints/last.pt --output-dir to_nnunet``
"""

from __future__ import annotations

import argparse

from medmae.commands.common import print_written, subcommand

FORMATS = ("nnssl",)


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = subcommand(commands, "export", run, __doc__)
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="a medmae checkpoint file")
    parser.add_argument("--format", required=True, choices=FORMATS, help="the format to write")
    parser.add_argument(
        "--output-dir", metavar="DIR", help="where to write (default: <checkpoint name>_<format> beside it)"
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from medmae.checkpoint import load_checkpoint
    from medmae.models.exchange import export_nnssl

    source = Path(args.checkpoint)
    payload = load_checkpoint(source)
    output = Path(args.output_dir) if args.output_dir else source.with_name(f"{source.stem}_{args.format}")
    print_written(export_nnssl(payload, source, output))
    return 0
