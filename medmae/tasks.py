"""TaskSpec: what a task is, read from ``tasks/<name>.yaml`` (facts only; recipes live in ``configs/``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medmae import resource_dir
from medmae.errors import TaskError

INTENSITY_RULES = ("window", "zscore_nonzero", "percentile_zscore", "equalise")
LAYOUTS = ("btcv", "msd", "nnunet", "chestxray14")
REQUIRED = ("name", "spatial_dims", "layout", "channels", "intensity", "roi")
OPTIONAL = (
    "title",
    "manifest",
    "source",
    "labels",
    "regions",
    "regions_class_order",
    "ignore_label",
    "findings",
    "orientation",
    "spacing",
    "crop_foreground",
    "validation",
    "mean_groups",
)


@dataclass(frozen=True)
class TaskSpec:
    """One task. Segmentation tasks name their ``labels`` (index = label value, so the values are 0, 1, ...,
    N by construction), may train on overlapping ``regions`` (sets of label values, written in a label map as
    their ``regions_class_order`` values) and may mark voxels as unlabelled with ``ignore_label`` (N + 1:
    no loss, not scored, never predicted); classification tasks name their ``findings``."""

    name: str
    title: str
    spatial_dims: int
    layout: str
    channels: tuple[str, ...]
    intensity: dict[str, Any]
    roi: tuple[int, ...]
    manifest: str | None
    source_url: str
    source_tree: str
    path: Path
    labels: tuple[str, ...] = ()
    regions: dict[str, tuple[int, ...]] = field(default_factory=dict)
    regions_class_order: tuple[int, ...] = ()
    ignore_label: int | None = None
    findings: tuple[str, ...] = ()
    orientation: str | None = None
    spacing: tuple[float, ...] | None = None
    crop_foreground: bool = False
    mean_groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    validation_fraction: float = 0.2
    validation_seed: int = 0
    record: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)  # the task file's mapping

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
    def scored_classes(self) -> dict[str, tuple[int, ...]]:
        """What segmentation is scored on: each region, or each foreground label, as its set of label values."""
        return dict(self.regions) or {name: (value,) for value, name in enumerate(self.labels) if value}

    @property
    def lateral(self) -> bool:
        """Labels that name a side (``left_kidney``): flips along left-right and axial quarter turns, which
        would swap the sides without swapping the labels, are left out of training augmentation."""
        return any(part in ("left", "right") for name in self.labels for part in name.split("_"))

    @property
    def region_values(self) -> tuple[int, ...]:
        """The label value each region is written as, in the regions' order (later regions overwrite earlier
        ones): ``regions_class_order``, else each region's smallest value."""
        return self.regions_class_order or tuple(min(values) for values in self.regions.values())

    @property
    def label_values(self) -> tuple[int, ...]:
        """The values a label map may hold: the labels', and the ignore label."""
        return tuple(range(len(self.labels))) + (() if self.ignore_label is None else (self.ignore_label,))


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


def task_from_record(record: dict[str, Any], source: str) -> TaskSpec:
    """The task a checkpoint describes (its ``task`` entry: the mapping of the task file it was trained on)."""
    if not isinstance(record, dict) or any(key not in record for key in REQUIRED):
        raise TaskError(f"{source}: holds no complete task description")
    return _spec(Path(source), record)


def _strings(value: Any, minimum: int = 1) -> bool:
    return isinstance(value, list) and len(value) >= minimum and all(isinstance(v, str) and v for v in value)


def _numbers(value: Any, count: int, positive: bool = False) -> bool:
    return (
        isinstance(value, list)
        and len(value) == count
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and (v > 0 or not positive) for v in value)
    )


def _orientation_ok(code: Any, dims: int) -> bool:
    """Each axis named once, by one of its two directions (``RAS``, ``LPS``, ``PIR`` ...)."""
    pairs = ("RL", "AP", "SI")[:dims]
    return (
        isinstance(code, str)
        and len(code) == dims
        and sorted(k for letter in code for k, pair in enumerate(pairs) if letter in pair) == list(range(dims))
    )


def _problems(raw: dict[str, Any]) -> list[str]:
    """Every way ``raw`` fails to describe a task (empty when it is fine)."""
    checks = [
        *_file_checks(raw),
        *_geometry_checks(raw),
        *_intensity_checks(raw),
        *_class_checks(raw),
        *_label_value_checks(raw),
    ]
    return [problem for ok, problem in checks if not ok]


def _file_checks(raw: dict[str, Any]) -> list[tuple[bool, str]]:
    """(holds, what it says) for the keys, the names, the layout and the source."""
    unknown = sorted(set(raw) - set(REQUIRED) - set(OPTIONAL))
    source = raw.get("source", {})
    texts = [raw[k] for k in ("name", "title", "manifest") if k in raw]
    return [
        (not unknown, f"unknown keys {unknown}"),
        (all(isinstance(text, str) and text for text in texts), "name, title and manifest must be text"),
        (raw["layout"] in LAYOUTS, f"layout {raw['layout']!r} is not one of {LAYOUTS}"),
        (
            isinstance(source, dict)
            and set(source) <= {"url", "tree"}
            and all(isinstance(source.get(k, ""), str) for k in ("url", "tree")),
            "source may give only a url and a tree (the expected layout), as text",
        ),
    ]


def _geometry_checks(raw: dict[str, Any]) -> list[tuple[bool, str]]:
    """(holds, what it says) for the dimensions, channels, ROI, spacing and orientation."""
    dims = raw["spatial_dims"]
    roi = raw["roi"]
    return [
        (dims in (2, 3), f"spatial_dims must be 2 or 3, not {dims!r}"),
        (_strings(raw["channels"]), "channels must be a list of channel names"),
        (
            isinstance(roi, list) and len(roi) == dims and all(isinstance(v, int) and v > 0 for v in roi),
            f"roi must be {dims} positive whole numbers",
        ),
        (
            raw.get("spacing") is None or _numbers(raw["spacing"], dims, positive=True),
            f"spacing must be {dims} positive numbers (mm)",
        ),
        (
            raw.get("orientation") is None or _orientation_ok(raw["orientation"], dims),
            f"orientation {raw.get('orientation')!r} must name each axis once, e.g. RAS",
        ),
    ]


def _intensity_checks(raw: dict[str, Any]) -> list[tuple[bool, str]]:
    """(holds, what it says) for the intensity rule and its parameters."""
    intensity = raw["intensity"] if isinstance(raw["intensity"], dict) else {}
    rule = intensity.get("rule")
    checks = [(rule in INTENSITY_RULES, f"intensity rule {rule!r} is not one of {INTENSITY_RULES}")]
    if rule == "window":
        window = intensity.get("window")
        checks.append(
            (_numbers(window, 2) and window[0] < window[1], "intensity window must be [low, high] with low < high")
        )
    if rule == "percentile_zscore":
        low_high = intensity.get("percentiles")
        checks.append(
            (
                _numbers(low_high, 2) and 0 <= low_high[0] < low_high[1] <= 100,
                "intensity percentiles must be [low, high] within 0..100",
            )
        )
    return checks


def _class_checks(raw: dict[str, Any]) -> list[tuple[bool, str]]:
    """(holds, what it says) for the labels or findings, the regions, the mean groups and the validation rule."""
    labels = raw.get("labels")
    regions = raw.get("regions") or {}
    valid_regions = isinstance(regions, dict) and all(
        isinstance(v, list) and v and all(isinstance(x, int) and 0 < x < len(labels or ()) for x in v)
        for v in regions.values()
    )
    groups = raw.get("mean_groups") or {}
    scored = set(regions) if isinstance(regions, dict) and regions else set((labels or [None])[1:])
    validation = raw.get("validation") or {}
    fraction = validation.get("fraction", 0.2) if isinstance(validation, dict) else None
    return [
        (
            _strings(labels, 2) or _strings(raw.get("findings")),
            "a task needs labels (background first) or findings, as lists of names",
        ),
        (valid_regions, "regions must map names to lists of foreground label values"),
        (
            isinstance(groups, dict) and all(_strings(v) and set(v) <= scored for v in groups.values()),
            "mean_groups must map names to lists of the task's scored classes (its regions, or its foreground labels)",
        ),
        (
            isinstance(validation, dict)
            and isinstance(fraction, (int, float))
            and 0 < fraction < 1
            and isinstance(validation.get("seed", 0), int),
            "validation must be {fraction: a number between 0 and 1, seed: a whole number}",
        ),
    ]


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _label_value_checks(raw: dict[str, Any]) -> list[tuple[bool, str]]:
    """(holds, what it says) for ``regions_class_order`` and ``ignore_label`` (nnU-Net's rules: each region
    written as one foreground label value; the ignore label is the value after the last label)."""
    count = len(raw["labels"]) if isinstance(raw.get("labels"), list) else 0
    regions = len(raw["regions"]) if isinstance(raw.get("regions"), dict) else 0
    order, ignore = raw.get("regions_class_order"), raw.get("ignore_label")
    order_ok = isinstance(order, list) and 0 < len(order) == regions and all(_whole(v) and 0 < v < count for v in order)
    order_rule = f"the foreground label value (1..{count - 1}) each of the {regions} regions is written as, in order"
    return [
        (order is None or order_ok, f"regions_class_order {order!r} must give {order_rule}"),
        (
            ignore is None or (count > 0 and _whole(ignore) and ignore == count),
            f"ignore_label {ignore!r} must be the value after the last label, {count} (nnU-Net's rule)",
        ),
    ]


def _spec(path: Path, raw: dict[str, Any]) -> TaskSpec:
    problems = _problems(raw)
    if problems:
        raise _fail(path, "; ".join(problems))
    dims = raw["spatial_dims"]
    validation = raw.get("validation") or {}
    return TaskSpec(
        name=raw["name"],
        title=raw.get("title") or raw["name"],
        spatial_dims=dims,
        layout=raw["layout"],
        channels=tuple(raw["channels"]),
        intensity=dict(raw["intensity"]),
        roi=tuple(raw["roi"]),
        manifest=raw.get("manifest"),
        source_url=raw.get("source", {}).get("url", ""),
        source_tree=raw.get("source", {}).get("tree", "").rstrip(),
        path=path,
        labels=tuple(raw.get("labels") or ()),
        regions={name: tuple(values) for name, values in (raw.get("regions") or {}).items()},
        regions_class_order=tuple(raw.get("regions_class_order") or ()),
        ignore_label=raw.get("ignore_label"),
        findings=tuple(raw.get("findings") or ()),
        orientation=raw.get("orientation"),
        spacing=tuple(raw["spacing"]) if raw.get("spacing") else None,
        crop_foreground=bool(raw.get("crop_foreground", False)),
        mean_groups={k: tuple(v) for k, v in (raw.get("mean_groups") or {}).items()},
        validation_fraction=float(validation.get("fraction", 0.2)),
        validation_seed=int(validation.get("seed", 0)),
        record=raw,
    )
