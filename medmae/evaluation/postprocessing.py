"""Postprocessing chosen on validation, as nnU-Net chooses it: for each class, whether keeping only its
largest connected component raises the class's mean DSC over the cross-validation's validation cases;
the decision is applied to label maps where it does, never decided on test cases.

Components are connected through faces, edges and corners (full connectivity, nnU-Net's); voxels of a
class outside its largest component become background. Tasks of overlapping regions are left as they are.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from medmae.errors import DataError
from medmae.evaluation.metrics import class_masks, dice
from medmae.files import write_text
from medmae.tasks import TaskSpec

KEY = "largest_component"


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Boolean ``[*S]`` -> the mask of its largest connected component (full connectivity); empty stays empty."""
    components, count = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    if count < 2:
        return mask.copy()
    sizes = np.bincount(components.ravel())[1:]
    return components == 1 + int(sizes.argmax())


def keep_largest(labels: np.ndarray, task: TaskSpec, classes: Sequence[str]) -> np.ndarray:
    """Label map ``[*S]`` with each of ``classes`` (scored class names) cut to its largest component; the
    voxels cut off become background (0)."""
    out = labels.copy()
    for mask in class_masks(labels, {c: task.scored_classes[c] for c in classes}).values():
        out[mask & ~largest_component(mask)] = 0
    return out


def class_dsc(pred: np.ndarray, ref: np.ndarray, values: Sequence[int], ignored: np.ndarray | None) -> float:
    """The DSC of one class's masks in two label maps, voxels under the ignore label left out."""
    p, r = np.isin(pred, list(values)), np.isin(ref, list(values))
    if ignored is not None:
        p &= ~ignored
    return float(dice(np.count_nonzero(p & r), np.count_nonzero(p), np.count_nonzero(r)))


def defined_mean(values: Sequence[float]) -> float | None:
    """The mean of the defined (not NaN) values; None when there are none (the class is in no case)."""
    defined = [v for v in values if not np.isnan(v)]
    return float(np.mean(defined)) if defined else None


def choose_postprocessing(task: TaskSpec, pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """From validation ``pairs`` (predicted, reference label maps; read one at a time), the classes whose mean
    DSC rises when only their largest component is kept (each class tried on its own), with both means per
    class (None for a class in no case: no evidence, never chosen)."""
    before: dict[str, list[float]] = {name: [] for name in task.scored_classes}
    after: dict[str, list[float]] = {name: [] for name in task.scored_classes}
    cases = 0
    for pred, ref in pairs:
        cases += 1
        ignored = ref == task.ignore_label if task.ignore_label is not None else None
        for name, values in task.scored_classes.items():
            before[name].append(class_dsc(pred, ref, values, ignored))
            after[name].append(class_dsc(keep_largest(pred, task, [name]), ref, values, ignored))
    per_class = {
        name: {"dsc_before": defined_mean(before[name]), "dsc_after": defined_mean(after[name])} for name in before
    }
    chosen = [name for name, m in per_class.items() if m["dsc_before"] is not None and m["dsc_after"] > m["dsc_before"]]
    return {KEY: chosen, "per_class": per_class, "cases": cases}


def write_decision(decision: dict[str, Any], path: Path) -> Path:
    write_text(path, json.dumps(decision, indent=2) + "\n")
    return path


def read_decision(path: Path) -> list[str]:
    """The classes a decision file cuts to their largest component; DataError naming it when unreadable."""
    try:
        chosen = json.loads(path.read_text(encoding="utf-8"))[KEY]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(path, f"unreadable postprocessing decision ({error})") from error
    return list(chosen)
