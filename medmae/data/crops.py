"""Random ROI crops and flips drawn for a whole batch at once, on any device, or read from the store.

A batch's crop starts (uniform over every valid position) and flips (each axis with probability 1/2: the
distribution of MONAI's ``RandSpatialCropSamplesd(random_size=False)`` followed by ``RandFlipd(prob=0.5)``
on each axis) are functions of each crop's seed (:func:`seeded_boxes`). Crops come either from the
preprocessed volumes kept on the training device, back to back in one flat tensor (no padding; gathered in
one indexing operation on a GPU, copied slice by slice on a CPU, where that is about 5 times faster), or
from the preprocessed store (:mod:`medmae.data.store`), where DataLoader workers decompress only the crops
they draw, so host memory does not grow with the number of cases.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from medmae.data.loaders import CaseDataset, ShardSampler
from medmae.data.store import CHUNK, one_decompression_thread, read_crop, read_meta
from medmae.errors import UserError
from medmae.seeds import crop_seeds, item_seeds, seeded_noise

log = logging.getLogger("medmae")
DEVICE_SHARE = 0.5  # crops_from=auto: the volumes stay on a GPU when they take at most this share of its free memory


def boxes(u: torch.Tensor, span: torch.Tensor, flips: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Each crop's start ``[B, D]`` (uniform over ``span`` ``[B, D]`` valid starts) and flips ``[B, D]``
    (bool, each axis with probability 1/2 when ``flips``) from uniform noise ``u`` ``[B, 2D]`` in [0, 1)."""
    dims = span.shape[1]
    return (u[:, :dims] * span).long(), (u[:, dims:] < 0.5) & flips


def seeded_boxes(seeds: torch.Tensor, span: torch.Tensor, flips: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`boxes` as functions of each crop's seed ``[B]`` alone (:func:`seeded_noise`, stream 1), whatever
    batch, process or source it is drawn in."""
    return boxes(seeded_noise(seeds, 2 * span.shape[1], stream=1), span, flips)


class CropSampler:
    """Batched random crops of volumes kept in one flat tensor, back to back (no padding).

    Args:
        volumes: preprocessed volumes ``[C, *S_i]``, each at least ``roi`` along every axis.
        roi: crop size per spatial axis.
        device: where the volumes are kept and crops are drawn (the training device).
        flips: flip each axis of each crop with probability 1/2.
        dtype: how the volumes are kept: float32, or bfloat16 (half the memory and the gather's reads; the
            crops still come out float32, each voxel rounded to 8 significant bits).
    """

    def __init__(
        self,
        volumes: Sequence[torch.Tensor],
        roi: Sequence[int],
        device: torch.device | str = "cpu",
        flips: bool = True,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if not volumes:
            raise ValueError("no volumes to crop")
        self.roi = tuple(roi)
        self.flips = flips
        self.device = torch.device(device)
        shapes = torch.tensor([tuple(v.shape[1:]) for v in volumes])
        if shapes.shape[1] != len(self.roi) or (shapes < torch.tensor(self.roi)).any():
            raise ValueError(f"every volume must be at least {self.roi}; shapes {shapes.tolist()}")
        channels = {v.shape[0] for v in volumes}
        if len(channels) != 1:
            raise ValueError(f"volumes with different channel counts {sorted(channels)}")
        self.channels = channels.pop()
        sizes = [v.numel() for v in volumes]
        self.flat = torch.empty(sum(sizes), device=self.device, dtype=dtype)
        self.offsets = torch.tensor([0, *sizes[:-1]]).cumsum(0).to(self.device)
        self.volumes = []  # views of the flat tensor, [C, *S_i]
        for volume, offset, size in zip(volumes, self.offsets.tolist(), sizes):
            view = self.flat[offset : offset + size].view(volume.shape)
            view.copy_(volume)
            self.volumes.append(view)
        # strides of [C, *S_i] per volume, row-major: [V, 1 + D]
        dims = shapes.flip(1).cumprod(1).flip(1)
        self.strides = torch.cat([dims, torch.ones(len(volumes), 1, dtype=dims.dtype)], 1).to(self.device)
        self.span = (shapes - torch.tensor(self.roi) + 1).to(self.device)  # valid start positions per axis

    def __len__(self) -> int:
        return len(self.volumes)

    @property
    def nbytes(self) -> int:
        return self.flat.numel() * self.flat.element_size()

    def draw(
        self, volume_ids: torch.Tensor, generator: torch.Generator | None = None, seeds: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One crop of each listed volume.

        Starts and flips are drawn for the whole batch at once. On a GPU the crops are then gathered in one
        indexing operation; on the CPU one slice copy per crop is about 5 times faster than that gather
        (its index arithmetic per voxel costs more than the copy), so the CPU copies crop by crop.

        Args:
            volume_ids: ``[B]`` indices into the volumes (repeat an index for several crops of it).
            generator: a ``torch.Generator`` on the sampler's device, for reproducible batches.
            seeds: ``[B]`` per-crop seeds instead: each crop's start and flips are then a function of its
                seed alone (:func:`seeded_boxes`).

        Returns:
            crops ``[B, C, *roi]``, starts ``[B, D]`` and flips ``[B, D]`` (bool) of each crop.
        """
        ids = volume_ids.to(self.device)
        dims = len(self.roi)
        if seeds is None:
            u = torch.rand(len(ids), 2 * dims, generator=generator, device=self.device, dtype=torch.float64)
            starts, flips = boxes(u, self.span[ids], self.flips)
        else:
            starts, flips = seeded_boxes(seeds.to(self.device), self.span[ids], self.flips)
        copy = self._gather if self.device.type == "cuda" else self._slices
        return copy(ids, starts, flips).float(), starts, flips

    def _gather(self, ids: torch.Tensor, starts: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        """All crops by one index into the flat tensor: per axis, start + offset (or its mirror where flipped),
        times the volume's stride."""
        dims = len(self.roi)
        strides = self.strides[ids]  # [B, 1 + D]
        channel = torch.arange(self.channels, device=self.device).view(1, -1, *[1] * dims)
        index = self.offsets[ids].view(-1, *[1] * (dims + 1)) + channel * strides[:, 0].view(-1, 1, *[1] * dims)
        for axis, size in enumerate(self.roi):
            offset = torch.arange(size, device=self.device)
            along = torch.where(
                flips[:, axis, None], starts[:, axis, None] + size - 1 - offset, starts[:, axis, None] + offset
            )
            shape = [len(ids), 1] + [1] * dims
            shape[2 + axis] = size
            index = index + (along * strides[:, 1 + axis, None]).view(shape)
        return self.flat[index]

    def _slices(self, ids: torch.Tensor, starts: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        """Crop by crop: a slice of the volume, flipped where drawn, copied into the batch."""
        crops = torch.empty(len(ids), self.channels, *self.roi, dtype=self.flat.dtype)
        for k, (volume, start, flip) in enumerate(zip(ids.tolist(), starts.tolist(), flips.tolist())):
            crop = self.volumes[volume][(slice(None), *[slice(a, a + size) for a, size in zip(start, self.roi)])]
            axes = [1 + axis for axis, flipped in enumerate(flip) if flipped]
            crops[k] = crop.flip(axes) if axes else crop
        return crops


class CachedCrops:
    """A drop-in for the pretraining DataLoader over ``dataset`` (its ``inference`` chain: preprocessed and
    padded to the ROI): each pass deals a seeded permutation of the volumes to the processes
    (:class:`ShardSampler`) and yields ``{"image": [b x crops, C, *roi], "sample_seed": [b x crops]}``
    batches on ``device``.

    Where the crops come from (``crops_from``): ``device``, the volumes read once into a
    :class:`CropSampler` on ``device`` (every draw runs there); ``store``, the dataset's preprocessed store,
    read crop by crop by ``num_workers`` DataLoader workers (:class:`StoreCrops`) and copied to ``device``;
    ``auto``, the device on a GPU where the volumes take at most :data:`DEVICE_SHARE` of its free memory,
    else the store (always the store on a CPU, so host memory stays flat; the device without a store).

    Each crop's position, flips and mask are functions of its seed (run seed, pass, case, crop) only, so
    both sources give the same crops, several processes see exactly the crops and masks of one process
    over the same global batch, and a resumed run repeats an uninterrupted one.
    """

    def __init__(
        self,
        dataset: CaseDataset,
        roi: Sequence[int],
        global_batch: int,
        crops: int,
        rank: int,
        world: int,
        seed: int,
        device: torch.device,
        progress: bool = True,
        flips: bool = True,
        dtype: torch.dtype = torch.float32,
        crops_from: str = "auto",
        num_workers: int = 0,
    ) -> None:
        self.sampler = ShardSampler(len(dataset), global_batch, rank, world, seed)  # refuses a bad batch size first
        self.per_rank = global_batch // world
        self.copies = crops
        self.seed = seed
        self.device = device
        self.source = crops_source(dataset, crops_from, device, dtype)
        if progress:
            log.info(
                "pretraining crops from %s", "the store, read by loader workers" if self.source == "store" else device
            )
        if self.source == "store":
            reader = StoreCrops(dataset.store, [case.id for case in dataset.cases], roi, flips)
            self.loader = DataLoader(
                reader,
                batch_size=None,
                sampler=_Plan(self),
                num_workers=num_workers,
                persistent_workers=num_workers > 0,
                pin_memory=device.type == "cuda",
                worker_init_fn=one_decompression_thread,
            )
            return
        volumes = [
            torch.as_tensor(dataset[k]["image"]).as_subclass(torch.Tensor)
            for k in tqdm(range(len(dataset)), desc="caching volumes", unit="volume", disable=not progress or None)
        ]
        check_fits(volumes, device, dtype)
        self.crops = CropSampler(volumes, roi, device, flips, dtype)

    def __len__(self) -> int:
        return len(self.sampler) // self.per_rank

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self.source == "store":
            batches = iter(self.loader) if self.loader.num_workers else prefetched(self.loader)
            return (to_device(batch, self.device) for batch in batches)
        return (
            {"image": self.crops.draw(ids, seeds=seeds)[0], "sample_seed": seeds}
            for ids, seeds in ((i.to(self.device), z.to(self.device)) for i, z in self.plan())
        )

    def plan(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This process's batches of the pass: volume ids ``[b x crops]`` and per-crop seeds ``[b x crops]``."""
        order = torch.tensor([index for _, index in self.sampler], dtype=torch.int64)
        ids = order.repeat_interleave(self.copies)
        sample_seeds = crop_seeds(item_seeds(self.seed, self.sampler.key, order), self.copies)
        step = self.per_rank * self.copies
        for first in range(0, len(self) * step, step):
            yield ids[first : first + step], sample_seeds[first : first + step]


class _Plan(Sampler):
    """The DataLoader's view of :meth:`CachedCrops.plan`: one ``(ids, seeds)`` per batch, read in the main
    process each pass (so it follows the pass the training loop sets)."""

    def __init__(self, crops: CachedCrops) -> None:
        self.crops = crops

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.crops.plan()

    def __len__(self) -> int:
        return len(self.crops)


class StoreCrops(Dataset):
    """``reader[(ids, seeds)]`` -> ``{"image": [B, C, *roi], "sample_seed": [B]}``: the crops of the listed
    cases (``ids`` ``[B]`` into ``case_ids``) at the starts and flips of :func:`seeded_boxes`, read from the
    store ``folder`` (only the chunks each crop touches are decompressed)."""

    def __init__(self, folder: Path, case_ids: list[str], roi: Sequence[int], flips: bool = True) -> None:
        self.folder, self.case_ids, self.roi, self.flips = folder, case_ids, tuple(roi), flips
        shapes = torch.tensor([read_meta(folder, case_id)["shape"][1:] for case_id in case_ids])
        if (shapes < torch.tensor(self.roi)).any():
            raise ValueError(f"every volume must be at least {self.roi}; shapes {shapes.tolist()}")
        self.span = shapes - torch.tensor(self.roi) + 1

    def __len__(self) -> int:
        return len(self.case_ids)

    def __getitem__(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        ids, seeds = batch
        starts, flips = seeded_boxes(seeds, self.span[ids], self.flips)
        crops: list[torch.Tensor] = [torch.empty(0)] * len(ids)
        for volume in ids.unique().tolist():
            mine = (ids == volume).nonzero().flatten().tolist()
            for k, crop in zip(mine, self.read(volume, starts[mine]), strict=True):
                axes = [1 + axis for axis in range(len(self.roi)) if flips[k, axis]]
                crops[k] = crop.flip(axes) if axes else crop
        return {"image": torch.stack(crops), "sample_seed": seeds}

    def read(self, volume: int, starts: torch.Tensor) -> list[torch.Tensor]:
        """The crops ``[C, *roi]`` of one case at ``starts`` ``[n, D]``, each stored chunk decompressed once: one
        read of the box around them all where it touches no more chunks than their own reads together (the
        crops of a volume in one batch often share chunks), else one read per crop."""
        roi = torch.tensor(self.roi)
        first, last = starts.min(0).values, (starts + roi).max(0).values

        def chunks(low: torch.Tensor, high: torch.Tensor) -> int:
            return int(torch.prod((high - 1) // CHUNK - low // CHUNK + 1))

        case_id = self.case_ids[volume]
        if chunks(first, last) > sum(chunks(start, start + roi) for start in starts):
            return [
                torch.from_numpy(read_crop(self.folder, case_id, s.tolist(), self.roi, False)["image"]) for s in starts
            ]
        box = torch.from_numpy(read_crop(self.folder, case_id, first.tolist(), (last - first).tolist(), False)["image"])
        return [box[(slice(None), *[slice(a, a + r) for a, r in zip((s - first).tolist(), self.roi)])] for s in starts]


def crops_source(dataset: CaseDataset, crops_from: str, device: torch.device, dtype: torch.dtype) -> str:
    """``device`` or ``store`` for ``data.crops_from`` (see :class:`CachedCrops`)."""
    if crops_from == "store" and dataset.store is None:
        raise UserError("data.crops_from=store needs the preprocessed store: data.store=auto or a folder, not off")
    if crops_from != "auto":
        return crops_from
    if dataset.store is None:
        return "device"
    if device.type != "cuda":
        return "store"
    needed = sum(int(np.prod(read_meta(dataset.store, case.id)["shape"])) for case in dataset.cases) * dtype.itemsize
    free, _ = torch.cuda.mem_get_info(device)
    return "device" if needed <= DEVICE_SHARE * free else "store"


def check_fits(
    volumes: Sequence[torch.Tensor],
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    share: float = DEVICE_SHARE,
) -> None:
    """Refuse volumes on a GPU that would take more than ``share`` of its free memory (training needs the rest)."""
    if device.type != "cuda":
        return
    needed = sum(v.numel() for v in volumes) * dtype.itemsize
    free, _ = torch.cuda.mem_get_info(device)
    if needed > share * free:
        raise UserError(
            f"the {len(volumes)} preprocessed volumes need {needed / 2**30:.1f} GiB on {device}, more than "
            f"{share:.0%} of its {free / 2**30:.1f} GiB free: set data.crops_from=store (or auto) to read crops "
            "from the preprocessed store, or data.cache_dtype=bfloat16 to halve them"
        )


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """A (pinned, for CUDA) host batch copied to ``device`` without blocking the host."""
    return {k: v.to(device, non_blocking=device.type == "cuda") for k, v in batch.items()}


def pinned(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.pin_memory() for k, v in batch.items()}


def prefetched(items: Iterable, depth: int = 1) -> Iterator:
    """``items`` produced ``depth`` ahead by a background thread, in order; errors are raised in the caller.
    Torch's crop indexing releases the GIL, so drawing overlaps the training step. When the caller stops
    early (an epoch ends inside a pass), the thread stops too and drops what it holds."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def offer(item: object) -> bool:
        """Queue ``item`` unless the caller has gone; True when queued."""
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer(item):
                    return
            offer(done)
        except BaseException as error:  # noqa: BLE001 - handed to the consumer thread, which raises it
            offer(error)

    worker = threading.Thread(target=produce, daemon=True, name="medmae-prefetch")
    worker.start()
    try:
        while (item := ready.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # drain so that a blocked put returns, then let the thread end
            with contextlib.suppress(queue.Empty):
                ready.get(timeout=0.05)
        worker.join()
