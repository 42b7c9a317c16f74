"""Loaders: shards of the processes are disjoint and make up the global batch, a batch that does not split
is refused, and a bad case stops the loader by name or is left out when asked."""

from __future__ import annotations

import shutil

import pytest

from medmae.data.loaders import CaseDataset, ShardSampler
from medmae.data.manifests import load_split
from medmae.errors import DataError, UserError
from medmae.tasks import load_task


def copy_of(demo_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    return root


def test_the_loader_names_a_bad_case_or_skips_it_when_asked(demo_root, tmp_path, caplog):
    root = copy_of(demo_root, tmp_path)
    (root / "imagesTr/img0002.nii.gz").write_bytes(b"\x1f\x8b broken")
    task = load_task("demo")
    cases = load_split(task, root, split="fold0").all_cases()
    dataset = CaseDataset(task, cases, "validation")
    with pytest.raises(DataError, match=r"img0002.nii.gz: case img0002: unreadable NIfTI .*data.skip_bad_cases=true"):
        [dataset[i] for i in range(len(dataset))]
    skipping = CaseDataset(task, cases, "validation", skip_bad_cases=True)
    assert list(skipping.skipped) == ["img0002"] and len(skipping) == len(cases) - 1
    assert "skipped case img0002" in caplog.text
    assert all(item["image"].shape[0] == 1 for item in skipping)
    (root / "labelsTr/label0003.nii.gz").unlink()  # pretraining reads no labels: only the bad image is left out
    assert list(CaseDataset(task, cases, "pretrain", skip_bad_cases=True).skipped) == ["img0002"]


def test_shards_are_disjoint_and_make_up_the_global_batches():
    ranks = [ShardSampler(size=11, global_batch=4, rank=r, world=2, seed=3) for r in range(2)]
    single = ShardSampler(size=11, global_batch=4, rank=0, world=1, seed=3)
    for sampler in (*ranks, single):
        sampler.set_pass(5)
    shards = [[index for _, index in sampler] for sampler in ranks]
    assert not set(shards[0]) & set(shards[1]) and len(shards[0]) == len(shards[1]) == 4
    whole = [index for _, index in single]
    for step in range(2):  # each step's global batch is the same set of cases in one or two processes
        assert set(whole[4 * step : 4 * step + 4]) == set(
            shards[0][2 * step : 2 * step + 2] + shards[1][2 * step : 2 * step + 2]
        )


def test_a_global_batch_that_does_not_split_over_the_processes_is_refused():
    with pytest.raises(UserError, match="does not split evenly over 4 processes"):
        ShardSampler(size=20, global_batch=6, rank=0, world=4, seed=0)
