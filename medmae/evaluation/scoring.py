"""Score segmentations already on disk (``medmae score``; later ``medmae evaluate`` scores the same way).

Files (NIfTI, NRRD, MetaImage, DICOM series folders) are matched by case id: the file name without its
suffix (``.nii.gz``, ``.nrrd``, ...); where the names differ by a prefix only (BTCV's ``img0001`` and
``label0001``), by the number that ends them. A prediction must lie on its reference's grid: the same voxels,
stored in the same or another orientation (then it is turned into the reference's before scoring).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from tqdm import tqdm

from medmae.data.cases import case_id
from medmae.data.readers import (
    AFFINE_TOLERANCE_MM,
    VOLUME_SUFFIXES,
    image_entries,
    integer_labels,
    on_image_axes,
    read_header,
    read_image,
    reorientation,
)
from medmae.errors import DataError, UserError
from medmae.evaluation.figures import save_case_sheet, to_ras
from medmae.evaluation.metrics import class_masks, score_masks
from medmae.evaluation.reports import empty_rule, per_case_row, summarise, write_csv
from medmae.tasks import TaskSpec


def volume_files(folder: Path) -> dict[str, Path]:
    """Case id -> 3D image of ``folder`` (NIfTI, NRRD, MetaImage files, DICOM series subfolders; hidden
    files such as macOS ``._*`` ignored); two files of one case id (``a.nii`` and ``a.nii.gz``) are an error."""
    if not folder.is_dir():
        raise DataError(folder, "no such folder")
    files: dict[str, Path] = {}
    for path in image_entries(folder, 3)[0]:
        if (case := case_id(path)) in files:
            raise DataError(folder, f"two files for case {case}: {files[case].name} and {path.name}")
        files[case] = path
    if not files:
        raise DataError(folder, f"holds no {', '.join(VOLUME_SUFFIXES)} files or DICOM series")
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


def _spatial_shape(shape: tuple[int, ...], dims: int) -> tuple[int, ...] | str:
    """The shape of a single-channel label map, or the problem (a trailing axis of length 1 is allowed)."""
    if len(shape) == dims + 1 and shape[-1] == 1:
        shape = shape[:-1]
    return shape if len(shape) == dims else f"shape {shape} is not a {dims}D label map with one channel"


def _grid_problem(task: TaskSpec, other: Path, ref: Path, what: str = "prediction") -> str | None:
    """Why ``other`` (a prediction, or an image for the figure) does not share the reference's grid.
    The reference and a prediction must be single-channel label maps; an image may have channels."""
    try:
        o, r = read_header(other), read_header(ref)
    except DataError as error:
        return str(error)
    label_maps = [("reference", r)] + ([(what, o)] if what == "prediction" else [])
    for name, header in label_maps:
        shape = _spatial_shape(header.shape, task.spatial_dims)
        if isinstance(shape, str):
            return f"{name} {shape}"
    dims = task.spatial_dims
    if reorientation(o.affine, o.shape[:dims], r.affine, r.shape[:dims]) is not None:
        return None  # the reference's grid, perhaps stored in another orientation
    if o.shape[: task.spatial_dims] != r.shape[: task.spatial_dims]:
        return f"{what} shape {o.shape} differs from reference shape {r.shape}"
    if nib.aff2axcodes(o.affine) != nib.aff2axcodes(r.affine):
        return (
            f"{what} axes run {''.join(nib.aff2axcodes(o.affine))}, the reference's "
            f"{''.join(nib.aff2axcodes(r.affine))}, and turned to run so its voxels do not lie on the "
            "reference's: another grid, not only another orientation"
        )
    if not np.allclose(o.affine, r.affine, rtol=0, atol=AFFINE_TOLERANCE_MM):
        return f"{what} affine differs from the reference affine by up to {np.abs(o.affine - r.affine).max():.4g} mm"
    return None


def refuse(task: TaskSpec, problems: list[str]) -> None:
    if problems:
        raise UserError(f"cannot score task {task.name}:\n  " + "\n  ".join(problems))


def check_pairs(task: TaskSpec, pairs: dict[str, tuple[Path, Path]], images: dict[str, Path]) -> list[str]:
    """Every case whose prediction (or image) does not share its reference's grid, as messages."""
    problems = []
    for case in sorted(pairs):
        pred, ref = pairs[case]
        for what, path in (("prediction", pred), ("image", images.get(case))):
            if path and (problem := _grid_problem(task, path, ref, what)):
                problems.append(f"{case}: {problem} ({path} vs {ref})")
    return problems


def match_and_check(
    task: TaskSpec, pred_dir: Path, ref_dir: Path, image_dir: Path | None = None, allow_missing: bool = False
) -> tuple[dict[str, tuple[Path, Path]], dict[str, Path], list[str]]:
    """Pairs (prediction, reference) and images per case id, and notes. Every missing prediction (unless
    ``allow_missing``: then a note lists them and the others are scored) or image and every grid mismatch
    is collected and raised together as a :class:`UserError` naming the cases, before anything is scored."""
    references, predictions = volume_files(ref_dir), volume_files(pred_dir)
    matched = pair_files(references, predictions)
    images = pair_files(references, volume_files(image_dir)) if image_dir else {}
    missing = [case for case in references if case not in matched]
    problems = [] if allow_missing else [f"{case}: no prediction in {pred_dir}" for case in missing]
    problems += [f"{case}: no image in {image_dir}" for case in references if image_dir and case not in images]
    if allow_missing and not matched:
        problems.append(f"no reference of {ref_dir} has a prediction in {pred_dir}")
    pairs = {case: (matched[case], references[case]) for case in sorted(matched)}
    refuse(task, problems + check_pairs(task, pairs, images))
    unused = sorted(set(predictions.values()) - set(matched.values()))
    notes = [f"{len(missing)} references have no prediction and are not scored: {shown(missing)}"] if missing else []
    if unused:
        names = shown([p.name for p in unused])
        notes.append(f"{len(unused)} predictions have no reference and are not scored: {names}")
    return pairs, images, notes


def shown(names: list[str], limit: int = 10) -> str:
    """The first ``limit`` names, and how many more."""
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def read_pair(task: TaskSpec, case: str, pred_path: Path, ref_path: Path) -> tuple[np.ndarray, np.ndarray, tuple]:
    """A case's predicted and reference label maps ``[*S]`` on the reference's axes, and its voxel spacing;
    DataError naming the file for label values outside the task's."""
    ref = read_image(ref_path)
    pred = on_image_axes(read_image(pred_path), ref)  # stored in another orientation: turned into the reference's
    pred_labels, ref_labels = integer_labels(pred)[0], integer_labels(ref)[0]  # one channel: checked with the grid
    for image, labels in ((pred, pred_labels), (ref, ref_labels)):
        outside = sorted(set(np.unique(labels).tolist()) - set(task.label_values))
        if outside:
            raise DataError(
                image.path, f"case {case}: label values {outside} outside the task's {list(task.label_values)}"
            )
    return pred_labels, ref_labels, ref.spacing


def score_pair(task: TaskSpec, case: str, pred_path: Path, ref_path: Path, penalty_mm: float | None) -> list[dict]:
    """Rows of ``per_case.csv`` for one case: one per class, on the reference's voxel spacing; voxels under
    the task's ignore label in the reference are left out of the prediction (no TP, FP or FN, no surface)."""
    pred_labels, ref_labels, spacing = read_pair(task, case, pred_path, ref_path)
    classes = task.scored_classes
    pred_masks, ref_masks = class_masks(pred_labels, classes), class_masks(ref_labels, classes)
    if task.ignore_label is not None:  # nnU-Net's rule: no voxel under the reference's ignore label counts
        scored = ref_labels != task.ignore_label
        pred_masks = {name: mask & scored for name, mask in pred_masks.items()}
    return [
        per_case_row(case, name, score_masks(pred_masks[name], ref_masks[name], spacing, penalty_mm), spacing)
        for name in classes
    ]


def score_pairs(
    task: TaskSpec, pairs: dict[str, tuple[Path, Path]], penalty_mm: float | None = None, progress: bool = True
) -> pd.DataFrame:
    """``per_case`` table (one row per case and class). Cases whose files cannot be scored (unreadable,
    values outside the task's labels) are all named together in one :class:`UserError`."""
    rows = []
    problems = []
    for case, (pred, ref) in tqdm(pairs.items(), desc=f"scoring {task.name}", unit="case", disable=not progress):
        try:
            rows += score_pair(task, case, pred, ref, penalty_mm)
        except DataError as error:
            problems.append(str(error))
    refuse(task, problems)
    return pd.DataFrame(rows)


def _sheet_rows(
    per_case: pd.DataFrame, pairs: dict[str, tuple[Path, Path]], images: dict[str, Path], count: int = 3
) -> list[dict]:
    """The ``count`` best and worst cases by mean foreground DSC, read for the figure."""
    ranking = per_case.groupby("case_id")["dsc"].mean().dropna().sort_values(ascending=False)
    chosen = list(ranking.index) if len(ranking) <= 2 * count else [*ranking.index[:count], *ranking.index[-count:]]
    rows = []
    for case in chosen:
        pred, ref = (read_image(p) for p in pairs[case])
        row = {
            "case_id": case,
            "dsc": ranking[case],
            "reference": to_ras(integer_labels(ref)[0], ref.affine),
            "prediction": to_ras(integer_labels(pred)[0], pred.affine),
        }
        if case in images:
            image = read_image(images[case])
            row["image"] = to_ras(image.array[0].astype(np.float32), image.affine)
        rows.append(row)
    return rows


def score_to_folder(
    task: TaskSpec,
    pred_dir: Path,
    ref_dir: Path,
    output_dir: Path,
    image_dir: Path | None = None,
    penalty_mm: float | None = None,
    progress: bool = True,
    allow_missing: bool = False,
) -> tuple[pd.DataFrame, list[str], list[Path]]:
    """Match the folders' files by case id, score them, and write the reports (see :func:`write_report`)."""
    if task.is_classification:
        raise UserError(f"medmae score scores segmentations; task {task.name} is a classification task")
    pairs, images, notes = match_and_check(task, pred_dir, ref_dir, image_dir, allow_missing)
    return write_report(
        task,
        pairs,
        images,
        output_dir,
        penalty_mm,
        progress,
        [f"task {task.name}: {len(pairs)} cases, predictions {pred_dir}, references {ref_dir}", *notes],
    )


def write_report(
    task: TaskSpec,
    pairs: dict[str, tuple[Path, Path]],
    images: dict[str, Path],
    output_dir: Path,
    penalty_mm: float | None = None,
    progress: bool = True,
    notes: Sequence[str] = (),
) -> tuple[pd.DataFrame, list[str], list[Path]]:
    """Score checked (prediction, reference) pairs, then write ``per_case.csv``, ``summary.csv`` and
    ``figures/best_worst.png`` into ``output_dir``.

    Returns the summary table, the notes (also written beside it, into ``summary_notes.txt``) and the files
    written (no figure when no case has a defined DSC).
    """
    per_case = score_pairs(task, pairs, penalty_mm, progress)
    summary = summarise(per_case, task)
    notes = [
        *notes[:1],
        empty_rule(penalty_mm),
        "std: sample standard deviation over cases (ddof 1)",
        "group rows: the mean of the class means that are defined ('classes' says how many)",
        *notes[1:],
    ]
    written = [write_csv(per_case, output_dir / "per_case.csv"), write_csv(summary, output_dir / "summary.csv", notes)]
    rows = _sheet_rows(per_case, pairs, images)
    if rows:
        written.append(
            save_case_sheet(
                output_dir / "figures" / "best_worst.png",
                rows,
                task.labels,
                title=f"{task.name}: best and worst cases by mean foreground DSC",
            )
        )
    return summary, notes, written
