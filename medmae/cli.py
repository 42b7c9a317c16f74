"""The ``medmae`` command line: argument parsing only; each subcommand calls one function.

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
from medmae.errors import UserError
from medmae.files import removed_on_error

log = logging.getLogger("medmae")


def _info(args: argparse.Namespace) -> int:
    """Print the versions, the device, the resource folders, the tasks and the registered models."""
    import monai
    import torch

    from medmae.models import list_models
    from medmae.tasks import list_tasks

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(f"medmae {medmae.__version__}, torch {torch.__version__}, monai {monai.__version__}, device {device}")
    for kind in medmae.RESOURCE_KINDS:
        print(f"{kind}: {medmae.resource_dir(kind)}")
    print("tasks: " + ", ".join(list_tasks()))
    print("models: " + ", ".join(list_models()))
    return 0


def _data_check(args: argparse.Namespace) -> int:
    """Check every case of a task's split; exit 0 only when no case has an error."""
    from medmae.data.check import check_split, summary_rows
    from medmae.data.manifests import load_split
    from medmae.tasks import load_task

    task = load_task(args.task)
    split = load_split(task, args.data_root, args.manifest, args.split)
    print(
        f"task {task.name}: split {split.name} from {split.source}: "
        f"{len(split.train)} train, {len(split.validation)} validation, {len(split.test)} test"
        + (f", {len(split.unlabelled)} unlabelled" if split.unlabelled else "")
    )
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
    failed = sum(bool(r.errors) for r in reports)
    if failed:
        raise UserError(f"{failed} of {len(reports)} cases of task {task.name} have errors (listed above)")
    return 0


def _score(args: argparse.Namespace) -> int:
    """Score predicted label maps against reference label maps and write the reports."""
    from pathlib import Path

    from medmae.evaluation.scoring import score_to_folder
    from medmae.tasks import load_task

    pred = Path(args.pred).resolve()
    output = Path(args.output_dir) if args.output_dir else pred.parent / f"{pred.name}_scores"
    with removed_on_error(output):
        summary, notes, written = score_to_folder(
            load_task(args.task),
            pred,
            Path(args.ref),
            output,
            Path(args.images) if args.images else None,
            args.hd95_penalty,
            progress=not args.quiet,
        )
    for note in notes:
        print(f"note: {note}")
    shown = summary[["class", "dsc_mean", "hd95_mm_mean", "dsc_undefined", "hd95_mm_undefined"]]
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="-"))
    print("wrote " + ", ".join(str(path) for path in written))
    return 0


def _data_demo(args: argparse.Namespace) -> int:
    from medmae.data.synthetic import write_demo_dataset

    with removed_on_error(args.output_dir):
        root = write_demo_dataset(args.output_dir, cases=args.cases, validation=min(2, args.cases - 1), seed=args.seed)
    print(
        f"wrote {args.cases} synthetic cases to {root}; check them with: "
        f"medmae data check --task demo --data-root {root}"
    )
    return 0


def _request(args: argparse.Namespace):
    from medmae.engine.common import RunRequest

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
    )


def _pretrain(args: argparse.Namespace) -> int:
    from medmae.engine import pretrain

    request = _request(args)
    pretrain.run(request)
    print(f"pretraining finished; checkpoints in {_output(request, 'pretrain')}/checkpoints")
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from medmae.engine import finetune

    request = _request(args)
    finetune.run(request)
    print(f"fine-tuning finished; the best validation checkpoint is {_output(request, 'finetune')}/checkpoints/best.pt")
    return 0


def _output(request, stage: str) -> str:
    from medmae.tasks import load_task

    return request.output_dir or f"runs/{load_task(request.task).name}_{stage}"


def _sweep(args: argparse.Namespace) -> int:
    from medmae.engine.sweep import SweepRequest, parse_param, run_sweep

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
    print("wrote " + ", ".join(str(path) for path in written))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from medmae.engine.evaluate import evaluate

    summary, notes, written = evaluate(
        args.checkpoint,
        args.task,
        args.data_root,
        args.manifest,
        args.split,
        args.part,
        args.output_dir,
        progress=not args.quiet,
    )
    for note in notes:
        print(f"note: {note}")
    if isinstance(summary, float):
        print(f"macro AUC {summary:.4f}")
    else:
        shown = summary[["class", "dsc_mean", "hd95_mm_mean", "dsc_undefined", "hd95_mm_undefined"]]
        print(shown.to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="-"))
    print("wrote " + ", ".join(str(path) for path in written))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from medmae.engine.evaluate import predict

    written = predict(
        args.checkpoint,
        args.input,
        args.output_dir,
        progress=not args.quiet,
        inside_input=args.allow_output_inside_input,
    )
    print(f"wrote {len(written)} files to {args.output_dir}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from medmae.engine.demo import run_demo

    for line in run_demo(args.output_dir, quick=args.quick):
        print(line)
    return 0


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1], not {text}")
    return value


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    _add_data_flags(parser)
    parser.add_argument("--config", help="a YAML file over the task's recipe (e.g. configs/test/tiny.yaml)")
    parser.add_argument("--output-dir", help="the run folder (default: runs/<task>_<stage>)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change one config key, e.g. --set optim.base_lr=1e-3 (repeatable; keys: "
        + ", ".join(_config_keys())
        + ")",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --output-dir from its newest checkpoint (last.pt, else previous.pt)",
    )


def _config_keys() -> list[str]:
    from medmae.config import known_keys

    return list(known_keys())


def _add_data_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, help="a task name (medmae info lists them) or a task YAML file")
    parser.add_argument("--data-root", help="the dataset folder (default: $MEDMAE_DATA/<task>)")
    parser.add_argument("--manifest", help="a MONAI datalist JSON that replaces the stored manifest")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--split", help="datalist, fold0 ... fold4, or a named split of the task's manifest")
    group.add_argument("--fold", type=int, help="the same as --split foldK")


def _describe(error: Exception) -> str:
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.filename}: {error.strerror or error}"
    return str(error)


def _at_least(minimum: int):
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value

    return parse


def _distance_mm(text: str) -> float:
    value = float(text)
    if not (value >= 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite distance in mm, not {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medmae", description="Masked-autoencoder self-pretraining for medical images."
    )
    parser.add_argument("--version", action="version", version=f"medmae {medmae.__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    parser.set_defaults(handler=None, usage_of=parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = commands.add_parser(
        "info", help="versions, device, resource folders, tasks and models", epilog="example: medmae info"
    )
    info.set_defaults(handler=_info)
    score = commands.add_parser(
        "score",
        help="score segmentations on disk: per-case DSC and HD95 (mm), CSV, figures",
        epilog="example: medmae score --task btcv --pred runs/btcv/predictions "
        "--ref BTCV/labelsTr --images BTCV/imagesTr",
    )
    score.add_argument("--task", required=True, help="the task whose classes are scored")
    score.add_argument("--pred", required=True, help="folder of predicted label maps (NIfTI)")
    score.add_argument("--ref", required=True, help="folder of reference label maps (NIfTI), matched by case id")
    score.add_argument("--output-dir", help="where the reports go (default: <pred>_scores beside --pred)")
    score.add_argument("--images", help="folder of the images, for the figure's background")
    score.add_argument(
        "--hd95-penalty",
        type=_distance_mm,
        metavar="MM",
        help="HD95 when exactly one side is empty (the BraTS challenges use 373.13); default undefined",
    )
    score.add_argument("--quiet", action="store_true", help="no progress bar")
    score.set_defaults(handler=_score)
    pretrain = commands.add_parser(
        "pretrain",
        help="MAE self-pretraining on a task's images (no labels used)",
        epilog="example: medmae pretrain --task btcv --data-root BTCV --output-dir runs/btcv_mae",
    )
    _add_run_flags(pretrain)
    pretrain.set_defaults(handler=_pretrain)
    finetune = commands.add_parser(
        "finetune",
        help="fine-tune UNETR (3D) or the ViT classifier (2D), from an MAE or scratch",
        epilog="example: medmae finetune --task btcv --data-root BTCV "
        "--pretrained runs/btcv_mae/checkpoints/last.pt --output-dir runs/btcv_unetr",
    )
    _add_run_flags(finetune)
    finetune.add_argument(
        "--pretrained",
        metavar="CKPT",
        help="a medmae checkpoint whose encoder starts the model, or "
        "imagenet:FILE for a downloaded timm or torchvision ViT (default: train from scratch)",
    )
    finetune.add_argument(
        "--label-fraction",
        type=_fraction,
        metavar="F",
        help="train on a fixed seeded fraction of the labelled training cases (data.label_fraction)",
    )
    finetune.set_defaults(handler=_finetune)
    sweep = commands.add_parser(
        "sweep",
        help="pretrain then fine-tune (or probe) over a grid of config values; one table and plot",
        epilog="example: medmae sweep --task msd_hippocampus --data-root Task04_Hippocampus "
        "--param mask_ratio=0.125,0.25,0.5,0.75,0.9 --param decoder_depth=1,2,4",
    )
    _add_data_flags(sweep)
    sweep.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="[STAGE:]KEY=V1,V2,...",
        required=True,
        help="a config key and its values (repeatable: the grid of all combinations); a key applies to "
        "both stages unless prefixed pretrain: or finetune: (e.g. pretrain:epochs=100,200,400)",
    )
    sweep.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="[STAGE:]KEY=VALUE",
        help="a fixed setting of every point (repeatable), e.g. --set finetune:train.epochs=20",
    )
    sweep.add_argument("--pretrain-config", help="a YAML file over the task's pretraining recipe")
    sweep.add_argument("--finetune-config", help="a YAML file over the task's fine-tuning recipe")
    sweep.add_argument(
        "--linear-probe",
        action="store_true",
        help="score each MAE by a linear probe "
        "(finetune:model.tuning=linear; classification tasks) instead of full fine-tuning",
    )
    sweep.add_argument("--label-fraction", type=_fraction, metavar="F", help="fine-tune on this fraction of the labels")
    sweep.add_argument(
        "--part", choices=["test", "val"], default="test", help="which part scores each point (default: test)"
    )
    sweep.add_argument("--output-dir", help="the sweep folder (default: runs/<task>_sweep); rerun to resume")
    sweep.set_defaults(handler=_sweep)
    evaluate = commands.add_parser(
        "evaluate",
        help="predict a split's test (or validation) part and score it on the original grid",
        epilog="example: medmae evaluate --task btcv --data-root BTCV --checkpoint runs/btcv_unetr/checkpoints/best.pt",
    )
    _add_data_flags(evaluate)
    evaluate.add_argument("--checkpoint", required=True, help="a fine-tuned checkpoint (checkpoints/best.pt)")
    evaluate.add_argument("--part", choices=["test", "val"], default="test", help="which part to score (default: test)")
    evaluate.add_argument(
        "--output-dir", help="where predictions and reports go (default: evaluate_<part> in the run folder)"
    )
    evaluate.add_argument("--quiet", action="store_true", help="no progress bars")
    evaluate.set_defaults(handler=_evaluate)
    predict = commands.add_parser(
        "predict",
        help="predict files: label maps on each input's grid (3D), probabilities CSV (2D)",
        epilog="example: medmae predict --checkpoint runs/btcv_unetr/checkpoints/best.pt "
        "--input BTCV/imagesTs --output-dir btcv_predictions",
    )
    predict.add_argument("--checkpoint", required=True, help="a fine-tuned checkpoint; it names its task")
    predict.add_argument("--input", required=True, help="an image file or a folder of them")
    predict.add_argument("--output-dir", required=True, help="where predictions go (not inside the input folder)")
    predict.add_argument(
        "--allow-output-inside-input",
        action="store_true",
        help="let --output-dir lie inside the input folder (an input file is still never overwritten)",
    )
    predict.add_argument("--quiet", action="store_true", help="no progress bars")
    predict.set_defaults(handler=_predict)
    demo_run = commands.add_parser(
        "demo",
        help="the whole workflow on generated data: pretrain, fine-tune, evaluate",
        epilog="example: medmae demo --output-dir medmae_demo",
    )
    demo_run.add_argument("--output-dir", default="medmae_demo", help="where everything goes (default: medmae_demo)")
    demo_run.add_argument(
        "--quick", action="store_true", help="a shorter run (under 2 minutes) that checks the workflow"
    )
    demo_run.set_defaults(handler=_demo)
    data = commands.add_parser("data", help="check datasets, generate the demo set")
    data.set_defaults(handler=None, usage_of=data)
    data_commands = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    check = data_commands.add_parser(
        "check",
        help="read every case and report what is wrong",
        epilog="example: medmae data check --task msd_hippocampus --data-root Task04_Hippocampus",
    )
    _add_data_flags(check)
    check.add_argument("--quiet", action="store_true", help="no progress bar")
    check.set_defaults(handler=_data_check)
    demo = data_commands.add_parser(
        "demo",
        help="write the synthetic demo set (BTCV layout)",
        epilog="example: medmae data demo --output-dir demo_data",
    )
    demo.add_argument("--output-dir", required=True)
    demo.add_argument("--cases", type=_at_least(2), default=12, help="cases to write (at least 2; default 12)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(handler=_data_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand and return its exit code (0 success, 2 a problem the user can fix, 1 internal)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, format="%(message)s")
    if getattr(args, "fold", None) is not None:
        args.split = f"fold{args.fold}"
    if args.handler is None:
        args.usage_of.print_help(sys.stderr)
        return 2
    try:
        return args.handler(args)
    except (UserError, OSError) as error:  # OSError: an unwritable folder, a full disk, a file for a folder
        if args.debug:
            traceback.print_exc()
        print(f"medmae: error: {_describe(error)}", file=sys.stderr)
        return 2
    except Exception as error:  # an internal error: a bug in medmae, unless the GPU ran out of memory
        if type(error).__name__ == "OutOfMemoryError":
            print(
                "medmae: error: out of GPU memory; train with a smaller data.batch_size or data.crops_per_volume "
                "(--set key=value), or a smaller infer.sw_batch_size for validation and inference",
                file=sys.stderr,
            )
            return 2
        if args.debug:
            traceback.print_exc()
        print(
            f"medmae: internal error: {type(error).__name__}: {error} (rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1
