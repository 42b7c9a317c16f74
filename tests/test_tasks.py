import pytest

from medmae.errors import TaskError
from medmae.tasks import list_tasks, load_task


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
    with pytest.raises(TaskError, match=r"broken.yaml: missing keys \['title'"):
        load_task(broken)
    broken.write_text("[1, 2")
    with pytest.raises(TaskError, match="broken.yaml: cannot read"):
        load_task(broken)
