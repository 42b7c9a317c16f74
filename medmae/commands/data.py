"""``medmae data check`` (read every case of a split and report what is wrong), ``medmae data
export-nnunet`` (write a task's cases in nnU-Net's layout), ``medmae data preprocess`` (the preprocessed
per-case store) and ``medmae data demo`` (write the synthetic demo set)."""

from __future__ import annotations

import argparse
from pathlib import Path

from medmae.commands.common import add_data_flags, at_least, subcommand
from medmae.errors import UserError
from medmae.files import output_folder, removed_on_error


def add_parser(commands: argparse._SubParsersAction) -> None:
    data = commands.add_parser("data", help="check, export and preprocess datasets; generate the demo set")
    data.set_defaults(handler=None, usage_of=data)
    data_commands = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    check = subcommand(data_commands, "check", run_check, run_check.__doc__)
    add_data_flags(check)
    check.add_argument("--quiet", action="store_true", help="no progress bar")
    export = subcommand(data_commands, "export-nnunet", run_export, run_export.__doc__)
    add_data_flags(export)
    export.add_argument("--output-dir", required=True, help="the nnU-Net dataset folder to write (new or empty)")
    export.add_argument("--quiet", action="store_true", help="no progress bar")
    preprocess = subcommand(data_commands, "preprocess", run_preprocess, run_preprocess.__doc__)
    add_data_flags(preprocess)
    preprocess.add_argument(
        "--images",
        action="append",
        metavar="DIR_OR_GLOB",
        help="unlabelled scans instead of a data root: a folder (searched recursively), a file or a glob "
        "pattern; repeatable",
    )
    preprocess.add_argument(
        "--output-dir",
        help="where the stores go (default: $MEDMAE_STORE, else <data root>/medmae_store, else "
        "~/.cache/medmae/store: where training's data.store=auto looks)",
    )
    preprocess.add_argument("--workers", type=at_least(1), default=1, help="worker processes (default 1)")
    preprocess.add_argument(
        "--part", type=at_least(0), default=0, help="this job's part, 0 ... --parts - 1 (default 0)"
    )
    preprocess.add_argument("--parts", type=at_least(1), default=1, help="how many jobs share the cases (default 1)")
    preprocess.add_argument("--rebuild", action="store_true", help="delete this task's store and build it again")
    preprocess.add_argument("--quiet", action="store_true", help="no progress bar")
    demo = subcommand(data_commands, "demo", run_write_demo, run_write_demo.__doc__)
    demo.add_argument("--output-dir", required=True)
    demo.add_argument("--cases", type=at_least(2), default=12, help="cases to write (at least 2; default 12)")
    demo.add_argument("--seed", type=int, default=0)


def run_check(args: argparse.Namespace) -> int:
    """Read every case and report what is wrong (exit 0 only when no case has an error).

    Example: ``medmae data check --task msd_hippocampus --data-root Task04_Hippocampus``
    """
    from medmae.data.check import check_split, spacing_note, summary_rows
    from medmae.data.manifests import load_split
    from medmae.tasks import load_task

    task = load_task(args.task)
    split = load_split(task, args.data_root, args.manifest, args.split)
    parts = f"{len(split.train)} train, {len(split.validation)} validation, {len(split.test)} test"
    unlabelled = f", {len(split.unlabelled)} unlabelled" if split.unlabelled else ""
    print(f"task {task.name}: split {split.name} from {split.source}: {parts}{unlabelled}")
    for note in split.notes:
        print(f"note: {note}")
    reports = check_split(task, split, progress=not args.quiet)
    for report in reports:
        for message in report.errors:
            print(f"ERROR   {report.case.id}: {message}")
        for message in report.warnings:
            print(f"warning {report.case.id}: {message}")
    rows = summary_rows(task, reports)
    width = max(len(what) for what, _ in rows)
    print("\n".join(f"{what:<{width}}  {value}" for what, value in rows))
    if note := spacing_note(task, reports):
        print(f"note: {note}")
    failed = sum(bool(r.errors) for r in reports)
    if failed:
        raise UserError(f"{failed} of {len(reports)} cases of task {task.name} have errors (listed above)")
    return 0


def unused_folder(path: str) -> Path:
    """``path`` as a new or empty folder to write a data set into; refused when it is a file or holds files."""
    output = output_folder(path)
    if output.exists() and any(output.iterdir()):
        raise UserError(f"{output}: a folder that is not empty; a data set is written into an empty or new folder")
    return output


def run_export(args: argparse.Namespace) -> int:
    """Write a task's cases in nnU-Net v2's raw layout: imagesTr, labelsTr, imagesTs and dataset.json.

    Example: ``medmae data export-nnunet --task msd_hippocampus --data-root Task04_Hippocampus --output-dir Dataset504``
    """
    from medmae.data.manifests import load_split
    from medmae.data.nnunet import export_nnunet
    from medmae.tasks import load_task

    task = load_task(args.task)
    split = load_split(task, args.data_root, args.manifest, args.split)
    output = unused_folder(args.output_dir)
    with removed_on_error(output):
        export_nnunet(task, split, output, progress=not args.quiet)
    labelled = len({c.id for c in split.train + split.validation + split.test})
    print(
        f"wrote {labelled} labelled and {len(split.unlabelled)} unlabelled cases of task {task.name} to {output} "
        f"in nnU-Net's layout; read it back with: medmae data check --task {args.task} --data-root {output}"
    )
    return 0


def run_preprocess(args: argparse.Namespace) -> int:
    """Run each case's deterministic preprocessing once, into a store of compressed per-case files, which
    pretrain and finetune read (they build it themselves when it is missing; this command does it ahead, with
    several workers or as parts of a cluster's job array).

    Example: ``medmae data preprocess --task msd_hippocampus --data-root Task04_Hippocampus --workers 2``
    """
    from medmae.data.layout import resolve_data_root
    from medmae.data.manifests import images_split, load_split
    from medmae.data.store import preprocess, store_root
    from medmae.tasks import load_task

    data_flags = {"--data-root": args.data_root, "--manifest": args.manifest, "--split/--fold": args.split}
    given = [flag for flag, value in data_flags.items() if value]
    if args.images and given:
        raise UserError(f"--images replaces {', '.join(given)}: give one or the other")
    if args.part >= args.parts:
        raise UserError(f"--part {args.part} --parts {args.parts}: the part counts from 0 to {args.parts - 1}")
    task = load_task(args.task)
    if args.images:
        split = images_split(task, args.images)
        data_root = None
    else:
        split = load_split(task, args.data_root, args.manifest, args.split)
        data_root = resolve_data_root(task, args.data_root)
    root = output_folder(args.output_dir or store_root("auto", data_root))
    cases = split.all_cases()
    share = f" (part {args.part} of {args.parts}, counting from 0)" if args.parts > 1 else ""
    print(f"task {task.name}: split {split.name} from {split.source}: {len(cases)} cases{share}")
    run = preprocess(
        task,
        cases,
        root,
        workers=args.workers,
        part=args.part,
        parts=args.parts,
        progress=not args.quiet,
        rebuild=args.rebuild,
    )
    print(
        f"wrote {len(run.written)} cases, skipped {len(run.current)} already current, "
        f"{len(run.failed)} failed; the store is {run.folder}"
    )
    if run.failed:
        listed = "\n  ".join(f"{case_id}: {problem}" for case_id, problem in sorted(run.failed.items()))
        raise UserError(
            f"{len(run.failed)} of {len(run.failed) + len(run.written) + len(run.current)} cases of task "
            f"{task.name} could not be preprocessed (the others are in {run.folder}):\n  {listed}"
        )
    return 0


def run_write_demo(args: argparse.Namespace) -> int:
    """Write the synthetic demo set (BTCV layout).

    Example: ``medmae data demo --output-dir demo_data``
    """
    from medmae.data.synthetic import write_demo_dataset

    unused_folder(args.output_dir)
    with removed_on_error(args.output_dir):
        validation = min(2, args.cases - 1)
        root = write_demo_dataset(args.output_dir, cases=args.cases, validation=validation, seed=args.seed)
    print(
        f"wrote {args.cases} synthetic cases to {root}; check them with: "
        f"medmae data check --task demo --data-root {root}"
    )
    return 0
