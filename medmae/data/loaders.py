"""Datasets over a split's cases: a bad case stops the run with its name, or is left out on request."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from monai.data import list_data_collate
from monai.transforms import Compose
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from medmae.data.cases import Case
from medmae.data.check import check_case
from medmae.data.store import one_decompression_thread, store_steps
from medmae.data.transforms import IMAGE_ONLY, build_transform, preprocessing_steps
from medmae.errors import DataError, UserError
from medmae.seeds import crop_seed, item_seed
from medmae.tasks import TaskSpec

log = logging.getLogger("medmae")


def case_dict(case: Case, with_label: bool = True) -> dict[str, Any]:
    """The MONAI input of one case: file paths, the targets vector for classification, and its id."""
    image = [str(path) for path in case.image_files] if case.more_channels else str(case.image)
    d: dict[str, Any] = {"image": image, "case_id": case.id}
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
        check_first: check every case first and raise :class:`UserError` listing every case with errors
            (for chains that read files lazily, which would meet a bad case only when it is drawn).
        store: a preprocessed store folder holding every case (:mod:`medmae.data.store`, which checked them
            when it preprocessed them): the chain reads from it (:func:`~medmae.data.transforms.build_transform`).
    """

    def __init__(
        self,
        task: TaskSpec,
        cases: list[Case],
        stage: str,
        samples: int = 2,
        skip_bad_cases: bool = False,
        check_first: bool = False,
        store: Path | None = None,
    ) -> None:
        self.task = task
        self.stage = stage
        self.skipped = {}
        # a store checked its cases as it preprocessed them; pretraining reads no labels: a label problem does
        # not remove its image
        if (skip_bad_cases or check_first) and store is None:
            checked = tqdm(cases, desc="checking cases", unit="case", disable=None, leave=False)
            reports = [check_case(task, replace(case, label=None) if stage in IMAGE_ONLY else case) for case in checked]
            warnings = [warning for r in reports for warning in r.warnings]
            for warning in warnings[:5]:
                log.warning("warning: %s", warning)
            if len(warnings) > 5:
                log.warning("and %d more warnings (medmae data check lists them)", len(warnings) - 5)
            bad = {r.case.id: r.errors for r in reports if r.errors}
            if bad and not skip_bad_cases:
                listed = "\n  ".join(f"{case_id}: {'; '.join(errors)}" for case_id, errors in bad.items())
                raise UserError(
                    f"{len(bad)} of {len(cases)} cases have errors, found before training:\n  {listed}\n"
                    "(--set data.skip_bad_cases=true leaves such cases out)"
                )
            self.skipped = bad
            for case_id, errors in self.skipped.items():
                log.warning("skipped case %s: %s", case_id, "; ".join(errors))
            cases = [case for case in cases if case.id not in self.skipped]
        self.cases = cases
        self.store = store
        first = store_steps(store, task, stage, samples) if store is not None else None
        self.transform = build_transform(task, stage, samples, first)
        # what made each image, for inverting predictions (medmae.inference.segment.to_original_grid)
        self.inverse = self.transform if store is None else Compose(preprocessing_steps(task, ["image"]))

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> Any:
        case = self.cases[index]
        try:
            item = self.transform(case_dict(case, with_label=self.stage not in IMAGE_ONLY))
            for sample in item if isinstance(item, list) else [item]:
                if not torch.isfinite(torch.as_tensor(sample["image"])).all():
                    raise DataError(
                        case.image,
                        "non-finite values after preprocessing: its intensities are too "
                        f"extreme for the {self.task.intensity['rule']} rule (see medmae data check)",
                    )
            return item
        except Exception as error:
            cause = _root_cause(error)
            problem = cause.problem if isinstance(cause, DataError) else f"{type(cause).__name__}: {cause}"
            where = cause.path if isinstance(cause, DataError) else case.image
            raise DataError(
                where, f"case {case.id}: {problem} (--set data.skip_bad_cases=true leaves such cases out)"
            ) from error


class SeededItems(Dataset):
    """``dataset[(key, index)]``: the item ``index`` with its transform seeded by :func:`item_seed`; each
    returned dict (one per crop) gets a ``sample_seed`` for its mask."""

    def __init__(self, dataset: CaseDataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key_index: tuple[int, int]) -> Any:
        key, index = key_index
        seed = item_seed(self.seed, key, index)
        self.dataset.transform.set_random_state(seed=seed)
        item = self.dataset[index]
        for k, d in enumerate(item if isinstance(item, list) else [item]):
            d["sample_seed"] = crop_seed(seed, k)
        return item


class ShardSampler(Sampler):
    """One process's share of each pass: a seeded permutation of the cases, cut to whole global batches,
    dealt to the ``world`` processes in turn (rank r takes positions r, r + world, ...). Yields
    ``(pass_key, index)`` for :class:`SeededItems`; the shards of one pass are disjoint."""

    def __init__(self, size: int, global_batch: int, rank: int, world: int, seed: int) -> None:
        if global_batch > size:
            raise UserError(f"data.batch_size={global_batch} is more than the {size} cases available for training")
        if global_batch % world:
            raise UserError(f"data.batch_size={global_batch} does not split evenly over {world} processes")
        self.size = size
        self.global_batch = global_batch
        self.rank = rank
        self.world = world
        self.seed = seed
        self.key = 0

    def set_pass(self, key: int) -> None:
        self.key = key

    def order(self) -> list[int]:
        generator = torch.Generator().manual_seed(item_seed(self.seed, self.key, -1))
        usable = self.size // self.global_batch * self.global_batch
        return torch.randperm(self.size, generator=generator)[:usable].tolist()

    def __iter__(self):
        return iter([(self.key, index) for index in self.order()[self.rank :: self.world]])

    def __len__(self) -> int:
        return self.size // self.global_batch * self.global_batch // self.world


def train_loader(
    dataset: CaseDataset, global_batch: int, rank: int, world: int, seed: int, num_workers: int
) -> DataLoader:
    """Batches of ``global_batch / world`` items per process (crops of a volume are flattened into the batch)."""
    sampler = ShardSampler(len(dataset), global_batch, rank, world, seed)
    return DataLoader(
        SeededItems(dataset, seed),
        batch_size=global_batch // world,
        sampler=sampler,
        drop_last=True,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        collate_fn=list_data_collate,
        worker_init_fn=one_decompression_thread if dataset.store is not None else None,
    )
