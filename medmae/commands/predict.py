"""``medmae predict``: predict files: label maps on each input's grid, in its format (3D); probabilities (2D).

Example: ``medmae predict --checkpoint runs/btcv_finetune/checkpoints/best.pt --input BTCV/imagesTs --output-dir out``
"""

from __future__ import annotations

import argparse

from medmae.commands.common import subcommand


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = subcommand(commands, "predict", run, __doc__)
    parser.add_argument(
        "--checkpoint",
        required=True,
        nargs="+",
        metavar="CKPT",
        help="a fine-tuned checkpoint (it names its task); several of one task: their ensemble",
    )
    parser.add_argument(
        "--mirror", action="store_true", help="3D and 2D segmentation: average over the flips of every spatial axis"
    )
    parser.add_argument("--input", required=True, help="an image file or a folder of them")
    parser.add_argument("--output-dir", required=True, help="where predictions go (not inside the input folder)")
    parser.add_argument(
        "--allow-output-inside-input",
        action="store_true",
        help="let --output-dir lie inside the input folder (an input file is still never overwritten)",
    )
    parser.add_argument(
        "--save-probabilities",
        action="store_true",
        help="3D: also <case id>.npz with each class's probability on the input's grid (like nnU-Net's)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace predictions already in --output-dir (refused otherwise)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from medmae.inference.predict import predict

    written = predict(
        args.checkpoint,
        args.input,
        args.output_dir,
        progress=not args.quiet,
        inside_input=args.allow_output_inside_input,
        save_probabilities=args.save_probabilities,
        overwrite=args.overwrite,
        mirror=args.mirror,
    )
    extra = f" and {len(written)} probability files (.npz)" if args.save_probabilities else ""
    print(f"wrote {len(written)} files{extra} to {args.output_dir}")
    return 0
