"""``medmae task init``: write a task file inferred from a dataset, so that your own data works at once.

Example: ``medmae task init Dataset004_Hippocampus --name hippocampus``
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medmae.commands.common import subcommand
from medmae.errors import UserError


def add_parser(commands: argparse._SubParsersAction) -> None:
    task = commands.add_parser("task", help="write a task file from a dataset")
    task.set_defaults(handler=None, usage_of=task)
    task_commands = task.add_subparsers(dest="task_command", metavar="TASK_COMMAND")
    init = subcommand(task_commands, "init", run_init, __doc__)
    init.add_argument("data_root", metavar="DATA_ROOT", help="the dataset folder (with its dataset.json)")
    init.add_argument("--name", help="the task's name (default: from the folder name)")
    init.add_argument("--output", help="the task file to write (default: <name>.yaml here)")
    init.add_argument("--force", action="store_true", help="overwrite an existing task file")


def run_init(args: argparse.Namespace) -> int:
    """Infer the task file of the dataset at ``DATA_ROOT``, print each inference and write it."""
    import yaml

    from medmae.data.check import anisotropy_note
    from medmae.data.describe import describe_dataset
    from medmae.files import write_text
    from medmae.tasks import task_from_record

    root = Path(args.data_root)
    if not root.is_dir():
        raise UserError(f"{root}: no such data folder")
    record, why = describe_dataset(root, args.name)
    notes = [f"note: {note}"] if (note := anisotropy_note(record["spacing"], record["roi"])) else []
    output = Path(args.output or f"{record['name']}.yaml")
    if output.exists() and not args.force:
        raise UserError(f"{output}: already exists; choose another --output or pass --force")
    task_from_record(record, str(output))  # a record that would not load is refused before anything is written
    comments = "".join(f"#   {line}\n" for line in why + notes)
    header = f"# Written by medmae task init {root}; inferred (edit any value):\n{comments}"
    write_text(output, header + yaml.safe_dump(record, sort_keys=False, default_flow_style=None))
    print("\n".join(why + notes))
    print(f"wrote {output}; check the data with: medmae data check --task {output} --data-root {root}")
    return 0
