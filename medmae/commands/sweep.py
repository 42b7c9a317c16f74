"""``medmae sweep``: pretrain then fine-tune (or probe) over a grid of config values; one table and plot.

Example: ``medmae sweep --task msd_hippocampus --data-root Task04_Hippocampus --param mask_ratio=0.125,0.25,0.5,0.75``
"""

from __future__ import annotations

import argparse

from medmae.commands.common import add_data_flags, fraction, print_written, subcommand


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = subcommand(commands, "sweep", run, __doc__)
    add_data_flags(parser)
    parser.add_argument(
        "--param",
        required=True,
        action="append",
        default=[],
        metavar="[STAGE:]KEY=V1,V2,...",
        help="a config key and its values (repeatable: the grid of all combinations); a key applies to "
        "both stages unless prefixed pretrain: or finetune: (e.g. pretrain:epochs=100,200,400)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="[STAGE:]KEY=VALUE",
        help="a fixed setting of every point (repeatable), e.g. --set finetune:train.epochs=20",
    )
    parser.add_argument("--pretrain-config", help="a YAML file over the task's pretraining recipe")
    parser.add_argument("--finetune-config", help="a YAML file over the task's fine-tuning recipe")
    parser.add_argument(
        "--linear-probe",
        action="store_true",
        help="score each MAE by a linear probe "
        "(finetune:model.tuning=linear; classification tasks) instead of full fine-tuning",
    )
    parser.add_argument("--label-fraction", type=fraction, metavar="F", help="fine-tune on this fraction of the labels")
    parser.add_argument(
        "--part", choices=["test", "val"], default="test", help="which part scores each point (default: test)"
    )
    parser.add_argument("--output-dir", help="the sweep folder (default: runs/<task>_sweep); rerun to resume")


def run(args: argparse.Namespace) -> int:
    from medmae.training.sweep import SweepRequest, parse_param, run_sweep

    fixed = [*args.set, *(["finetune:model.tuning=linear"] if args.linear_probe else [])]
    request = SweepRequest(
        args.task,
        [parse_param(text) for text in args.param],
        args.data_root,
        args.manifest,
        args.split,
        args.output_dir,
        args.pretrain_config,
        args.finetune_config,
        tuple(fixed),
        args.label_fraction,
        args.part,
    )
    table, written = run_sweep(request)
    shown = [column for column in table.columns if not column.endswith("_run")]
    print(table[shown].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print_written(written)
    return 0
