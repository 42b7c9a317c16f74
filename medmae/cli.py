"""The ``medmae`` command line: the parser of every subcommand in :mod:`medmae.commands`, and exit codes.

Exit codes, for every subcommand: 0 success; 2 a problem the user can fix (bad arguments, bad or missing
data, an output folder that cannot be written), with a short message naming the file and the problem and
no traceback unless ``--debug``; 1 an internal error.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Sequence

import medmae
from medmae.commands import COMMANDS
from medmae.errors import UserError

log = logging.getLogger("medmae")
OUT_OF_GPU_MEMORY = (
    "out of GPU memory; train with a smaller data.batch_size or data.crops_per_volume "
    "(--set key=value), or a smaller infer.sw_batch_size for validation and inference"
)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with ``--version``, ``--debug`` and one subparser per command."""
    parser = argparse.ArgumentParser(
        prog="medmae", description="Masked-autoencoder self-pretraining for medical images."
    )
    parser.add_argument("--version", action="version", version=f"medmae {medmae.__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    parser.set_defaults(handler=None, usage_of=parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand and return its exit code (0 success, 2 a problem the user can fix, 1 internal)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, format="%(message)s")
    if getattr(args, "fold", None) is not None:
        args.split = f"fold{args.fold}"
    if args.handler is None:
        args.usage_of.print_help(sys.stderr)
        return 2
    try:
        return args.handler(args)
    except (UserError, OSError) as error:  # OSError: an unwritable folder, a full disk, a file for a folder
        return _fail(args, describe(error))
    except Exception as error:  # noqa: BLE001 - an internal error: a bug in medmae, unless the GPU ran out of memory
        if type(error).__name__ == "OutOfMemoryError":
            print(f"medmae: error: {OUT_OF_GPU_MEMORY}", file=sys.stderr)
            return 2
        return _fail(args, f"{type(error).__name__}: {error} (rerun with --debug for the traceback)", code=1)


def _fail(args: argparse.Namespace, message: str, code: int = 2) -> int:
    """Print ``message`` (and, with ``--debug``, the traceback) and return the exit ``code``."""
    if args.debug:
        traceback.print_exc()
    kind = "error" if code == 2 else "internal error"
    print(f"medmae: {kind}: {message}", file=sys.stderr)
    return code


def describe(error: Exception) -> str:
    """An error as one line; an ``OSError`` names its file."""
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.filename}: {error.strerror or error}"
    return str(error)
