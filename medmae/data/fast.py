"""Random ROI crops and flips drawn for a whole batch in one indexing operation, on any device.

The volumes are preprocessed once (the task's deterministic chain: orientation, spacing, intensity,
foreground crop, padding to the ROI) and kept in one zero-padded tensor. A batch is then drawn with
no per-sample Python: uniform crop starts over every valid position and a flip per axis with
probability 1/2, the distribution of MONAI's ``RandSpatialCropSamplesd(random_size=False)`` followed by
``RandFlipd(prob=0.5)`` on each axis.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from tqdm import tqdm

from medmae.data.loaders import CaseDataset, ShardSampler, crop_seed, item_seed


class CropSampler:
    """Batched random crops of cached volumes.

    Args:
        volumes: preprocessed volumes ``[C, *S_i]``, each at least ``roi`` along every axis.
        roi: crop size per spatial axis.
        device: where the volumes are kept and crops are drawn (the training device).
        flips: flip each axis of each crop with probability 1/2.
    """

    def __init__(self, volumes: Sequence[torch.Tensor], roi: Sequence[int], device: torch.device | str = "cpu",
                 flips: bool = True) -> None:
        if not volumes:
            raise ValueError("no volumes to crop")
        self.roi, self.flips, self.device = tuple(roi), flips, torch.device(device)
        shapes = torch.tensor([tuple(v.shape[1:]) for v in volumes])
        if shapes.shape[1] != len(self.roi) or (shapes < torch.tensor(self.roi)).any():
            raise ValueError(f"every volume must be at least {self.roi}; shapes {shapes.tolist()}")
        channels = {v.shape[0] for v in volumes}
        if len(channels) != 1:
            raise ValueError(f"volumes with different channel counts {sorted(channels)}")
        self.store = torch.zeros(len(volumes), channels.pop(), *shapes.max(0).values.tolist(), device=self.device)
        for k, volume in enumerate(volumes):
            self.store[(k, slice(None), *[slice(0, s) for s in volume.shape[1:]])] = volume.to(self.device)
        self.span = (shapes - torch.tensor(self.roi) + 1).to(self.device)  # valid start positions per axis

    def __len__(self) -> int:
        return self.store.shape[0]

    def draw(self, volume_ids: torch.Tensor, generator: torch.Generator | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One crop of each listed volume.

        Args:
            volume_ids: ``[B]`` indices into the volumes (repeat an index for several crops of it).
            generator: a ``torch.Generator`` on the sampler's device, for reproducible batches.

        Returns:
            crops ``[B, C, *roi]``, starts ``[B, D]`` and flips ``[B, D]`` (bool) of each crop.
        """
        ids = volume_ids.to(self.device)
        dims = len(self.roi)
        u = torch.rand(len(ids), dims, generator=generator, device=self.device)
        starts = (u * self.span[ids]).long()
        flips = (torch.rand(len(ids), dims, generator=generator, device=self.device) < 0.5) & self.flips
        index = [ids.view(-1, *[1] * (dims + 1)), torch.arange(self.store.shape[1], device=self.device).view(1, -1, *[1] * dims)]
        for axis, size in enumerate(self.roi):
            offset = torch.arange(size, device=self.device)
            along = torch.where(flips[:, axis, None], starts[:, axis, None] + size - 1 - offset, starts[:, axis, None] + offset)
            shape = [len(ids), 1] + [1] * dims
            shape[2 + axis] = size
            index.append(along.view(shape))
        return self.store[tuple(index)], starts, flips


class CachedCrops:
    """A drop-in for the pretraining DataLoader over ``dataset`` (its ``inference`` chain: preprocessed and
    padded to the ROI, read once): each pass deals a seeded permutation of the volumes to
    the processes (:class:`ShardSampler`) and yields ``{"image": [b x crops, C, *roi], "sample_seed": [...]}``
    batches drawn by a :class:`CropSampler` on ``device``.

    Crops are seeded per batch and process, so unlike the MONAI path they differ between one process and
    several; the masks stay seeded per sample.
    """

    def __init__(self, dataset: CaseDataset, roi: Sequence[int], global_batch: int, crops: int, rank: int, world: int,
                 seed: int, device: torch.device, progress: bool = True) -> None:
        volumes = [torch.as_tensor(dataset[k]["image"]).as_subclass(torch.Tensor)
                   for k in tqdm(range(len(dataset)), desc="caching volumes", unit="volume", disable=not progress or None)]
        self.crops = CropSampler(volumes, roi, device)
        self.sampler = ShardSampler(len(volumes), global_batch, rank, world, seed)
        self.per_rank, self.copies, self.seed, self.device = global_batch // world, crops, seed, device

    def __len__(self) -> int:
        return len(self.sampler) // self.per_rank

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        order = [index for _, index in self.sampler]
        key = self.sampler.key
        for first in range(0, len(self) * self.per_rank, self.per_rank):
            chosen = order[first:first + self.per_rank]
            generator = torch.Generator(device=self.device).manual_seed(item_seed(self.seed, key, chosen[0]))
            ids = torch.tensor(chosen).repeat_interleave(self.copies)
            seeds = [crop_seed(item_seed(self.seed, key, i), k) for i in chosen for k in range(self.copies)]
            yield {"image": self.crops.draw(ids, generator)[0], "sample_seed": torch.tensor(seeds)}
