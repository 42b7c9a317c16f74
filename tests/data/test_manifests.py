"""Manifests and splits: stored splits, folds and their pinned assignment, datalist parts and their checks."""

from __future__ import annotations

import json
import shutil

import pytest

from medmae.cli import main
from medmae.data.cases import Case
from medmae.data.manifests import carve, fold_split, images_split, load_split, read_datalist, stored_manifest
from medmae.errors import DataError, UserError
from medmae.tasks import load_task
from tests.helpers import shared


def cases(n):
    return [Case(f"c{k:03d}", f"c{k:03d}.nii.gz") for k in range(n)]


def write(path, content):
    path.write_text(json.dumps(content))
    return path


def test_btcv_stored_splits_are_monai_and_transunet():
    manifest = stored_manifest(load_task("btcv"))
    ids = [c["id"] for c in manifest["cases"]]
    assert ids == [f"img{n:04d}" for n in [*range(1, 11), *range(21, 41)]]
    monai, transunet = manifest["splits"]["monai_dataset_0"], manifest["splits"]["transunet"]
    assert monai["test"] == [f"img{n:04d}" for n in range(35, 41)] and len(monai["train"]) == 24
    assert sorted(transunet["test"]) == [f"img{n:04d}" for n in (1, 2, 3, 4, 8, 22, 25, 29, 32, 35, 36, 38)]
    for split in (monai, transunet):
        assert not set(split["train"]) & set(split["test"]) and sorted(split["train"] + split["test"]) == ids


def test_hippocampus_holdout40_is_fixed_by_case_id(hippocampus_root):
    split = load_split(load_task("msd_hippocampus"), hippocampus_root, split="holdout40")
    assert (len(split.train) + len(split.validation), len(split.test)) == (160, 40)
    stored = stored_manifest(load_task("msd_hippocampus"))["splits"]["holdout40"]
    assert [c.id for c in split.test] == stored["test"]
    assert not {c.id for c in split.test} & {c.id for c in split.train + split.validation}


def test_folds_partition_the_cases_and_carving_is_seeded():
    pool = cases(23)
    tests = [fold_split(pool, k)[1] for k in range(5)]
    assert sorted(c.id for t in tests for c in t) == [c.id for c in pool]  # every case in exactly one fold
    assert {len(t) for t in tests} == {4, 5}
    rest, test = fold_split(pool, 2)
    assert not set(rest) & set(test) and fold_split(pool, 2) == (rest, test)
    train, validation = carve(rest, 0.2, seed=0)
    assert len(validation) == round(0.2 * len(rest)) and not set(train) & set(validation)
    assert carve(rest, 0.2, seed=0) == (train, validation) and carve(rest, 0.2, seed=1) != (train, validation)
    assert carve(cases(1), 0.2, 0) == (cases(1), [])


def test_cross_validation_folds_partition_train_and_validation_and_keep_the_test_part_out(hippocampus_root):
    task = load_task("msd_hippocampus")
    base = load_split(task, hippocampus_root, split="holdout40")
    folds = [load_split(task, hippocampus_root, split=f"holdout40_cv{k}") for k in range(5)]
    pool = {c.id for c in [*base.train, *base.validation]}
    assert [f.name for f in folds] == [f"holdout40_cv{k}" for k in range(5)]
    assert sorted(c.id for f in folds for c in f.validation) == sorted(pool)  # each case validates once
    for fold in folds:
        assert {c.id for c in fold.train} | {c.id for c in fold.validation} == pool
        assert not {c.id for c in fold.train} & {c.id for c in fold.validation}
        assert [c.id for c in fold.test] == [c.id for c in base.test] and not pool & {c.id for c in fold.test}
    assert len(base.test) == 40 and {len(f.validation) for f in folds} == {32}
    with pytest.raises(UserError, match="unknown split 'nosuch'"):
        load_split(task, hippocampus_root, split="nosuch_cv1")


def test_datalist_entries_are_checked(tmp_path):
    entry = {"image": "imagesTr/a.nii.gz", "label": "labelsTr/a.nii.gz"}
    parts = read_datalist(
        write(
            tmp_path / "d.json", {"training": [entry, {"image": "imagesTr/c.nii.gz"}], "test": ["imagesTs/b.nii.gz"]}
        ),
        tmp_path,
    )
    assert [c.id for c in parts["training"]] == ["a"] and parts["test"] == []
    assert parts["training"][0].image == tmp_path / "imagesTr" / "a.nii.gz"
    assert [(c.id, c.label) for c in parts["unlabelled"]] == [("c", None), ("b", None)]
    for bad, message in [
        ({"image": "/etc/passwd", "label": "x"}, "must be relative"),
        ({"image": "../../secret.nii.gz", "label": "x"}, "stay inside"),
        ({"image": "C:/data/a.nii.gz", "label": "x"}, "must be relative"),
        ({"label": "a.nii.gz"}, "needs an 'image'"),
    ]:
        with pytest.raises(DataError, match=message):
            read_datalist(write(tmp_path / "d.json", {"training": [bad]}), tmp_path)
    twice = {"training": [entry, {"image": "imagesTr/a.nii.gz", "label": "labelsTr/other.nii.gz"}]}
    with pytest.raises(DataError, match="case id a names two different files"):
        read_datalist(write(tmp_path / "d.json", twice), tmp_path)
    with pytest.raises(DataError, match="needs a 'training' list"):
        read_datalist(write(tmp_path / "d.json", {"train": []}), tmp_path)
    (tmp_path / "d.json").write_text("{not json")
    with pytest.raises(DataError, match="d.json: unreadable JSON"):
        read_datalist(tmp_path / "d.json", tmp_path)


def test_datalist_parts_and_named_splits(demo_root, tmp_path):
    task = load_task("demo")
    split = load_split(task, demo_root)  # dataset_0.json: 5 training, 1 validation -> test
    assert split.name == "datalist" and [c.id for c in split.test] == ["img0006"]
    assert len(split.train) + len(split.validation) == 5 and len(split.validation) == 1
    fold = load_split(task, demo_root, split="fold1")
    assert len(fold.test) + len(fold.train) + len(fold.validation) == 6
    own = write(
        tmp_path / "mine.json",
        {
            "training": [
                {"image": "imagesTr/img0001.nii.gz", "label": "labelsTr/label0001.nii.gz"},
                {"image": "imagesTr/img0002.nii.gz", "label": "labelsTr/label0002.nii.gz"},
            ],
            "validation": [{"image": "imagesTr/img0003.nii.gz", "label": "labelsTr/label0003.nii.gz"}],
            "test": [{"image": "imagesTr/img0004.nii.gz", "label": "labelsTr/label0004.nii.gz"}],
        },
    )
    mine = load_split(task, demo_root, manifest=own)
    assert ([c.id for c in mine.train], [c.id for c in mine.validation], [c.id for c in mine.test]) == (
        ["img0001", "img0002"],
        ["img0003"],
        ["img0004"],
    )
    no_validation = write(
        tmp_path / "tv.json",
        {
            "training": json.loads(own.read_text())["training"]
            + [{"image": f"imagesTr/img000{k}.nii.gz", "label": f"labelsTr/label000{k}.nii.gz"} for k in (3, 5, 6)],
            "test": json.loads(own.read_text())["test"],
        },
    )
    carved = load_split(task, demo_root, manifest=no_validation)
    assert (len(carved.train), len(carved.validation), [c.id for c in carved.test]) == (4, 1, ["img0004"])
    assert carved.notes == []
    with pytest.raises(UserError, match="unknown split 'fold9'.*fold0"):
        load_split(task, demo_root, split="fold9")
    with pytest.raises(UserError, match="needs cases missing"):
        load_split(load_task("btcv"), demo_root, split="transunet")


def test_real_sets_resolve_with_their_own_datalists():
    btcv = load_split(load_task("btcv"), shared("btcv_layout_sample"))
    assert btcv.source.endswith("dataset_0.json") and [c.id for c in btcv.test] == ["img0001"]
    assert "cases in both train and test: img0001" in btcv.notes
    brain = load_split(load_task("msd_brain"), shared("msd_brain_case"))
    assert [c.id for c in brain.all_cases()] == ["BRATS_001"]


def test_fold_assignment_is_pinned():
    """Published fold numbers must not change silently (5 folds, sorted ids shuffled with seed 0)."""
    pool = [Case(f"case_{k:02d}", f"{k}.nii.gz") for k in range(10)]
    assert [[c.id[-2:] for c in fold_split(pool, k)[1]] for k in range(5)] == [
        ["04", "07"],
        ["02", "08"],
        ["00", "01"],
        ["05", "09"],
        ["03", "06"],
    ]


def test_plain_image_folders_give_cases_by_relative_path_with_a_seeded_held_out_share(tmp_path):
    task = load_task("demo")
    for name in ("p1/ct.nii.gz", "p2/ct.nrrd", "p2/deeper/mr.mha", "p3/ct.nii.gz", "p4/ct.nii.gz", ".hidden/x.nii"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "p1" / "notes.txt").write_text("x")
    split = images_split(task, [str(tmp_path), str(tmp_path / "p1" / "*.nii.gz")])  # p1/ct named twice: once
    ids = sorted(c.id for c in split.train + split.validation)
    assert ids == ["p1/ct", "p2/ct", "p2/deeper/mr", "p3/ct", "p4/ct"] and split.name == "images"
    assert len(split.validation) == 1 and split.validation == images_split(task, [str(tmp_path)]).validation
    assert not split.test and not split.notes
    with pytest.raises(UserError, match="the pattern matches nothing"):
        images_split(task, [str(tmp_path / "*.dcm")])
    with pytest.raises(UserError, match="no images found"):
        images_split(task, [str(tmp_path / "p1" / "notes.txt")])


def test_a_btcv_layout_without_its_datalist_suggests_manifest(capsys, demo_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    (root / "dataset_0.json").unlink()
    with pytest.raises(DataError, match="task demo lists its cases only through it: pass --manifest FILE naming"):
        load_split(load_task("demo"), root)
    out = tmp_path / "nn"
    export = ["data", "export-nnunet", "--data-root", str(root), "--output-dir", str(out), "--quiet"]
    assert main([*export, "--task", "btcv"]) == 2
    said = capsys.readouterr().err
    assert "cases come from its stored list data_manifests/btcv.json, and 24 of its 30 images are not here" in said
    assert (
        "(imagesTr/img0007.nii.gz, imagesTr/img0008.nii.gz, imagesTr/img0009.nii.gz, ...): pass --manifest FILE" in said
    )
    assert not out.exists()
    assert main([*export, "--task", "demo", "--manifest", str(demo_root / "dataset_0.json")]) == 0
    assert len(list((out / "labelsTr").iterdir())) == 6
