"""A task file inferred from a dataset (``medmae task init``): layout, channels and labels from its
``dataset.json`` (nnU-Net v2, MSD or MONAI datalist), spacing, intensity rule and ROI from its images.
Each inference comes with a line that says what it was inferred from."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from medmae.data.cases import Case
from medmae.data.check import label_values
from medmae.data.layout import DATALISTS
from medmae.data.manifests import read_datalist
from medmae.data.nnunet import is_nnunet
from medmae.data.readers import integer_labels, on_image_axes, read_channels, read_header, read_image
from medmae.errors import DataError

HEADER_SAMPLE = 50  # images whose headers give the spacing and the shape
VOXEL_SAMPLE = 8  # labelled images whose voxels give the intensity rule
ROI_MULTIPLE, ROI_MAX = 16, 128
AIR_HU = -500  # a single channel this low is CT in Hounsfield units (air is -1000)


def describe_dataset(root: Path, name: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """The task file's mapping for the dataset at ``root`` and, for each inferred key, why."""
    manifest = next((root / n for n in DATALISTS if (root / n).is_file()), None)
    if manifest is None:
        raise DataError(root, f"no {' or '.join(DATALISTS)} here: medmae task init reads the dataset's description")
    raw = json.loads(manifest.read_text(encoding="utf-8-sig"))
    cases = read_datalist(manifest, root)
    labelled = cases["training"] + cases["validation"] + cases["test"]
    if not labelled:
        raise DataError(manifest, "lists no labelled case: a task needs labels to know its classes")
    why = [f"name: {name or dataset_name(root)} ({'--name' if name else 'the folder name'})"]
    name = name or dataset_name(root)
    record: dict[str, Any] = {"name": name, "title": str(raw.get("name") or raw.get("description") or name)}
    record["layout"] = "nnunet" if is_nnunet(raw) else "msd" if manifest.name == "dataset.json" else "btcv"
    why.append(f"layout: {record['layout']} ({manifest.name}{', nnU-Net v2' if is_nnunet(raw) else ''})")
    record["spatial_dims"] = 3
    record["channels"], said = channel_names(raw, labelled[0])
    why.append(f"channels: {', '.join(record['channels'])} ({said})")
    classes, said = label_names(raw, labelled, manifest)
    record |= classes
    regions = f"; regions {', '.join(classes['regions'])}" if "regions" in classes else ""
    why.append(f"labels: {', '.join(classes['labels'])}{regions} ({said})")
    record["orientation"] = "RAS"
    why.append("orientation: RAS (medmae's convention; every image is turned to it)")
    spacing, roi, said = geometry(labelled + cases["unlabelled"])
    record["spacing"], record["roi"] = spacing, roi
    why.append(f"spacing: {spacing} mm and roi: {roi} ({said})")
    record["intensity"], record["crop_foreground"], said = intensity_rule(
        record["channels"], labelled, record.get("ignore_label")
    )
    why.append(f"intensity: {record['intensity']}, crop_foreground: {record['crop_foreground']} ({said})")
    record["validation"] = {"fraction": 0.2, "seed": 0}
    split = "the datalist's parts" if cases["validation"] or cases["test"] else "fold0 (5 folds by case id)"
    why.append(f"validation: 20 % of the training cases, seed 0 (the default); no manifest: the split is {split}")
    return record, why


def dataset_name(root: Path) -> str:
    """``Dataset004_Hippocampus`` or ``Task04_Hippocampus`` -> ``hippocampus``: lower case, words joined by _."""
    return snake(re.sub(r"^(Dataset\d+|Task\d+)_", "", root.resolve().name))


def channel_names(raw: dict[str, Any], first: Case) -> tuple[list[str], str]:
    """The channel names from ``channel_names`` (nnU-Net) or ``modality`` (MSD), else one per channel."""
    named = raw.get("channel_names") or raw.get("modality")
    if isinstance(named, dict) and named:
        return [str(named[key]) for key in sorted(named, key=int)], "dataset.json"
    count = read_channels(first.image_files).array.shape[0]
    return [f"channel{k}" for k in range(count)] if count > 1 else ["image"], f"{first.image.name} has {count}"


def snake(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(text).lower()).strip("_") or "unnamed"


def label_names(raw: dict[str, Any], labelled: list[Case], source: Path) -> tuple[dict[str, Any], str]:
    """The task file's ``labels`` (index = value) and, where the dataset has them, ``regions``,
    ``regions_class_order`` and ``ignore_label``, from ``labels``: nnU-Net's name -> value (or -> list of
    values: regions), MSD's value -> name; else ``label1`` ... for the values of a sample of label maps. Values
    that are not 0, 1, ..., N are refused as nnU-Net refuses them, naming the remapping that would fix them."""
    given = raw.get("labels")
    if isinstance(given, dict) and given and is_nnunet(raw):
        return nnunet_classes(given, raw.get("regions_class_order"), source)
    if isinstance(given, dict) and given:
        values = {int(k): snake(v) for k, v in given.items()}
        refuse_gaps(set(values), source, "dataset.json's labels")
        return {"labels": [values[k] for k in sorted(values)]}, "dataset.json, MSD's labels"
    read = labelled[:VOXEL_SAMPLE]
    values = map_values(read) | {0}
    if values != set(range(len(values))) and len(labelled) > len(read):
        read = labelled  # a rare value may be missing from the sample: read every label map before refusing
        values = map_values(read) | {0}
    refuse_gaps(values, source, f"{len(read)} label maps")
    return {
        "labels": ["background", *[f"label{k}" for k in range(1, len(values))]]
    }, f"the values of {len(read)} label maps"


def map_values(cases: list[Case]) -> set[int]:
    """Every value the label maps of ``cases`` hold."""
    return set().union(*(label_values(integer_labels(read_image(case.label))) for case in cases))


def refuse_gaps(values: set[int], source: Path, where: str) -> None:
    """Refuse label ``values`` that are not 0, 1, ..., N (nnU-Net's rule; medmae's labels are indexed by
    value), naming the values and the remapping to consecutive ones."""
    if values == set(range(len(values))):
        return
    remap = ", ".join(f"{old} -> {new}" for new, old in enumerate(sorted(values)) if old != new)
    raise DataError(
        source,
        f"label values {sorted(values)} in {where} are not consecutive (0, 1, 2, ...), as nnU-Net and medmae "
        f"need: remap {remap} in every label map (and in dataset.json), then run medmae task init again",
    )


def nnunet_classes(given: dict[str, Any], order: Any, source: Path) -> tuple[dict[str, Any], str]:
    """nnU-Net's ``labels`` (and ``regions_class_order``) as task-file keys. Once one label is a list of
    several values, every foreground label is a region, in the file's order (``"tumor": 2`` beside
    ``"kidney": [1, 2, 3]`` is the region {2}); ``ignore`` is the ignore label, one above the other values."""
    entries = {key: value for key, value in given.items() if key != "ignore"}
    groups = {snake(k): sorted({int(x) for x in (v if isinstance(v, list) else [v])}) for k, v in entries.items()}
    values = set().union(*groups.values())
    ignore = ignore_value(given["ignore"], max(values), source) if "ignore" in given else None
    refuse_gaps(values | ({ignore} - {None}), source, "dataset.json's labels")
    names = {int(value): snake(key) for key, value in entries.items() if not isinstance(value, list)}
    record: dict[str, Any] = {"labels": [names.get(k, f"label{k}") for k in range(len(values))]}
    said = "dataset.json, nnU-Net's labels"
    if any(len(group) > 1 for group in groups.values()):
        record["regions"] = {name: group for name, group in groups.items() if group != [0]}
        record["regions_class_order"], why = region_order(order, record["regions"], source)
        said += f"; {why}"
    if ignore is not None:
        record["ignore_label"] = ignore
        said += f"; ignore label {ignore}"
    return record, said


def region_order(order: Any, regions: dict[str, list[int]], source: Path) -> tuple[list[int], str]:
    """The value each region is written as (``regions_class_order``), and where it came from; without one,
    each region's smallest value."""
    if order is None:
        return [min(values) for values in regions.values()], "no regions_class_order: each region's smallest value"
    if not isinstance(order, list) or len(order) != len(regions) or not all(isinstance(v, int) for v in order):
        raise DataError(
            source,
            f"'regions_class_order' {order!r} must give one label value for each of the {len(regions)} regions "
            f"({', '.join(regions)}), in their order",
        )
    return order, "regions written in regions_class_order"


def ignore_value(value: Any, top: int, source: Path) -> int:
    """nnU-Net's ``ignore`` label, which must be one value above all the others (the highest, ``top``);
    whether it is the next value is left to the check for gaps."""
    if isinstance(value, int) and not isinstance(value, bool) and value > top:
        return value
    raise DataError(
        source,
        f"'ignore' is {value!r}: the ignore label must be a single value above all the others, {top + 1} "
        f"(nnU-Net's rule); remap it to {top + 1} in every label map and in dataset.json",
    )


def geometry(cases: list[Case]) -> tuple[list[float], list[int], str]:
    """The median spacing of up to 50 images, and the ROI: their median shape at that spacing, rounded up
    to a multiple of 16 per axis (the ViT's patch) and capped at 128; both per RAS axis, as the images are
    turned to RAS before they are resampled."""
    sample = cases[:: max(1, len(cases) // HEADER_SAMPLE)][:HEADER_SAMPLE]
    headers = [read_header(case.image) for case in sample]
    if any(len(h.shape) < 3 for h in headers):
        raise DataError(sample[0].image, "task init describes 3D data sets; write a 2D task file by hand")
    ras = [ras_order(h.affine) for h in headers]  # the axes as training sees them, turned to RAS
    spacings = np.array([np.linalg.norm(h.affine[:3, :3], axis=0)[order] for h, order in zip(headers, ras)])
    sizes = np.array([np.array(h.shape[:3])[order] * s for h, order, s in zip(headers, ras, spacings)])  # mm
    spacing = [round(float(v), 3) for v in np.median(spacings, axis=0)]
    shape = np.median(sizes, axis=0) / np.array(spacing)
    roi = [int(min(ROI_MAX, ROI_MULTIPLE * math.ceil(v / ROI_MULTIPLE))) for v in shape]
    said = f"median of {len(sample)} images; ROI: their median shape {np.round(shape).astype(int).tolist()} rounded up"
    return spacing, roi, said + f" to a multiple of {ROI_MULTIPLE}, at most {ROI_MAX}"


def ras_order(affine: np.ndarray) -> np.ndarray:
    """The voxel axes in the order of the RAS axes they run along (``[1, 0, 2]`` for a file stored with
    its first axis along A-P)."""
    import nibabel as nib

    return np.argsort(nib.orientations.io_orientation(affine)[:, 0])


def intensity_rule(
    channels: list[str], labelled: list[Case], ignore: int | None = None
) -> tuple[dict[str, Any], bool, str]:
    """CT (a channel named so, or values down to -500: Hounsfield units): a window at the 0.5 and 99.5
    percentiles of the labelled voxels, those of the ``ignore`` label left out (as nnU-Net's CT rule); other
    modalities: a z-score of the non-zero voxels (and a crop to them) when at least a quarter of the voxels
    are exactly zero, else a z-score after clipping to the 0.5 and 99.5 percentiles."""
    sample = labelled[:VOXEL_SAMPLE]
    read = [read_channels(case.image_files) for case in sample]
    images = [image.array for image in read]
    named_ct = len(channels) == 1 and channels[0].strip().upper() == "CT"
    hounsfield = len(channels) == 1 and min(float(image.min()) for image in images) <= AIR_HU
    if named_ct or hounsfield:
        labels = [integer_labels(on_image_axes(read_image(case.label), image))[0] for image, case in zip(read, sample)]
        inside = np.concatenate([image[0][(label > 0) & (label != ignore)] for image, label in zip(images, labels)])
        low, high = (round(float(v)) for v in np.percentile(inside, [0.5, 99.5]))
        why = "named CT" if named_ct else f"values down to {AIR_HU} or below: CT in Hounsfield units"
        return {"rule": "window", "window": [low, high]}, False, f"{why}; labelled voxels of {len(sample)} cases"
    zero = float(np.mean([np.mean(image == 0) for image in images]))
    if zero >= 0.25:
        return {"rule": "zscore_nonzero"}, True, f"{zero:.0%} of the voxels of {len(sample)} images are 0"
    said = f"only {zero:.0%} of the voxels of {len(sample)} images are 0"
    return {"rule": "percentile_zscore", "percentiles": [0.5, 99.5]}, False, said
