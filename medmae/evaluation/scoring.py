"""Score segmentations already on disk (``medmae score``; later ``medmae evaluate`` scores the same way).

Files are matched by case id: the file name without ``.nii``/``.nii.gz``; where the names differ by a
prefix only (BTCV's ``img0001`` and ``label0001``), by the number that ends them.
"""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from tqdm import tqdm

from medmae.data.check import AFFINE_TOLERANCE_MM
from medmae.data.manifests import case_id
from medmae.data.readers import integer_labels, read_image
from medmae.errors import DataError, UserError
from medmae.evaluation.figures import save_case_sheet, to_ras
from medmae.evaluation.metrics import class_masks, score_masks
from medmae.evaluation.reports import empty_rule, per_case_row, segmentation_classes, summarise, write_csv
from medmae.tasks import TaskSpec


def nifti_files(folder: Path) -> dict[str, Path]:
    """Case id -> NIfTI file of ``folder`` (hidden files such as macOS ``._*`` are ignored)."""
    if not folder.is_dir():
        raise DataError(folder, "no such folder")
    files = {case_id(p): p for p in sorted(folder.iterdir())
             if p.name.endswith((".nii", ".nii.gz")) and not p.name.startswith(".")}
    if not files:
        raise DataError(folder, "holds no .nii or .nii.gz files")
    return files


def _number(case: str) -> str | None:
    match = re.search(r"(\d+)$", case)
    return match.group(1) if match else None


def pair_files(references: dict[str, Path], others: dict[str, Path]) -> dict[str, Path]:
    """Reference case id -> the matching file of ``others``: same id, else the same final number when
    that number is unique on both sides."""
    pairs = {case: others[case] for case in references if case in others}
    numbers = {}
    for case, path in others.items():
        numbers.setdefault(_number(case), []).append(path)
    ref_numbers = [_number(c) for c in references]
    for case in references:
        number = _number(case)
        if case not in pairs and number and len(numbers.get(number, [])) == 1 and ref_numbers.count(number) == 1:
            pairs[case] = numbers[number][0]
    return pairs


def _grid_problem(pred: Path, ref: Path) -> str | None:
    try:
        p, r = nib.load(pred), nib.load(ref)
    except Exception as error:  # nibabel raises many types for broken headers
        return f"unreadable NIfTI header ({type(error).__name__}: {error})"
    if p.shape[:3] != r.shape[:3]:
        return f"prediction shape {p.shape} differs from reference shape {r.shape}"
    if not np.allclose(p.affine, r.affine, rtol=0, atol=AFFINE_TOLERANCE_MM):
        return f"prediction affine differs from the reference affine by up to {np.abs(p.affine - r.affine).max():.4g} mm"
    return None


def match_and_check(task: TaskSpec, pred_dir: Path, ref_dir: Path) -> tuple[dict[str, tuple[Path, Path]], list[str]]:
    """Pairs (prediction, reference) per case id and notes; every missing prediction or grid mismatch
    is collected and raised together as a :class:`UserError` naming the cases, before anything is scored."""
    references, predictions = nifti_files(ref_dir), nifti_files(pred_dir)
    matched = pair_files(references, predictions)
    problems = [f"{case}: no prediction in {pred_dir}" for case in references if case not in matched]
    problems += [f"{case}: {problem} ({matched[case]} vs {references[case]})" for case in sorted(matched)
                 if (problem := _grid_problem(matched[case], references[case]))]
    if problems:
        raise UserError(f"cannot score task {task.name}:\n  " + "\n  ".join(problems))
    unused = sorted(set(predictions.values()) - set(matched.values()))
    notes = [f"{len(unused)} predictions have no reference and are not scored: "
             + ", ".join(p.name for p in unused[:5])] if unused else []
    return {case: (matched[case], references[case]) for case in sorted(matched)}, notes


def score_pair(task: TaskSpec, case: str, pred_path: Path, ref_path: Path, penalty_mm: float | None) -> list[dict]:
    """Rows of ``per_case.csv`` for one case: one per class, on the reference's voxel spacing."""
    pred, ref = read_image(pred_path), read_image(ref_path)
    pred_labels, ref_labels = integer_labels(pred)[0], integer_labels(ref)[0]
    for image, labels in ((pred, pred_labels), (ref, ref_labels)):
        outside = sorted(set(np.unique(labels).tolist()) - set(task.label_values))
        if outside:
            raise DataError(image.path, f"case {case}: label values {outside} outside the task's {list(task.label_values)}")
    classes = segmentation_classes(task)
    pred_masks, ref_masks = class_masks(pred_labels, classes), class_masks(ref_labels, classes)
    return [per_case_row(case, name, score_masks(pred_masks[name], ref_masks[name], ref.spacing, penalty_mm), ref.spacing)
            for name in classes]


def score_directories(task: TaskSpec, pred_dir: Path, ref_dir: Path, penalty_mm: float | None = None,
                      progress: bool = True) -> tuple[pd.DataFrame, list[str], dict[str, tuple[Path, Path]]]:
    """``per_case`` table (one row per case and class), notes, and the scored pairs."""
    pairs, notes = match_and_check(task, pred_dir, ref_dir)
    rows = []
    for case, (pred, ref) in tqdm(pairs.items(), desc=f"scoring {task.name}", unit="case", disable=not progress):
        rows += score_pair(task, case, pred, ref, penalty_mm)
    return pd.DataFrame(rows), notes, pairs


def _sheet_rows(per_case: pd.DataFrame, pairs: dict[str, tuple[Path, Path]], images: dict[str, Path],
                count: int = 3) -> list[dict]:
    """The ``count`` best and worst cases by mean foreground DSC, read for the figure."""
    ranking = per_case.groupby("case_id")["dsc"].mean().dropna().sort_values(ascending=False)
    chosen = list(ranking.index) if len(ranking) <= 2 * count else [*ranking.index[:count], *ranking.index[-count:]]
    rows = []
    for case in chosen:
        pred, ref = (read_image(p) for p in pairs[case])
        row = {"case_id": case, "dsc": ranking[case], "reference": to_ras(integer_labels(ref)[0], ref.affine),
               "prediction": to_ras(integer_labels(pred)[0], pred.affine)}
        if case in images:
            image = read_image(images[case])
            row["image"] = to_ras(image.array[0].astype(np.float32), image.affine)
        rows.append(row)
    return rows


def score_to_folder(task: TaskSpec, pred_dir: Path, ref_dir: Path, output_dir: Path, image_dir: Path | None = None,
                    penalty_mm: float | None = None, progress: bool = True) -> tuple[pd.DataFrame, list[str]]:
    """Score, then write ``per_case.csv``, ``summary.csv`` and ``figures/best_worst.png`` into ``output_dir``.

    Returns the summary table and the notes (also written as comment lines of ``summary.csv``).
    """

    if task.is_classification:
        raise UserError(f"medmae score scores segmentations; task {task.name} is a classification task")
    per_case, notes, pairs = score_directories(task, pred_dir, ref_dir, penalty_mm, progress)
    summary = summarise(per_case, task)
    notes = [f"task {task.name}: {len(pairs)} cases, predictions {pred_dir}, references {ref_dir}",
             empty_rule(penalty_mm), "std: sample standard deviation over cases (ddof 1)", *notes]
    write_csv(per_case, output_dir / "per_case.csv")
    write_csv(summary, output_dir / "summary.csv", notes)
    images = pair_files(nifti_files(ref_dir), nifti_files(image_dir)) if image_dir else {}
    rows = _sheet_rows(per_case, pairs, images)
    if rows:
        save_case_sheet(output_dir / "figures" / "best_worst.png", rows, len(task.labels),
                        title=f"{task.name}: best and worst cases by mean foreground DSC")
    return summary, notes
