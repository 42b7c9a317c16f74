"""MONAI transform chains per task and stage: ``train``, ``validation``, ``pretrain`` and ``inference``
(image only, as validation).

3D segmentation, all stages: read, orientation, spacing (bilinear image, nearest label), the task's
intensity rule, crop to the image's non-zero foreground (where the task says so), pad to at least the
ROI. Validation stops there (MetaTensors keep every applied operation, so a
prediction can be inverted to the original grid). Train adds positive/negative-balanced ROI crops,
random flips, 90-degree rotations in the axial plane (where the ROI's axial plane is square) and small
intensity scale and shift; where labels name a side (BTCV's left and right kidney), no left-right flip
and no axial rotation, which would swap the sides but not the labels. Pretrain takes random ROI crops of
the image foreground and random flips only.
Regions (msd_brain) are built from the label map after cropping.

2D classification: read as one grey channel, scale to 0..1, histogram equalisation; validation resizes
to the ROI; train and pretrain take a random resized crop and a horizontal flip.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    ClipIntensityPercentilesd,
    Compose,
    CropForegroundd,
    DeleteItemsd,
    EnsureTyped,
    HistogramNormalized,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandomizableTransform,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandSpatialCropSamplesd,
    Resize,
    Resized,
    ScaleIntensityd,
    ScaleIntensityRanged,
    Spacingd,
    SpatialPadd,
)

from medmae.data.check import read_errors
from medmae.data.readers import integer_labels, on_image_axes, read_channels
from medmae.errors import DataError
from medmae.tasks import TaskSpec

STAGES = ("train", "validation", "pretrain", "inference")
IMAGE_ONLY = ("pretrain", "inference")


def is_nonzero(x: torch.Tensor) -> torch.Tensor:
    """Foreground for cropping: CT below the window maps to exactly 0; MRI background is 0."""
    return x != 0


class ReadImaged(MapTransform):
    """Read each key's file (or list of channel files) with :func:`medmae.data.readers.read_channels` into
    a MetaTensor ``[C, *S]``
    carrying the affine; images become float32, labels integers (float labels rounded, see
    :func:`medmae.data.readers.integer_labels`); a label that is the image's grid stored in another
    orientation is turned into the image's (:func:`medmae.data.readers.on_image_axes`). With ``task``, a
    file that ``medmae data check`` would call an error (dimensionality, channels, NaN, inf or intensities
    beyond 1e10, label grid or values; not a label without foreground) raises :class:`DataError`."""

    def __init__(self, keys: str | Sequence[str], task: TaskSpec | None = None) -> None:
        super().__init__(keys)
        self.task = task

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        read = {key: read_channels(d[key]) for key in self.key_iterator(d)}
        if "image" in read and "label" in read:
            read["label"] = on_image_axes(read["label"], read["image"])
        if self.task is not None and "image" in read:
            errors = read_errors(self.task, read["image"], read.get("label"))
            if errors:
                path, _, problem = errors[0].partition(": ")
                raise DataError(path, problem)
        for key, image in read.items():
            array = integer_labels(image) if key == "label" else image.array.astype(np.float32, copy=False)
            d[key] = MetaTensor(
                torch.from_numpy(np.ascontiguousarray(array)),
                affine=torch.from_numpy(image.affine),
                meta={"filename_or_obj": str(image.path)},
            )
        return d


class SamplingLabeld(MapTransform):
    """Add ``sampling_label``: ``label`` ``[1, *S]`` with the ignore label's voxels as background, so that
    crop centres drawn on foreground fall on labelled classes, never on unlabelled voxels (nnU-Net samples
    its class locations without them)."""

    def __init__(self, ignore: int) -> None:
        super().__init__(["label"])
        self.ignore = ignore

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        d["sampling_label"] = torch.where(torch.as_tensor(d["label"]) == self.ignore, 0, torch.as_tensor(d["label"]))
        return d


class LabelToRegionsd(MapTransform):
    """Label map ``[1, *S]`` -> overlapping binary regions ``[R, *S]`` (float32), one per named set of
    label values, e.g. whole tumour {1, 2, 3}, tumour core {2, 3}, enhancing tumour {3}; with an ``ignore``
    label value, ``[R + 1, *S]``: the voxels of that value last (no region holds them)."""

    def __init__(
        self, keys: str | Sequence[str], regions: Mapping[str, Sequence[int]], ignore: int | None = None
    ) -> None:
        super().__init__(keys)
        self.regions = {name: torch.tensor(values) for name, values in regions.items()}
        self.ignore = ignore

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            masks = [torch.isin(label, values).float() for values in self.regions.values()]
            d[key] = torch.cat(masks + ([] if self.ignore is None else [(label == self.ignore).float()]), dim=0)
        return d


class RandResizedCropd(RandomizableTransform, MapTransform):
    """Crop a random region covering ``scale`` of the image area with aspect ratio in ``ratio`` (log-uniform),
    then resize it to ``size`` (torchvision's RandomResizedCrop); falls back to the whole image."""

    def __init__(
        self,
        keys: str | Sequence[str],
        size: Sequence[int],
        scale: tuple[float, float] = (0.5, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
    ) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob=1.0)
        self.scale, self.ratio = scale, ratio
        self.resize = Resize(spatial_size=tuple(size), mode="bilinear", anti_aliasing=True)
        self.box: tuple[int, int, int, int] = (0, 0, 0, 0)

    def randomize(self, shape: Sequence[int]) -> None:
        height, width = shape
        for _ in range(10):
            area = height * width * self.R.uniform(*self.scale)
            aspect = math.exp(self.R.uniform(math.log(self.ratio[0]), math.log(self.ratio[1])))
            w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if 0 < w <= width and 0 < h <= height:
                self.box = (self.R.randint(0, height - h + 1), self.R.randint(0, width - w + 1), h, w)
                return
        self.box = (0, 0, height, width)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        first = next(iter(self.key_iterator(d)))
        self.randomize(d[first].shape[1:])
        top, left, h, w = self.box
        for key in self.key_iterator(d):
            d[key] = self.resize(d[key][:, top : top + h, left : left + w])
        return d


def intensity_transforms(task: TaskSpec) -> list:
    rule = task.intensity["rule"]
    if rule == "window":
        low, high = task.intensity["window"]
        return [ScaleIntensityRanged("image", a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True)]
    if rule == "zscore_nonzero":
        return [NormalizeIntensityd("image", nonzero=True, channel_wise=True)]
    if rule == "percentile_zscore":
        low, high = task.intensity["percentiles"]
        return [
            ClipIntensityPercentilesd("image", lower=low, upper=high, channel_wise=True),
            NormalizeIntensityd("image", channel_wise=True),
        ]
    return [ScaleIntensityd("image", minv=0.0, maxv=1.0), HistogramNormalized("image", num_bins=256, min=0, max=1)]


def preprocessing_steps(task: TaskSpec, keys: Sequence[str]) -> list:
    """The deterministic first steps of every 3D segmentation chain, shared by training and the preprocessed
    store (:mod:`medmae.data.store`): read (``image`` ``[C, *S]`` float32, ``label`` ``[1, *S]`` integer),
    reorient, resample (bilinear image, nearest label), the intensity rule, crop to the image's non-zero
    foreground (where the task says so), pad to at least the ROI. ``keys``: ``["image"]`` or
    ``["image", "label"]``."""
    keys = list(keys)
    modes = ("bilinear", "nearest")[: len(keys)]
    steps: list = [ReadImaged(keys, task)]
    if task.orientation:
        steps.append(Orientationd(keys, axcodes=task.orientation, labels=(("L", "R"), ("P", "A"), ("I", "S"))))
    if task.spacing:
        steps.append(Spacingd(keys, pixdim=task.spacing, mode=modes))
    steps += intensity_transforms(task)
    if task.crop_foreground:
        steps.append(CropForegroundd(keys, source_key="image", select_fn=is_nonzero, allow_smaller=True))
    steps.append(SpatialPadd(keys, spatial_size=task.roi))
    return steps


def segmentation_transform(task: TaskSpec, stage: str, samples: int = 2, first: list | None = None) -> Compose:
    """3D chains; ``samples`` ROI crops per volume while training and pretraining. ``first``: steps that
    replace the deterministic steps and the crops, such as reading them from the preprocessed store
    (:func:`medmae.data.store.store_steps`)."""
    keys = ["image"] if stage in IMAGE_ONLY else ["image", "label"]
    roi = task.roi
    chain: list = preprocessing_steps(task, keys) if first is None else list(first)
    if stage == "train":
        if first is None:
            chain += positive_negative_crops(task, keys, samples)
        chain += [RandFlipd(keys, prob=0.2, spatial_axis=axis) for axis in range(3) if axis or not task.lateral]
        if roi[0] == roi[1] and not task.lateral:  # a quarter turn of a non-square axial plane changes the shape
            chain.append(RandRotate90d(keys, prob=0.2, max_k=3, spatial_axes=(0, 1)))
        chain += [
            RandScaleIntensityd("image", factors=0.1, prob=0.5),
            RandShiftIntensityd("image", offsets=0.1, prob=0.5),
        ]
    elif stage == "pretrain":
        if first is None:
            chain.append(RandSpatialCropSamplesd(keys, roi_size=roi, num_samples=samples, random_size=False))
        chain += [RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in range(3)]
    if task.regions and stage not in IMAGE_ONLY:
        chain.append(LabelToRegionsd("label", task.regions, task.ignore_label))
    chain.append(EnsureTyped(keys, dtype=[torch.float32, torch.float32 if task.regions else torch.long][: len(keys)]))
    return Compose(chain)


def positive_negative_crops(task: TaskSpec, keys: list[str], samples: int) -> list:
    """``samples`` ROI crops per volume, centred on labelled voxels or background with equal odds (MONAI's
    ``RandCropByPosNegLabeld``). Negative centres inside the body for CT (window: air is 0); anywhere in the
    cropped box for MRI, whose z-scored tissue can be negative. Crops use the label map itself: MONAI would
    read a multi-channel region label as one-hot and drop its first channel (whole tumour). Centres never
    fall on the ignore label (:class:`SamplingLabeld`)."""
    body = {"image_key": "image", "image_threshold": 0} if task.intensity["rule"] == "window" else {}
    sampling = "label" if task.ignore_label is None else "sampling_label"
    crop = RandCropByPosNegLabeld(
        keys, label_key=sampling, spatial_size=task.roi, pos=1, neg=1, num_samples=samples, **body
    )
    if task.ignore_label is None:
        return [crop]
    return [SamplingLabeld(task.ignore_label), crop, DeleteItemsd("sampling_label")]


def classification_transform(task: TaskSpec, stage: str) -> Compose:
    """2D chains; the label is the targets vector, passed through."""
    chain: list = [ReadImaged("image", task), *intensity_transforms(task)]
    if stage in ("validation", "inference"):
        chain.append(Resized("image", spatial_size=task.roi, mode="bilinear", anti_aliasing=True))
    else:
        chain += [RandResizedCropd("image", size=task.roi), RandFlipd("image", prob=0.5, spatial_axis=1)]
    chain.append(EnsureTyped("image", dtype=torch.float32))
    return Compose(chain)


def build_transform(task: TaskSpec, stage: str, samples: int = 2, first: list | None = None) -> Compose:
    """The chain of ``task`` for ``stage``: ``train``, ``validation``, ``pretrain`` (image only, random crops) or
    ``inference`` (image only, as validation); ``first`` replaces the first steps of a 3D segmentation chain
    (:func:`segmentation_transform`)."""
    if stage not in STAGES:
        raise ValueError(f"stage {stage!r}: choose one of {STAGES}")
    if task.is_classification:
        return classification_transform(task, stage)
    return segmentation_transform(task, stage, samples, first)
