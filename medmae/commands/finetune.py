"""``medmae finetune``: fine-tune a segmenter (UNETR, light ViT, DynUNet, ResEnc, U-Net) or the ViT classifier
(2D), from a pretrained encoder or from scratch.

Example: ``medmae finetune --task btcv --data-root BTCV --pretrained runs/btcv_pretrain/checkpoints/last.pt``
Cross-validation: ``medmae finetune --task msd_hippocampus --folds all --output-dir runs/hippo_cv``
"""

from __future__ import annotations

import argparse

from medmae.commands.common import add_run_flags, fraction, print_config, run_request, subcommand


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = subcommand(commands, "finetune", run, __doc__)
    add_run_flags(parser)
    parser.add_argument(
        "--pretrained",
        metavar="CKPT",
        help="the encoder that starts the model: a medmae checkpoint, an nnssl/OpenMind checkpoint "
        "(ResEnc; model.arch=resenc), MONAI ViTAutoEnc weights (model.arch unetr or light), or imagenet:FILE "
        "for a downloaded timm or torchvision ViT (default: train from scratch)",
    )
    parser.add_argument(
        "--folds",
        nargs="+",
        type=cross_validation_fold,
        metavar="K",
        help="cross-validation: fine-tune folds K (0 ... 4, or all) of the split's train and validation cases, "
        "one run folder each under --output-dir, the test part in no fold (--fold picks the split instead)",
    )
    parser.add_argument(
        "--label-fraction",
        type=fraction,
        metavar="F",
        help="train on a fixed seeded fraction of the labelled training cases (data.label_fraction)",
    )


def cross_validation_fold(text: str) -> list[int]:
    """``all`` -> every fold; ``K`` -> ``[K]`` for K in 0 ... 4."""
    from medmae.data.manifests import FOLDS

    if text == "all":
        return list(range(FOLDS))
    if not text.isdigit() or int(text) >= FOLDS:
        raise argparse.ArgumentTypeError(f"{text!r}: a fold is 0 ... {FOLDS - 1}, or all")
    return [int(text)]


def run(args: argparse.Namespace) -> int:
    from medmae.training import finetune
    from medmae.training.session import output_dir

    if args.print_config:
        print_config("finetune", args)
        return 0
    request = run_request(args)
    if args.folds:
        from medmae.training.crossval import run_folds

        folds = sorted({k for chosen in args.folds for k in chosen})
        parent = run_folds(request, folds)
        print(f"cross-validation of folds {folds} finished; the summary is {parent / 'crossval' / 'summary.csv'}")
        return 0
    finetune.run(request)
    best = output_dir(request, "finetune") / "checkpoints" / "best.pt"
    print(f"fine-tuning finished; the best validation checkpoint is {best}")
    return 0
