"""The subcommands of ``medmae``, one module each: ``add_parser(commands)`` adds its parser and sets
``handler`` to its ``run(args)``, which returns the exit code."""

from medmae.commands import data, demo, evaluate, export, finetune, info, predict, pretrain, score, sweep, task

# in the order --help lists them
COMMANDS = (info, score, pretrain, finetune, sweep, evaluate, predict, export, demo, data, task)
