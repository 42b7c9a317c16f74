"""``medmae sweep``: the grid of pretrain-then-finetune runs over config values, one table and one plot.

A point of the grid is one value of every swept key. Each point pretrains an MAE (shared by the points
whose pretraining settings agree), fine-tunes from it (or trains a linear probe) and scores the best
checkpoint with ``medmae evaluate``. Every run resumes, and a finished point is not run again, so an
interrupted sweep continues where it stopped.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from medmae.config import STAGES, known_keys, load_config, parse_override
from medmae.errors import UserError
from medmae.evaluation.figures import save_sweep_figure
from medmae.files import output_folder, write_text
from medmae.inference.evaluate import evaluate
from medmae.models.masking import visible_count
from medmae.models.patchify import as_tuple, grid_size
from medmae.models.registry import check_model_config, input_multiple
from medmae.tasks import TaskSpec, load_task
from medmae.training import finetune, pretrain
from medmae.training.session import RunRequest, with_roi

log = logging.getLogger("medmae")


@dataclass(frozen=True)
class Param:
    """One swept key: ``stage`` is ``pretrain``, ``finetune`` or None (both stages)."""

    stage: str | None
    key: str
    values: tuple[Any, ...]

    @property
    def label(self) -> str:
        return f"{self.stage}:{self.key}" if self.stage else self.key


def resolve_key(key: str) -> str:
    """A config key, or the leaf name of exactly one (``mask_ratio`` -> ``model.mask_ratio``)."""
    keys = known_keys()
    if key in keys:
        return key
    matches = [k for k in keys if k.rsplit(".", 1)[-1] == key]
    if len(matches) == 1:
        return matches[0]
    hint = (
        f"it could be {', '.join(matches)}" if matches else "`medmae pretrain --task T --print-config` lists the keys"
    )
    raise UserError(f"--param {key}: not one config key; {hint}")


def stage_and_key(text: str, flag: str) -> tuple[str | None, str, str]:
    """``[pretrain:|finetune:]KEY=VALUE`` -> (stage or None, resolved key, value text)."""
    stage, colon, rest = text.partition(":")
    if not colon or stage not in STAGES or "=" in stage:
        stage, rest = None, text
    key, equals, value = rest.partition("=")
    if not equals or not key.strip() or not value.strip():
        raise UserError(f"{flag} {text!r}: expected [pretrain:|finetune:]KEY=VALUE")
    return stage, resolve_key(key.strip()), value


def parse_param(text: str) -> Param:
    """``[pretrain:|finetune:]KEY=V1,V2,...``; each value is read as YAML (``img_size=[64,64],[96,96]``)."""
    stage, key, value = stage_and_key(text, "--param")
    try:
        values = tuple(parse_override(f"{key}={json.dumps(v)}")[1] for v in yaml.safe_load(f"[{value}]"))
    except yaml.YAMLError as error:
        raise UserError(f"--param {text!r}: the values are not valid YAML ({error})") from error
    if len(set(map(repr, values))) != len(values):
        raise UserError(f"--param {text!r}: a value is listed twice")
    return Param(stage, key, values)


def stage_overrides(
    params: list[Param], point: tuple[Any, ...], fixed: list[tuple[str | None, str, str]], stage: str
) -> list[str]:
    """The ``--set`` list of one stage at one point: the fixed settings, then the point's values."""
    return [f"{key}={value}" for s, key, value in fixed if s in (None, stage)] + [
        f"{p.key}={json.dumps(v)}" for p, v in zip(params, point) if p.stage in (None, stage)
    ]


def folder_name(params: list[Param], point: tuple[Any, ...], stages: tuple[str, ...]) -> str:
    """``mask_ratio=0.5_decoder_depth=2``: the values of the keys swept in ``stages`` (``shared`` if none)."""
    parts = [f"{p.key.rsplit('.', 1)[-1]}={json.dumps(v)}" for p, v in zip(params, point) if p.stage in (None, *stages)]
    name = re.sub(r"[^A-Za-z0-9=.+-]+", "_", "_".join(parts) or "shared")
    return name if len(name) <= 120 else f"{name[:100]}_{hashlib.sha256(name.encode()).hexdigest()[:12]}"


@dataclass
class SweepRequest:
    task: str
    params: list[Param]
    data_root: str | None = None
    manifest: str | None = None
    split: str | None = None
    output_dir: str | None = None
    pretrain_config: str | None = None
    finetune_config: str | None = None
    fixed: tuple[str, ...] = ()  # [stage:]key=value
    label_fraction: float | None = None
    part: str = "test"


def run_sweep(request: SweepRequest) -> tuple[pd.DataFrame, list[Path]]:
    """Run (or resume) every point of the grid; write ``sweep.csv``, ``sweep.md`` and ``sweep.png``."""
    task = load_task(request.task)
    if not request.params:
        raise UserError("medmae sweep needs at least one --param KEY=V1,V2,...")
    labels = [p.label for p in request.params]
    if len(set(labels)) != len(labels):
        raise UserError(f"--param: a key is swept twice ({', '.join(labels)})")
    fixed = [stage_and_key(text, "--set") for text in request.fixed]
    output = output_folder(request.output_dir or f"runs/{task.name}_sweep")
    grid = list(itertools.product(*(p.values for p in request.params)))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("medmae sweep runs its points one after another in one process; run it without torchrun")
    for point in grid:  # every point is checked before the first run starts
        check_point(request, task, point, fixed)
    rows = []
    for index, point in enumerate(grid, 1):
        described = ", ".join(f"{p.label}={v}" for p, v in zip(request.params, point))
        log.info("sweep point %d of %d: %s", index, len(grid), described)
        row = run_point(request, task.name, output, point, fixed)
        rows.append({p.label: v for p, v in zip(request.params, point)} | row)
    table = pd.DataFrame(rows)
    metric = "macro_auc" if task.is_classification else "mean_dsc"
    written = [
        write_text(output / "sweep.csv", table.to_csv(index=False)),
        write_text(output / "sweep.md", markdown(table, labels, metric)),
        save_sweep_figure(
            output / "sweep.png",
            table,
            labels,
            metric,
            title=f"{task.name}: {metric.replace('_', ' ')} ({request.part} part) per swept value",
        ),
    ]
    return table, written


def check_point(
    request: SweepRequest, task: TaskSpec, point: tuple[Any, ...], fixed: list[tuple[str | None, str, str]]
) -> None:
    """Refuse, before anything runs, a point whose configs, mask ratio or tuning cannot run on the task."""
    configs = {"pretrain": request.pretrain_config, "finetune": request.finetune_config}
    cfg = {
        stage: load_config(stage, task.name, configs[stage], stage_overrides(request.params, point, fixed, stage))
        for stage in STAGES
    }
    model = cfg["pretrain"].model
    for stage in STAGES:
        check_model_config(cfg[stage].model)
    multiple = input_multiple(model)
    roi = with_roi(task, model.img_size, multiple).roi
    try:
        grid = grid_size(roi, as_tuple(multiple, len(roi), "model.patch_size"))
        visible_count(model.mask_strategy, grid, model.mask_ratio)
    except ValueError as error:
        raise UserError(f"sweep point {point}: {error}") from error
    if cfg["finetune"].model.tuning != "full" and not task.is_classification:
        raise UserError(
            f"sweep point {point}: model.tuning={cfg['finetune'].model.tuning} (--linear-probe) is for "
            f"classification tasks; {task.name} segments"
        )


def run_point(
    request: SweepRequest, task: str, output: Path, point: tuple[Any, ...], fixed: list[tuple[str | None, str, str]]
) -> dict[str, Any]:
    """Pretrain (or reuse), fine-tune and score one point; the result is kept in ``result.json``."""
    sets = {stage: stage_overrides(request.params, point, fixed, stage) for stage in STAGES}
    mae = output / "pretrain" / folder_name(request.params, point, ("pretrain",))
    tuned = output / "finetune" / folder_name(request.params, point, STAGES)
    result = tuned / "result.json"
    settings = {
        "part": request.part,
        "label_fraction": request.label_fraction,
        "overrides": sets,
        "configs": [request.pretrain_config, request.finetune_config],
    }
    if result.is_file():
        row = json.loads(result.read_text())
        if row.pop("settings", None) != settings:
            raise UserError(
                f"{result}: scored by another sweep command (part, label fraction, --set or config "
                "files differ); use another --output-dir"
            )
        log.info("%s: already scored, skipped", tuned)
        return row
    pretrain.run(_stage_request(request, task, "pretrain", sets, mae))
    last = str(mae / "checkpoints" / "last.pt")
    finetune.run(
        _stage_request(request, task, "finetune", sets, tuned, pretrained=last, label_fraction=request.label_fraction)
    )
    summary, _, _ = evaluate(
        str(tuned / "checkpoints" / "best.pt"),
        task,
        request.data_root,
        request.manifest,
        request.split,
        request.part,
        str(tuned / f"evaluate_{request.part}"),
        progress=False,
    )
    row = _result_row(summary, mae, tuned)
    write_text(result, json.dumps(row | {"settings": settings}, indent=1) + "\n")
    return row


def _result_row(summary: pd.DataFrame | float, mae: Path, tuned: Path) -> dict[str, Any]:
    """A scored point's row: the final pretraining loss, both stages' times, their runs and the score."""
    pretrained = pd.read_csv(mae / "metrics.csv", comment="#")
    tuning = pd.read_csv(tuned / "metrics.csv", comment="#")
    row = {
        "pretrain_loss": float(pretrained["loss"].iloc[-1]),
        "pretrain_seconds": round(float(pretrained["seconds"].sum()), 1),
        "finetune_seconds": round(float(tuning["seconds"].sum()), 1),
        "pretrain_run": str(mae),
        "finetune_run": str(tuned),
    }
    if isinstance(summary, float):
        return row | {"macro_auc": summary}
    mean = summary.set_index("class").loc["foreground mean"]
    return row | {
        "mean_dsc": float(mean["dsc_mean"]),
        "mean_hd95_mm": float(mean["hd95_mm_mean"]),
        "hd95_penalised": int(mean["hd95_penalised"]),  # case-class pairs counted at the empty-mask penalty
    }


def _stage_request(
    request: SweepRequest, task: str, stage: str, sets: dict[str, list[str]], output: Path, **extra: Any
) -> RunRequest:
    """The run of one stage of a point: its config file and ``--set`` list, resumed if it was started."""
    config = {"pretrain": request.pretrain_config, "finetune": request.finetune_config}[stage]
    data = {"data_root": request.data_root, "manifest": request.manifest, "split": request.split}
    return RunRequest(
        task, **data, config_file=config, overrides=sets[stage], output_dir=str(output), resume=True, **extra
    )


def markdown(table: pd.DataFrame, labels: list[str], metric: str) -> str:
    """One line per point: the swept values, the metric (and HD95 for segmentation), the pretraining loss."""
    columns = [
        *labels,
        metric,
        *(["mean_hd95_mm", "hd95_penalised"] if "mean_hd95_mm" in table else []),
        "pretrain_loss",
        "pretrain_seconds",
        "finetune_seconds",
    ]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, row in table.iterrows():
        cells = [f"{row[c]:.4f}" if isinstance(row[c], float) and c not in labels else str(row[c]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
