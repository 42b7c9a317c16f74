"""Task files: the shipped tasks and their facts, and every malformed value refused by name."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from medmae.data.manifests import load_split, stored_manifest
from medmae.errors import TaskError, UserError
from medmae.tasks import list_tasks, load_task

BROKEN_VALUES = {
    "intensity: {rule: window, window: [-175, 250]}": [
        "intensity: window",
        "intensity: {rule: window}",
        "intensity: {rule: window, window: [250, -175]}",
    ],
    "roi: [48, 48, 32]": ["roi: 48", "roi: [48, 48, x]", "roi: [48, 48]"],
    "spacing: [4.5, 4.5, 4.5]": ["spacing: [3, 3, -1]"],
    "orientation: RAS": ["orientation: XYZ", "orientation: RRS"],
    "validation: {fraction: 0.2, seed: 0}": [
        "validation: 0.2",
        "validation: {fraction: abc}",
        "validation: {fraction: 1.5}",
    ],
    "labels: [background, liver, spleen, right_kidney, left_kidney]": ["labels: background"],
    "url: generated locally by `medmae data demo --output-dir DATA_ROOT`": ["web: nowhere"],
}


def test_every_shipped_task_loads():
    assert list_tasks() == ["btcv", "chestxray14", "demo", "msd_brain", "msd_hippocampus"]
    for name in list_tasks():
        task = load_task(name)
        assert task.name == name and len(task.roi) == task.spatial_dims


def test_task_facts_from_the_issue():
    btcv = load_task("btcv")
    assert btcv.labels[:4] == ("background", "spleen", "right_kidney", "left_kidney") and len(btcv.labels) == 14
    assert (btcv.orientation, btcv.spacing, btcv.roi) == ("RAS", (1.5, 1.5, 2.0), (96, 96, 96))
    assert btcv.intensity == {"rule": "window", "window": [-175, 250]}
    brain = load_task("msd_brain")
    assert brain.channels == ("FLAIR", "T1w", "T1gd", "T2w") and brain.roi == (128, 128, 128)
    assert brain.regions == {"whole_tumour": (1, 2, 3), "tumour_core": (2, 3), "enhancing_tumour": (3,)}
    assert brain.class_names == ("whole_tumour", "tumour_core", "enhancing_tumour")
    hippocampus = load_task("msd_hippocampus")
    assert hippocampus.roi == (48, 64, 48) and hippocampus.intensity["rule"] == "percentile_zscore"
    xray = load_task("chestxray14")
    assert xray.is_classification and len(xray.findings) == 14 and xray.roi == (224, 224)


def test_unknown_and_broken_task_files_are_named(tmp_path):
    with pytest.raises(TaskError, match="unknown task 'liver'.*known tasks: btcv"):
        load_task("liver")
    broken = tmp_path / "broken.yaml"
    broken.write_text((load_task("demo").path.read_text()).replace("rule: window", "rule: gamma"))
    with pytest.raises(TaskError, match=r"broken.yaml: intensity rule 'gamma'"):
        load_task(broken)
    broken.write_text("name: x\n")
    with pytest.raises(TaskError, match=r"broken.yaml: missing keys \['spatial_dims', 'layout'"):
        load_task(broken)
    broken.write_text("[1, 2")
    with pytest.raises(TaskError, match="broken.yaml: cannot read"):
        load_task(broken)


@pytest.mark.parametrize("good,bad", [(good, bad) for good, bads in BROKEN_VALUES.items() for bad in bads])
def test_malformed_task_values_are_refused_by_name(tmp_path, good, bad):
    text = load_task("demo").path.read_text()
    assert good in text
    path = tmp_path / "task.yaml"
    path.write_text(text.replace(good, bad))
    with pytest.raises(TaskError, match=r"task.yaml: "):
        load_task(path)


def test_regions_must_name_foreground_labels(tmp_path):
    path = tmp_path / "task.yaml"
    path.write_text(load_task("demo").path.read_text() + "regions: {a: 1}\n")
    with pytest.raises(TaskError, match="regions must map names to lists of foreground label values"):
        load_task(path)


def test_mean_groups_must_name_scored_classes(tmp_path):
    path = tmp_path / "task.yaml"
    path.write_text(load_task("demo").path.read_text() + "mean_groups: {organs: [liver, background]}\n")
    with pytest.raises(TaskError, match="mean_groups must map names to lists of the task's scored classes"):
        load_task(path)


def test_a_minimal_task_file_needs_no_title_manifest_or_source_and_splits_by_folds(tmp_path, demo_root):
    minimal = tmp_path / "mine.yaml"
    keys = ("name", "spatial_dims", "layout", "channels", "labels", "intensity", "roi")
    minimal.write_text(yaml.safe_dump({key: load_task("demo").record[key] for key in keys} | {"name": "mine"}))
    task = load_task(minimal)
    assert (task.title, task.manifest, task.source_url) == ("mine", None, "")
    assert load_split(task, demo_root).name == "datalist"  # the demo's dataset_0.json names its parts
    training = json.loads((demo_root / "dataset_0.json").read_text())["training"]
    (tmp_path / "only_training.json").write_text(json.dumps({"training": training}))
    assert load_split(task, demo_root, tmp_path / "only_training.json").name == "fold0"


def test_a_task_manifest_is_found_beside_the_task_file_first(tmp_path):
    record = dict(load_task("demo").record) | {"name": "mine", "manifest": "mine.json"}
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(record))
    with pytest.raises(UserError, match=r"its manifest mine.json is neither at .*mine.json nor at"):
        stored_manifest(load_task(tmp_path / "mine.yaml"))
    (tmp_path / "mine.json").write_text(json.dumps({"default_split": "fold2", "splits": {}}))
    assert stored_manifest(load_task(tmp_path / "mine.yaml"))["default_split"] == "fold2"


def kits_like(tmp_path, **keys):
    """The demo task with KiTS23's regions (kidney {1, 2, 3}, masses {2, 3}, tumour {2}) and ``keys``."""
    record = dict(load_task("demo").record) | {
        "labels": ["background", "kidney", "tumour", "cyst"],
        "regions": {"kidney": [1, 2, 3], "masses": [2, 3], "tumour": [2]},
        "mean_groups": {},
    }
    path = tmp_path / "kits.yaml"
    path.write_text(yaml.safe_dump(record | keys))
    return load_task(path)


def test_regions_are_written_as_their_regions_class_order_else_as_their_smallest_value(tmp_path):
    assert kits_like(tmp_path, regions_class_order=[1, 3, 2]).region_values == (1, 3, 2)
    assert kits_like(tmp_path).region_values == (1, 2, 2)
    assert load_task("msd_brain").region_values == (1, 2, 3)
    for bad in ([1, 3], [1, 3, 4], [0, 3, 2], "132", [1, 3, 2.0]):
        with pytest.raises(TaskError, match=rf"kits.yaml: regions_class_order {re.escape(repr(bad))} must give"):
            kits_like(tmp_path, regions_class_order=bad)
    with pytest.raises(TaskError, match=r"regions_class_order \[1\] must give the foreground label value"):
        load_task_with(tmp_path, "regions_class_order: [1]\n")  # no regions to order


def test_the_ignore_label_is_a_label_value_one_above_the_labels(tmp_path):
    task = kits_like(tmp_path, ignore_label=4)
    assert task.ignore_label == 4 and task.label_values == (0, 1, 2, 3, 4)
    assert task.class_names == ("kidney", "masses", "tumour") and list(task.scored_classes) == list(task.class_names)
    assert load_task_with(tmp_path, "ignore_label: 5\n").label_values == (0, 1, 2, 3, 4, 5)
    for bad in (3, 9, "4", True):
        with pytest.raises(TaskError, match=rf"ignore_label {re.escape(repr(bad))} must be the value after the last"):
            kits_like(tmp_path, ignore_label=bad)


def load_task_with(tmp_path, extra: str):
    path = tmp_path / "extra.yaml"
    path.write_text(load_task("demo").path.read_text() + extra)
    return load_task(path)
