"""Training from the preprocessed store (:mod:`medmae.data.store`): find it, build what is missing with one
writer per machine while the other processes wait, and name the cases that fail before the first step."""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import replace
from pathlib import Path

from medmae.data.cases import Case
from medmae.data.store import preprocess, store_folder, store_off, store_root
from medmae.errors import UserError
from medmae.files import write_text
from medmae.training.distributed import barrier, gather
from medmae.training.session import Setup

log = logging.getLogger("medmae")
POLL_SECONDS = 2.0


def stored_cases(s: Setup, cases: list[Case], image_only: bool = False) -> tuple[Path | None, set[str]]:
    """The store folder holding ``cases`` as preprocessed now (None with ``data.store=off`` or a 2D task), and
    the ids of the cases to train on. The first process of each machine (``LOCAL_RANK`` 0) preprocesses the missing
    and changed cases (``data.num_workers`` worker processes, at most the CPU count); the others wait for
    it without a collective, so a long first build never meets the distributed timeout. A case that
    cannot be preprocessed stops the run with every such case named, or is left out with
    ``data.skip_bad_cases``; ``image_only`` (pretraining, which reads no label): a case that fails with its
    label is preprocessed again without it, and kept where that works."""
    cfg, task, ctx = s.cfg, s.task, s.ctx
    if store_off(cfg.data.store) or task.spatial_dims != 3 or task.is_classification:
        return None, {case.id for case in cases}
    root = store_root(cfg.data.store, s.data_root)
    token = gather([uuid.uuid4().hex], ctx)[0]  # the main process's: names this run's "ready" note
    ready = store_folder(task, root) / f".ready.{token}.json"
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        workers = max(1, min(cfg.data.num_workers, os.cpu_count() or 1))
        if ctx.is_main:
            log.info("store %s: reading the cases preprocessed before, preprocessing the others", root)
        run = preprocess(task, cases, root, workers=workers, progress=ctx.is_main)
        failed = run.failed
        labelled = [replace(case, label=None) for case in cases if case.id in failed and case.label is not None]
        if image_only and labelled:
            again = preprocess(task, labelled, root, workers=workers, progress=False)
            for case_id in again.written:
                log.warning(
                    "case %s: its label cannot be used (%s); its image alone is stored", case_id, failed[case_id]
                )
            failed = {case_id: problem for case_id, problem in failed.items() if case_id not in again.written}
        if ctx.is_main:
            log.info(
                "store %s: %d cases preprocessed before, %d now, %d failed",
                *(run.folder, len(run.current), len(run.written) + len(run.failed) - len(failed), len(failed)),
            )
        if ctx.world > 1:
            write_text(ready, json.dumps(failed) + "\n")
    else:
        while not ready.is_file():
            time.sleep(POLL_SECONDS)
        failed = json.loads(ready.read_text(encoding="utf-8"))
    barrier(ctx)
    if ctx.world > 1 and int(os.environ.get("LOCAL_RANK", "0")) == 0:
        ready.unlink(missing_ok=True)
    return store_folder(task, root), kept_ids(cases, failed, cfg.data.skip_bad_cases)


def kept_ids(cases: list[Case], failed: dict[str, str], skip: bool) -> set[str]:
    """The ids of ``cases`` without those that ``failed`` (id -> problem), each logged; without ``skip``, a
    :class:`UserError` listing them all."""
    if not failed:
        return {case.id for case in cases}
    listed = "\n  ".join(f"{case_id}: {problem}" for case_id, problem in sorted(failed.items()))
    if not skip:
        raise UserError(
            f"{len(failed)} of {len(cases)} cases could not be preprocessed, found before training:\n  {listed}\n"
            "(--set data.skip_bad_cases=true leaves such cases out)"
        )
    for case_id, problem in sorted(failed.items()):
        log.warning("skipped case %s: %s", case_id, problem)
    return {case.id for case in cases} - set(failed)
