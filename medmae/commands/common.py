"""What several subcommands share: the data and run flags, argument types, and how a summary is printed.

Command modules import torch, MONAI and the training code inside ``run`` only, so that building the
parser (``medmae --help``, a mistyped flag) stays instant.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

    from medmae.training.session import RunRequest

SUMMARY_COLUMNS = ["class", "dsc_mean", "hd95_mm_mean", "hd95_penalised", "dsc_undefined", "hd95_mm_undefined"]


def subcommand(commands: argparse._SubParsersAction, name: str, handler: Callable, doc: str) -> argparse.ArgumentParser:
    """The parser of subcommand ``name``, described by ``doc`` (its module's or handler's docstring): the
    first sentence, after the command's own name, is its help; the ``Example:`` line its epilog.
    ``handler(args)`` runs it."""
    first = doc.strip().split("\n\n")[0].replace("\n", " ")
    summary = first.split("``: ", 1)[-1].rstrip(".")
    example = next(line.strip() for line in doc.splitlines() if line.strip().startswith("Example: "))
    parser = commands.add_parser(name, help=summary, epilog=example.replace("``", ""))
    parser.set_defaults(handler=handler)
    return parser


def add_data_flags(parser: argparse.ArgumentParser) -> None:
    """``--task``, ``--data-root``, ``--manifest`` and ``--split`` or ``--fold``."""
    parser.add_argument("--task", required=True, help="a task name (medmae info lists them) or a task YAML file")
    parser.add_argument("--data-root", help="the dataset folder (default: $MEDMAE_DATA/<task>)")
    parser.add_argument("--manifest", help="a MONAI datalist JSON that replaces the stored manifest")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--split", help="datalist, fold0 ... fold4, or a named split of the task's manifest")
    group.add_argument("--fold", type=int, help="the same as --split foldK")


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """The data flags, then ``--config``, ``--output-dir``, ``--set``, ``--resume`` and ``--print-config``."""
    add_data_flags(parser)
    parser.add_argument(
        "--config",
        action="append",
        help="a YAML file over the task's recipe (e.g. configs/test/tiny.yaml: a relative path that is not a file "
        "here is the shipped one); repeatable, applied in order",
    )
    parser.add_argument("--output-dir", help="the run folder (default: runs/<task>_<stage>)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change one config key, e.g. --set optim.base_lr=1e-3 (repeatable); every key with its value and "
        "where it comes from: --print-config; meanings and defaults: docs/reference/config.md",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --output-dir from its newest checkpoint (last.pt, else previous.pt)",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config, each key with where its value comes from, and exit",
    )


def print_config(stage: str, args: argparse.Namespace) -> None:
    """The resolved config of a run as YAML, each key commented with its source (default, recipe, file,
    --set); nothing is trained, no data is read."""
    from medmae.config import resolve_config
    from medmae.tasks import load_task

    task = load_task(args.task)
    cfg, sources = resolve_config(stage, task.name, args.config, args.set)
    if getattr(args, "label_fraction", None) is not None:
        cfg.data.label_fraction, sources["data.label_fraction"] = args.label_fraction, "--label-fraction"
    for section, values in cfg.to_dict().items():
        print(f"{section}:")
        for key, value in values.items():
            print(f"  {key}: {json.dumps(value)}  # {sources[f'{section}.{key}']}")


def run_request(args: argparse.Namespace) -> RunRequest:
    """The :class:`RunRequest` of ``medmae pretrain`` or ``medmae finetune``."""
    from medmae.training.session import RunRequest

    return RunRequest(
        task=args.task,
        data_root=args.data_root,
        manifest=args.manifest,
        split=args.split,
        config_file=args.config,
        overrides=args.set,
        output_dir=args.output_dir,
        resume=args.resume,
        pretrained=getattr(args, "pretrained", None),
        label_fraction=getattr(args, "label_fraction", None),
        images=getattr(args, "images", None),
    )


def fraction(text: str) -> float:
    """A number in (0, 1]."""
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1], not {text}")
    return value


def at_least(minimum: int):
    """A whole number of at least ``minimum``."""

    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value

    return parse


def distance_mm(text: str) -> float:
    """A finite, non-negative distance in mm."""
    value = float(text)
    if not (value >= 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite distance in mm, not {text}")
    return value


def print_summary(summary: pd.DataFrame) -> None:
    """The per-class means and undefined counts of a segmentation ``summary.csv``."""
    print(summary[SUMMARY_COLUMNS].to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="-"))


def print_written(paths) -> None:
    print("wrote " + ", ".join(str(path) for path in paths))
