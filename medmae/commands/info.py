"""``medmae info``: versions, device, resource folders, tasks and models.

Example: ``medmae info``
"""

from __future__ import annotations

import argparse

import medmae
from medmae.commands.common import subcommand


def add_parser(commands: argparse._SubParsersAction) -> None:
    subcommand(commands, "info", run, __doc__)


def run(args: argparse.Namespace) -> int:
    """Print the versions, the device, the resource folders, the tasks and the registered models."""
    import monai
    import torch

    from medmae.models.registry import FAMILIES
    from medmae.tasks import list_tasks

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(f"medmae {medmae.__version__}, torch {torch.__version__}, monai {monai.__version__}, device {device}")
    for kind in medmae.RESOURCE_KINDS:
        print(f"{kind}: {medmae.resource_dir(kind)}")
    print("tasks: " + ", ".join(list_tasks()))
    print("models (a ViT also builds with any power-of-two patch, or one per axis such as patch8x8x4):")
    for family in FAMILIES.values():
        for prefix, title in family.listed:
            print(f"  {title}: " + ", ".join(name for name in family.names() if name.startswith(prefix)))
    return 0
