"""Datasets over a split's cases: a bad case stops the run with its name, or is left out on request."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import torch
from torch.utils.data import Dataset

from medmae.data.check import check_case
from medmae.data.manifests import Case
from medmae.data.transforms import build_transform
from medmae.errors import DataError
from medmae.tasks import TaskSpec

log = logging.getLogger("medmae")


def case_dict(case: Case, with_label: bool = True) -> dict[str, Any]:
    """The MONAI input of one case: file paths, the targets vector for classification, and its id."""
    d: dict[str, Any] = {"image": str(case.image), "case_id": case.id}
    if with_label and case.label is not None:
        d["label"] = str(case.label)
    elif with_label and case.targets is not None:
        d["label"] = torch.tensor(case.targets, dtype=torch.float32)
    return d


def _root_cause(error: BaseException) -> BaseException:
    """The medmae DataError inside MONAI's wrapping RuntimeError, else the innermost error."""
    while error.__cause__ is not None and not isinstance(error, DataError):
        error = error.__cause__
    return error


class CaseDataset(Dataset):
    """The ``stage`` chain of ``task`` over ``cases``; an item is a dict, or a list of ``samples`` dicts
    where the chain crops several ROIs per volume.

    Args:
        skip_bad_cases: check every case first (as ``medmae data check``) and leave out those with errors,
            logging each one and keeping them in ``skipped``; otherwise the first bad case raises
            :class:`DataError` naming the case and the file.
    """

    def __init__(self, task: TaskSpec, cases: list[Case], stage: str, samples: int = 2,
                 skip_bad_cases: bool = False) -> None:
        self.stage, self.skipped = stage, {}
        if skip_bad_cases:  # pretraining reads no labels, so a label problem does not remove its image
            reports = [check_case(task, replace(case, label=None) if stage == "pretrain" else case) for case in cases]
            self.skipped = {r.case.id: r.errors for r in reports if r.errors}
            for case_id, errors in self.skipped.items():
                log.warning("skipped case %s: %s", case_id, "; ".join(errors))
            cases = [case for case in cases if case.id not in self.skipped]
        self.cases = cases
        self.transform = build_transform(task, stage, samples)

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> Any:
        case = self.cases[index]
        try:
            return self.transform(case_dict(case, with_label=self.stage != "pretrain"))
        except Exception as error:
            cause = _root_cause(error)
            problem = cause.problem if isinstance(cause, DataError) else f"{type(cause).__name__}: {cause}"
            where = cause.path if isinstance(cause, DataError) else case.image
            raise DataError(where, f"case {case.id}: {problem} (the skip-bad-cases option leaves such cases out)") from error
