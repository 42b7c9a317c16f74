"""``medmae demo``: the whole workflow on generated data: pretrain, fine-tune, evaluate.

Example: ``medmae demo --output-dir medmae_demo``
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from medmae.commands.common import subcommand
from medmae.errors import UserError
from medmae.files import output_folder

log = logging.getLogger("medmae")
DEMO_CASES = 16
DEMO_TEST_CASES = 4
QUICK = {"pretrain": ["train.epochs=6", "train.figure_every=3"], "finetune": ["train.epochs=15", "train.val_every=5"]}


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = subcommand(commands, "demo", run, __doc__)
    parser.add_argument("--output-dir", default="medmae_demo", help="where everything goes (default: medmae_demo)")
    parser.add_argument(
        "--quick", action="store_true", help="a shorter run (75 s on 2 quiet CPU cores) that checks the workflow"
    )


def run(args: argparse.Namespace) -> int:
    for line in run_demo(args.output_dir, quick=args.quick):
        print(line)
    return 0


def run_demo(output_dir: str | Path, quick: bool = False) -> list[str]:
    """Generate the demo set, pretrain a tiny MAE, fine-tune a tiny UNETR from it, evaluate it on the test
    cases; returns the lines that say where everything is. ``quick`` trains for fewer epochs."""
    from medmae.data.synthetic import write_demo_dataset
    from medmae.inference.evaluate import evaluate
    from medmae.training import finetune, pretrain
    from medmae.training.session import RunRequest

    root = output_folder(output_dir)
    if root.exists() and any(root.iterdir()):
        raise UserError(f"{root}: already exists and is not empty; remove it or pass another --output-dir")
    started = time.perf_counter()
    data = write_demo_dataset(root / "data", cases=DEMO_CASES, validation=DEMO_TEST_CASES, seed=0)
    log.info("wrote %d synthetic cases to %s", DEMO_CASES, data)
    stage_args = {stage: QUICK[stage] if quick else [] for stage in QUICK}
    pretrain.run(
        RunRequest(
            task="demo", data_root=str(data), output_dir=str(root / "pretrain"), overrides=stage_args["pretrain"]
        )
    )
    mae = root / "pretrain" / "checkpoints" / "last.pt"
    finetune.run(
        RunRequest(
            task="demo",
            data_root=str(data),
            output_dir=str(root / "finetune"),
            pretrained=str(mae),
            overrides=stage_args["finetune"],
        )
    )
    best = root / "finetune" / "checkpoints" / "best.pt"
    summary, _, written = evaluate(str(best), "demo", str(data), None, None, "test", str(root / "evaluate"))
    mean = summary.loc[summary["class"] == "foreground mean", "dsc_mean"].item()
    figures = sorted((root / "pretrain" / "figures").glob("*.png"))
    return [
        f"demo finished in {time.perf_counter() - started:.0f} s; everything is in {root}",
        f"  data:            {data}",
        f"  pretraining:     {root / 'pretrain'} (reconstructions: {figures[-1] if figures else 'none'})",
        f"  fine-tuning:     {root / 'finetune'} (best checkpoint: {best})",
        f"  evaluation:      {', '.join(str(p) for p in written)}",
        f"  mean DSC of the MAE-initialised UNETR on the {DEMO_TEST_CASES} test cases: {mean:.3f}",
    ]
