"""Reports: ``per_case.csv`` and ``summary.csv`` for segmentation, ``per_image.csv`` and
``per_finding.csv`` for classification. Files are written whole or not at all (temporary file, rename);
every CSV is plain, its notes go into a text file beside it (``summary_notes.txt``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from medmae.evaluation.metrics import MaskScore
from medmae.files import atomic_open, write_text
from medmae.tasks import TaskSpec

PER_CASE_COLUMNS = [
    "case_id",
    "class",
    "dsc",
    "hd95_mm",
    "tp",
    "fp",
    "fn",
    "n_ref",
    "n_pred",
    "spacing",
    "empty",
    "hd95_penalised",
    "hd95_penalty_mm",
]


def empty_rule(penalty_mm: float | None) -> str:
    """The empty-mask rule as one line of a report; ``penalty_mm`` as given to :func:`score_masks`."""
    penalty = f"the fixed penalty of {penalty_mm} mm" if penalty_mm is not None else "the image diagonal in mm"
    return (
        "empty masks: both empty -> DSC and HD95 undefined, left out of means; one side empty (a missed or "
        f"invented class) -> DSC 0 and HD95 set to {penalty}, counted in the means ('hd95_penalised' counts "
        "such cases, 'hd95_penalty_mm' gives the penalty); HD95 surfaces: face connectivity, as MONAI"
    )


def per_case_row(case_id: str, class_name: str, score: MaskScore, spacing: Sequence[float]) -> dict:
    return {
        "case_id": case_id,
        "class": class_name,
        "dsc": score.dsc,
        "hd95_mm": score.hd95_mm,
        "tp": score.tp,
        "fp": score.fp,
        "fn": score.fn,
        "n_ref": score.n_ref,
        "n_pred": score.n_pred,
        "spacing": "x".join(f"{s:g}" for s in spacing),
        "empty": score.empty,
        "hd95_penalised": score.hd95_penalised,
        "hd95_penalty_mm": score.penalty_mm,
    }


def summarise(per_case: pd.DataFrame, task: TaskSpec) -> pd.DataFrame:
    """Per class: mean, std (ddof 1), median and undefined count of DSC and HD95 over cases, and the count
    of cases whose HD95 is the empty-mask penalty (counted in the HD95 figures); then the foreground mean
    (the mean of the class means, with the summed penalised count) and the task's named groups (BTCV's
    8-organ mean)."""
    rows = []
    for name in task.scored_classes:
        part = per_case[per_case["class"] == name]
        row = {"class": name, "cases": len(part)}
        for metric in ("dsc", "hd95_mm"):
            values = part[metric].dropna()
            row |= {
                f"{metric}_mean": values.mean(),
                f"{metric}_std": values.std(),
                f"{metric}_median": values.median(),
                f"{metric}_undefined": int(part[metric].isna().sum()),
            }
        row["hd95_penalised"] = int(part["hd95_penalised"].sum())
        rows.append(row)
    table = pd.DataFrame(rows)
    groups = {"foreground mean": list(table["class"]), **{k: list(v) for k, v in task.mean_groups.items()}}
    for group, members in groups.items():
        chosen = table[table["class"].isin(members)]
        defined = int(chosen["dsc_mean"].notna().sum())
        rows.append(
            {
                "class": group,
                "dsc_mean": chosen["dsc_mean"].mean(),
                "hd95_mm_mean": chosen["hd95_mm_mean"].mean(),
                "hd95_penalised": int(chosen["hd95_penalised"].sum()),
                "classes": f"{defined} of {len(members)}",
            }
        )
    counts = ["cases", "dsc_undefined", "hd95_mm_undefined", "hd95_penalised"]
    return pd.DataFrame(rows).astype({column: "Int64" for column in counts})


def notes_path(path: Path) -> Path:
    """Where the notes on a report go: beside it, ``summary.csv`` -> ``summary_notes.txt``."""
    return path.with_name(f"{path.stem}_notes.txt")


def write_csv(table: pd.DataFrame, path: Path, notes: Sequence[str] = ()) -> Path:
    """Write ``table`` to ``path`` atomically as a plain CSV (the header, then the rows: pandas, R and
    spreadsheets read it as it is) and ``notes``, when there are any, one a line into :func:`notes_path`
    (an older notes file removed when there are none). Returns ``path``."""
    with atomic_open(path) as handle:
        table.to_csv(handle, index=False, float_format="%.6g")
    if notes:
        write_text(notes_path(path), "".join(f"{line}\n" for line in notes))
    else:  # an earlier report's notes must not stay beside this one
        notes_path(path).unlink(missing_ok=True)
    return path


def write_classification_report(
    output_dir: Path,
    image_ids: Sequence[str],
    probabilities: np.ndarray,
    targets: np.ndarray,
    findings: Sequence[str],
    notes: Sequence[str] = (),
) -> tuple[pd.DataFrame, float, list[str]]:
    """``per_image.csv`` (one probability column per finding), ``per_finding.csv`` (AUC with positive and
    negative counts; ``per_finding_notes.txt`` gives the macro mean, the findings left out of it and
    ``notes``) and ``figures/roc.png``. Returns the per-finding table, the macro AUC and the undefined
    findings.

    Args:
        probabilities, targets: ``[N, F]``.
    """
    from medmae.evaluation.classification import macro_auc, per_finding_auc, roc_curve
    from medmae.evaluation.figures import save_roc_figure

    table = per_finding_auc(probabilities, targets, findings)
    per_image = pd.DataFrame(probabilities, columns=list(findings))
    per_image.insert(0, "image_id", list(image_ids))
    write_csv(per_image, output_dir / "per_image.csv")
    mean, undefined = macro_auc(table)
    notes = [
        f"macro AUC {mean:.4f} over {int(table['defined'].sum())} findings with both classes present",
        f"undefined (one class absent, left out of the mean): {', '.join(undefined) or 'none'}",
        *notes,
    ]
    write_csv(table, output_dir / "per_finding.csv", notes)
    curves = {
        finding: (*roc_curve(probabilities[:, k], targets[:, k]), table.loc[k, "auc"])
        for k, finding in enumerate(findings)
        if table.loc[k, "defined"]
    }
    save_roc_figure(output_dir / "figures" / "roc.png", curves, title=f"ROC, macro AUC {mean:.3f}")
    return table, mean, undefined
