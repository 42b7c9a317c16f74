"""Cached crops (``medmae.data.crops``): exact sub-volumes of the volumes (kept back to back, unpadded),
uniform over every valid start, fair flips, seeded crops, disjoint shards, the same crops from the store as
from the device, and the prefetch thread."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch

from medmae.data import crops, store
from medmae.data.crops import CachedCrops, CropSampler, check_fits, prefetched
from medmae.data.loaders import CaseDataset
from medmae.data.manifests import load_split
from medmae.errors import UserError
from medmae.tasks import load_task


@pytest.fixture
def stored_demo(demo_root, tmp_path) -> tuple[Path, list]:
    """The demo set's cases preprocessed into a store: (its folder, the cases)."""
    task = load_task("demo")
    cases = load_split(task, demo_root).all_cases()
    return store.preprocess(task, cases, tmp_path / "store", progress=False).folder, cases


def volumes() -> list[torch.Tensor]:
    return [torch.randn(2, 10, 9, 8), torch.randn(2, 6, 7, 5)]


def _cached(dataset, task, **kwargs):
    return CachedCrops(
        dataset,
        task.roi,
        global_batch=2,
        crops=2,
        rank=0,
        world=1,
        seed=0,
        device=torch.device("cpu"),
        progress=False,
        **kwargs,
    )


@pytest.mark.parametrize("copy", ["_slices", "_gather"])  # the CPU's per-crop copies and the GPU's single gather
def test_each_crop_is_the_sub_volume_at_its_start_flipped_as_reported(copy, monkeypatch):
    vols = volumes()
    sampler = CropSampler(vols, roi=(5, 4, 5))
    monkeypatch.setattr(sampler, "_slices", getattr(sampler, copy))
    ids = torch.tensor([0, 1, 1, 0, 1, 0] * 5)
    crops, starts, flips = sampler.draw(ids, torch.Generator().manual_seed(0))
    assert crops.shape == (30, 2, 5, 4, 5)
    for crop, k, start, flip in zip(crops, ids.tolist(), starts.tolist(), flips):
        expected = vols[k][:, start[0] : start[0] + 5, start[1] : start[1] + 4, start[2] : start[2] + 5]
        axes = [1 + a for a in range(3) if flip[a]]
        assert torch.equal(crop, expected.flip(axes) if axes else expected)


@pytest.mark.parametrize("seeded", [False, True])  # a generator per batch, or one hashed seed per crop
def test_starts_cover_every_valid_position_evenly_and_flips_are_fair(seeded):
    sampler = CropSampler(volumes(), roi=(5, 4, 5))
    draws = 20000
    ids = torch.ones(draws, dtype=torch.long)
    if seeded:
        _, starts, flips = sampler.draw(ids, seeds=torch.arange(draws) * 7919 % (2**31 - 1))
    else:
        _, starts, flips = sampler.draw(ids, torch.Generator().manual_seed(1))
    for axis, positions in enumerate((6 - 5 + 1, 7 - 4 + 1, 5 - 5 + 1)):  # volume 1: 6 x 7 x 5
        counts = torch.bincount(starts[:, axis], minlength=positions)
        assert len(counts) == positions  # never beyond the last valid start
        assert (counts - draws / positions).abs().max() < 0.05 * draws / positions + 4 * (draws / positions) ** 0.5
    assert flips.float().mean(0).sub(0.5).abs().max() < 0.02


def test_a_seeded_crop_depends_on_its_seed_only():
    sampler = CropSampler(volumes(), roi=(5, 4, 5))
    crops, starts, flips = sampler.draw(torch.tensor([0, 1, 1]), seeds=torch.tensor([11, 12, 13]))
    alone, start, flip = sampler.draw(torch.tensor([1]), seeds=torch.tensor([12]))
    assert torch.equal(alone[0], crops[1]) and torch.equal(start[0], starts[1]) and torch.equal(flip[0], flips[1])


def test_volumes_smaller_than_the_roi_are_refused():
    with pytest.raises(ValueError, match="at least"):
        CropSampler(volumes(), roi=(8, 8, 8))


def test_cached_crops_deal_disjoint_shards_that_make_up_the_single_process_batch(demo_root):
    task = load_task("demo")
    dataset = CaseDataset(task, load_split(task, demo_root).all_cases(), "inference")
    loaders = [
        CachedCrops(
            dataset,
            task.roi,
            global_batch=4,
            crops=2,
            rank=r,
            world=w,
            seed=0,
            device=torch.device("cpu"),
            progress=False,
        )
        for r, w in ((0, 2), (1, 2), (0, 1))
    ]
    for loader in loaders:
        loader.sampler.set_pass(3)
    ranks, single = [list(loader) for loader in loaders[:2]], list(loaders[2])
    assert len(ranks[0]) == len(ranks[1]) == len(single) == 1  # 6 volumes: one global batch of 4
    assert all(b["image"].shape == (4, 1, *task.roi) for b in ranks[0] + ranks[1])  # 2 volumes x 2 crops
    seeds = [set(b["sample_seed"].tolist()) for b in (ranks[0][0], ranks[1][0])]
    assert not seeds[0] & seeds[1]
    by_seed = {int(s): crop for b in ranks[0] + ranks[1] for s, crop in zip(b["sample_seed"], b["image"], strict=True)}
    assert all(
        torch.equal(by_seed[int(s)], crop) for s, crop in zip(single[0]["sample_seed"], single[0]["image"], strict=True)
    )


def test_cached_crops_without_flips_keep_every_axis_as_it_is(demo_root):
    """``data.flips=false``: no crop is mirrored; with flips, some of the same seeds' crops are."""
    task = load_task("demo")
    dataset = CaseDataset(task, load_split(task, demo_root).all_cases(), "inference")
    device = torch.device("cpu")
    plain, flipped = (
        CachedCrops(dataset, task.roi, 4, 2, 0, 1, 0, device, progress=False, flips=flips) for flips in (False, True)
    )
    ids, seeds = torch.zeros(8, dtype=torch.int64), torch.arange(8)
    assert not plain.crops.draw(ids, seeds=seeds)[2].any() and flipped.crops.draw(ids, seeds=seeds)[2].any()
    for loader in (plain, flipped):
        loader.sampler.set_pass(0)
    assert not torch.equal(next(iter(plain))["image"], next(iter(flipped))["image"])


@pytest.mark.parametrize("workers", [0, 2])  # read in this process (through the prefetch thread) or by workers
def test_crops_read_from_the_store_are_the_crops_drawn_from_the_device(stored_demo, workers):
    folder, cases = stored_demo
    task = load_task("demo")
    dataset = CaseDataset(task, cases, "inference", store=folder)
    on_device = _cached(dataset, task, crops_from="device")
    from_store = _cached(dataset, task, crops_from="store", num_workers=workers)
    assert from_store.source == "store" and not hasattr(from_store, "crops")  # no volume held in this process
    for pass_key in (2, 3):
        for loader in (on_device, from_store):
            loader.sampler.set_pass(pass_key)
        for a, b in zip(on_device, from_store, strict=True):
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["sample_seed"], b["sample_seed"])


def test_volumes_are_kept_back_to_back_without_padding():
    vols = volumes()
    sampler = CropSampler(vols, roi=(5, 4, 5))
    assert sampler.nbytes == sum(v.numel() for v in vols) * 4  # not 2 x the largest volume
    assert all(torch.equal(kept, v) for kept, v in zip(sampler.volumes, vols, strict=True))


def test_auto_reads_crops_from_the_store_on_a_cpu_and_keeps_them_on_the_device_without_one(stored_demo, demo_root):
    folder, cases = stored_demo
    task = load_task("demo")
    assert _cached(CaseDataset(task, cases, "inference", store=folder), task).source == "store"
    assert _cached(CaseDataset(task, cases, "inference"), task).source == "device"
    with pytest.raises(UserError, match="data.crops_from=store needs the preprocessed store"):
        _cached(CaseDataset(task, cases, "inference"), task, crops_from="store")


def test_prefetched_keeps_order_raises_errors_and_stops_when_abandoned():
    assert list(prefetched(iter(range(50)), depth=3)) == list(range(50))

    def failing():
        yield 1
        raise ValueError("bad volume")

    with pytest.raises(ValueError, match="bad volume"):
        list(prefetched(failing()))
    produced = []

    def counting():
        for k in range(1000):
            produced.append(k)
            yield k

    stream = prefetched(counting(), depth=2)
    assert next(stream) == 0
    stream.close()
    assert len(produced) <= 5  # the producer stopped instead of drawing the whole pass
    assert not [t for t in threading.enumerate() if t.name == "medmae-prefetch"]


def test_an_epoch_that_ends_inside_a_pass_leaves_no_prefetch_thread_behind():
    for _ in range(3):
        stream = prefetched(iter(range(10)))
        for _ in range(9):  # the last item is already queued, the end-of-pass marker waits behind it
            next(stream)
            time.sleep(0.01)
        stream.close()
    assert not [t for t in threading.enumerate() if t.name == "medmae-prefetch"]


def test_a_gpu_cache_larger_than_half_the_free_memory_is_refused_with_the_remedies(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (4 * 2**30, 80 * 2**30))
    big = [torch.zeros(1).expand(4, 256, 256, 160)] * 20  # 20 volumes x 160 MiB, no memory behind them
    with pytest.raises(
        UserError, match=r"need 3\.1 GiB on cuda, more than 50% of its 4\.0 GiB free: set data\.crops_from=store"
    ):
        check_fits(big, torch.device("cuda"))
    check_fits(big[:5], torch.device("cuda"))  # 0.8 GiB fits


def test_a_bfloat16_store_gives_the_same_crops_rounded_to_8_bits_and_nearly_the_same_target(demo_root):
    """``data.cache_dtype=bfloat16``: the same crops (same starts and flips) in float32, each voxel within
    bf16's unit round-off (2^-8 relative) of the float32 store's; the MAE's per-patch normalised target
    moves by a mean squared 1e-4 at most (an MAE's loss is about 0.5)."""
    from medmae.models.mae import MaskedAutoencoder

    task = load_task("demo")
    dataset = CaseDataset(task, load_split(task, demo_root).all_cases(), "inference")
    exact, rounded = (
        CachedCrops(dataset, task.roi, 4, 2, 0, 1, 0, torch.device("cpu"), progress=False, dtype=dtype)
        for dtype in (torch.float32, torch.bfloat16)
    )
    assert rounded.crops.flat.dtype == torch.bfloat16
    ids, seeds = torch.arange(4), torch.arange(4)
    a, b = exact.crops.draw(ids, seeds=seeds)[0], rounded.crops.draw(ids, seeds=seeds)[0]
    assert b.dtype == torch.float32 and torch.all((a - b).abs() <= a.abs() * 2**-8)
    target = MaskedAutoencoder(3, task.roi, width=48, depth=1, num_heads=4, mlp_dim=96, decoder_depth=1).patch_target
    assert torch.mean((target(a)[0] - target(b)[0]) ** 2) < 1e-4


def test_a_bfloat16_device_store_counts_two_bytes_a_voxel_against_the_free_memory(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (4 * 2**30, 80 * 2**30))
    big = [torch.zeros(1).expand(4, 256, 256, 160)] * 20
    check_fits(big[:14], torch.device("cuda"), torch.bfloat16)  # 2.2 GiB in float32 would not fit, 1.1 GiB does
    with pytest.raises(UserError, match="or data.cache_dtype=bfloat16 to halve them"):
        check_fits(big[:14], torch.device("cuda"))


def test_crops_of_one_case_are_read_in_one_box_where_they_share_chunks_else_apart(tmp_path, monkeypatch):
    volume = torch.randn(1, 200, 40, 40)
    store.write_array(tmp_path / "c.image.b2nd", volume.numpy())
    (tmp_path / "c.json").write_text(json.dumps({"shape": list(volume.shape)}))
    reads = []
    monkeypatch.setattr(crops, "read_crop", lambda *args: reads.append(args) or store.read_crop(*args))
    reader = crops.StoreCrops(tmp_path, ["c"], (32, 32, 32))
    for starts, expected_reads in (([[0, 0, 0], [10, 4, 8]], 1), ([[0, 0, 0], [168, 8, 8]], 2)):
        reads.clear()
        got = reader.read(0, torch.tensor(starts))
        assert len(reads) == expected_reads
        for crop, (x, y, z) in zip(got, starts, strict=True):
            assert torch.equal(crop, volume[:, x : x + 32, y : y + 32, z : z + 32])
