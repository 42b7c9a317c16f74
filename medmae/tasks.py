"""TaskSpec: what a task is, read from ``tasks/<name>.yaml`` (facts only; recipes live in ``configs/``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medmae import resource_dir
from medmae.errors import TaskError

INTENSITY_RULES = ("window", "zscore_nonzero", "percentile_zscore", "equalise")
LAYOUTS = ("btcv", "msd", "chestxray14")
REQUIRED = ("name", "title", "spatial_dims", "layout", "channels", "intensity", "roi", "manifest", "source")


@dataclass(frozen=True)
class TaskSpec:
    """One task. Segmentation tasks name their ``labels`` (index = label value) and may train on
    overlapping ``regions`` (sets of label values); classification tasks name their ``findings``."""

    name: str
    title: str
    spatial_dims: int
    layout: str
    channels: tuple[str, ...]
    intensity: dict[str, Any]
    roi: tuple[int, ...]
    manifest: str
    source_url: str
    source_tree: str
    path: Path
    labels: tuple[str, ...] = ()
    regions: dict[str, tuple[int, ...]] = field(default_factory=dict)
    findings: tuple[str, ...] = ()
    orientation: str | None = None
    spacing: tuple[float, ...] | None = None
    crop_foreground: bool = False
    validation_fraction: float = 0.2
    validation_seed: int = 0

    @property
    def in_channels(self) -> int:
        return len(self.channels)

    @property
    def is_classification(self) -> bool:
        return bool(self.findings)

    @property
    def class_names(self) -> tuple[str, ...]:
        """What the model predicts: the findings, the regions, or the labels (background included)."""
        return self.findings or tuple(self.regions) or self.labels

    @property
    def label_values(self) -> tuple[int, ...]:
        """The values a label map may hold."""
        return tuple(range(len(self.labels)))


def list_tasks() -> list[str]:
    """Names of the task files shipped with medmae."""
    return sorted(p.stem for p in resource_dir("tasks").glob("*.yaml"))


def _fail(path: Path, problem: str) -> TaskError:
    return TaskError(f"{path}: {problem}")


def load_task(name_or_path: str | Path) -> TaskSpec:
    """Read a shipped task by name (``btcv``) or any task file by path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = resource_dir("tasks") / f"{name_or_path}.yaml"
        if not path.is_file():
            raise TaskError(f"unknown task {str(name_or_path)!r}; known tasks: {', '.join(list_tasks())}")
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise _fail(path, f"cannot read the task file ({error})") from error
    if not isinstance(raw, dict):
        raise _fail(path, "a task file must be a YAML mapping")
    missing = [key for key in REQUIRED if key not in raw]
    if missing:
        raise _fail(path, f"missing keys {missing}")
    return _spec(path, raw)


def _spec(path: Path, raw: dict[str, Any]) -> TaskSpec:
    known = set(REQUIRED) | {"labels", "regions", "findings", "orientation", "spacing", "crop_foreground", "validation"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise _fail(path, f"unknown keys {unknown}")
    dims, layout, rule = raw["spatial_dims"], raw["layout"], raw["intensity"].get("rule")
    if dims not in (2, 3):
        raise _fail(path, f"spatial_dims must be 2 or 3, not {dims!r}")
    if layout not in LAYOUTS:
        raise _fail(path, f"layout {layout!r} is not one of {LAYOUTS}")
    if rule not in INTENSITY_RULES:
        raise _fail(path, f"intensity rule {rule!r} is not one of {INTENSITY_RULES}")
    if len(raw["roi"]) != dims or (raw.get("spacing") and len(raw["spacing"]) != dims):
        raise _fail(path, f"roi and spacing need {dims} values")
    if not (raw.get("labels") or raw.get("findings")):
        raise _fail(path, "a task needs labels (segmentation) or findings (classification)")
    labels = tuple(raw.get("labels") or ())
    regions = {name: tuple(values) for name, values in (raw.get("regions") or {}).items()}
    bad = [v for values in regions.values() for v in values if not 0 < v < len(labels)]
    if bad:
        raise _fail(path, f"regions use label values {bad} that are not foreground labels")
    validation = raw.get("validation") or {}
    return TaskSpec(name=raw["name"], title=raw["title"], spatial_dims=dims, layout=layout,
                    channels=tuple(raw["channels"]), intensity=dict(raw["intensity"]), roi=tuple(raw["roi"]),
                    manifest=raw["manifest"], source_url=raw["source"]["url"],
                    source_tree=raw["source"]["tree"].rstrip(), path=path, labels=labels, regions=regions,
                    findings=tuple(raw.get("findings") or ()), orientation=raw.get("orientation"),
                    spacing=tuple(raw["spacing"]) if raw.get("spacing") else None,
                    crop_foreground=bool(raw.get("crop_foreground", False)),
                    validation_fraction=float(validation.get("fraction", 0.2)),
                    validation_seed=int(validation.get("seed", 0)))
