"""The ``medmae`` command line: the parser of every subcommand in :mod:`medmae.commands`, and exit codes.

Exit codes, for every subcommand: 0 success; 2 a problem the user can fix (bad arguments, bad or missing
data, an output folder that cannot be written), with a short message naming the file and the problem and
no traceback unless ``--debug``; 1 an internal error; 130 interrupted by Ctrl-C (SIGINT), 143 stopped by
SIGTERM (a batch scheduler's stop): both clean up as a failure does and say how to go on.
"""

from __future__ import annotations

import argparse
import functools
import logging
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import medmae
from medmae.commands import COMMANDS
from medmae.errors import STOPPED, Terminated, UserError

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


def _terminate(signum: int, frame) -> None:
    STOPPED["by"] = signum
    if hasattr(signal, "SIGCHLD"):  # the loader workers die of the same stop: PyTorch need not report them
        signal.signal(signal.SIGCHLD, lambda *_: None)
    raise Terminated()


INTERRUPTED = (
    "interrupted; rerun the same command to start again, or, for pretrain, finetune and sweep, add --resume "
    "to continue from the newest checkpoint (a run stopped before its first one left nothing behind)"
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand and return its exit code (0 success, 2 a problem the user can fix, 1 internal,
    130 Ctrl-C, 143 SIGTERM)."""
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if on_main_thread else None
    previous_hook = sys.unraisablehook
    sys.unraisablehook = functools.partial(_quiet_when_terminated, previous_hook)
    STOPPED["by"] = None
    try:
        code = _run(argv)
    except KeyboardInterrupt as error:  # Ctrl-C or SIGTERM: the run's cleanup has run on the way out
        code = 143 if isinstance(error, Terminated) else 130
    finally:
        if on_main_thread:  # a handler set outside Python reads as None: then the default one
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
        sys.unraisablehook = previous_hook
        stopped, STOPPED["by"] = STOPPED["by"], None  # a later command in this process starts unstopped
    if stopped is not None:  # SIGTERM to the process group: a loader worker's death may be reported first
        code = 143
    if code in (130, 143):
        print(f"\nmedmae: {INTERRUPTED}", file=sys.stderr)
    return code


def _quiet_when_terminated(report: Callable[[Any], None], unraisable: Any) -> None:
    """``sys.unraisablehook`` during a command: a :class:`Terminated` raised inside a finaliser or weakref
    callback is swallowed there, and the flag it left stops the run at its next step, so it is not shown
    as a traceback; anything else goes to ``report``, the hook that was there before."""
    if not isinstance(unraisable.exc_value, Terminated):
        report(unraisable)


def _run(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in argv:  # accepted after the subcommand too, as the error hint says "rerun with --debug"
        argv = ["--debug", *(arg for arg in argv if arg != "--debug")]
    args = build_parser().parse_args(argv)
    stamped = "%(message)s" if sys.stderr.isatty() else "%(asctime)s %(message)s"  # a log file gets time stamps
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO, format=stamped, datefmt="%Y-%m-%d %H:%M:%S"
    )
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
        if STOPPED["by"] is not None:  # the stop's own consequence (a loader worker killed by the same SIGTERM)
            return 143
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
