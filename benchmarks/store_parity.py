"""Fine-tuning from the preprocessed store against the chain from the files (issue 31): the demo's recipe,
one MAE pretrained once, then fine-tuned with ``data.store=auto`` and ``data.store=off`` for each seed; prints
one JSON line per run (best validation DSC, test DSC, seconds) and one with the paired differences.

    python benchmarks/store_parity.py --work /tmp/store_parity                 # seeds 0 1 2, about 15 min on 2 cores
    python benchmarks/store_parity.py --work /tmp/store_parity --seeds 0 --epochs 2   # a dry run

The work folder keeps each finished run; a second call reuses them.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import pandas as pd

from medmae.commands.demo import DEMO_CASES, DEMO_TEST_CASES
from medmae.data.synthetic import write_demo_dataset
from medmae.inference.evaluate import evaluate
from medmae.training import finetune, pretrain
from medmae.training.session import RunRequest


def finetuned(work: Path, data: Path, mae: Path, store: str, seed: int, epochs: list[str]) -> dict:
    """One fine-tuning run of the demo recipe (kept in ``work``) and its scores."""
    output = work / f"finetune_store-{store}_seed{seed}"
    best = output / "checkpoints" / "best.pt"
    started = time.perf_counter()
    if not best.is_file():
        overrides = [f"data.store={store}", f"train.seed={seed}", *epochs]
        finetune.run(RunRequest("demo", str(data), output_dir=str(output), pretrained=str(mae), overrides=overrides))
    seconds = time.perf_counter() - started
    validation = pd.read_csv(output / "metrics.csv")["val_mean_dsc"].max()
    summary, _, _ = evaluate(str(best), "demo", str(data), None, None, "test", str(output / "evaluate"), False)
    test = summary.loc[summary["class"] == "foreground mean", "dsc_mean"].item()
    scores = {"best_val_dsc": round(validation, 4), "test_dsc": round(test, 4), "seconds": round(seconds)}
    return {"store": store, "seed": seed, **scores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="folder for the data and the runs (kept)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, help="fewer epochs for both stages (a dry run)")
    args = parser.parse_args()
    work = Path(args.work).resolve()
    os.environ.setdefault("MEDMAE_STORE", str(work / "stores"))
    data = work / "data"
    if not (data / "dataset_0.json").is_file():
        write_demo_dataset(data, cases=DEMO_CASES, validation=DEMO_TEST_CASES, seed=0)
    epochs = [] if args.epochs is None else [f"train.epochs={args.epochs}", "optim.warmup_epochs=0"]
    mae = work / "pretrain" / "checkpoints" / "last.pt"
    if not mae.is_file():
        pretrain.run(RunRequest("demo", str(data), output_dir=str(work / "pretrain"), overrides=epochs))
    runs = [finetuned(work, data, mae, store, seed, epochs) for seed in args.seeds for store in ("auto", "off")]
    for run in runs:
        print(json.dumps(run), flush=True)
    by = {(run["store"], run["seed"]): run for run in runs}
    for score in ("best_val_dsc", "test_dsc"):
        differences = [by["auto", seed][score] - by["off", seed][score] for seed in args.seeds]
        spread = [by["off", seed][score] for seed in args.seeds]
        print(
            json.dumps(
                {
                    "measure": f"{score}_store_minus_chain",
                    "per_seed": [round(d, 4) for d in differences],
                    "mean": round(sum(differences) / len(differences), 4),
                    "chain_range_over_seeds": round(max(spread) - min(spread), 4),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
