"""The ``medmae`` command line: argument parsing only; each subcommand calls one function."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import medmae


def _info() -> int:
    """Print the versions, the device, the resource folders and the registered models."""
    import monai
    import torch

    from medmae.models import list_models

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(f"medmae {medmae.__version__}, torch {torch.__version__}, monai {monai.__version__}, device {device}")
    for kind in medmae.RESOURCE_KINDS:
        print(f"{kind}: {medmae.resource_dir(kind)}")
    print("models: " + ", ".join(list_models()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medmae", description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("--version", action="version", version=f"medmae {medmae.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("info", help="versions, device, resource folders and registered models",
                        epilog="example: medmae info")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; returns the exit code (0 success, 2 a usage error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "info":
        return _info()
    parser.print_help(sys.stderr)
    return 2
