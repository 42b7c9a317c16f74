"""The preprocessed store: the same arrays as today's chain, current cases skipped, changed ones rebuilt,
half writes never read, one folder per task definition, disjoint parts, bad cases named."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest
import torch

from medmae.data import store
from medmae.data.loaders import CaseDataset
from medmae.data.manifests import load_split
from medmae.data.transforms import LabelToRegionsd
from medmae.errors import UserError
from medmae.files import OutputError
from medmae.tasks import load_task, task_from_record
from tests.helpers import shared


@pytest.fixture
def demo_task():
    return load_task("demo")


@pytest.fixture
def demo_cases(demo_root, tmp_path):
    """The demo set's cases, copied so that a test may change their files."""
    copy = shutil.copytree(demo_root, tmp_path / "demo")
    return load_split(load_task("demo"), copy).all_cases()


def assert_same_as_chain(task, case, folder):
    """The store's image and label equal the validation chain's (inference's for a case without a label)."""
    got = store.read_case(folder, case.id)
    stage = "validation" if case.label is not None else "inference"
    expected = CaseDataset(task, [case], stage)[0]
    assert got["image"].dtype == np.float32
    assert np.array_equal(got["image"], expected["image"].numpy())
    assert np.allclose(got["meta"]["affine"], expected["image"].affine.numpy(), atol=0)
    if case.label is None:
        assert got["label"] is None
        return
    assert got["label"].dtype.kind in "iu"
    label = got["label"]
    if task.regions:
        label = LabelToRegionsd("label", task.regions, task.ignore_label)({"label": torch.from_numpy(label)})["label"]
    assert np.array_equal(np.asarray(label), expected["label"].numpy())


def test_the_store_holds_what_the_chain_gives_for_the_demo_ct(demo_task, demo_cases, tmp_path):
    run = store.preprocess(demo_task, demo_cases, tmp_path / "store", progress=False)
    assert run.written == sorted(c.id for c in demo_cases) and not run.current and not run.failed
    for case in demo_cases[:2]:
        assert_same_as_chain(demo_task, case, run.folder)
    unlabelled = replace(demo_cases[0], id="no_label", label=None)
    store.preprocess(demo_task, [unlabelled], tmp_path / "store", progress=False)
    assert_same_as_chain(demo_task, unlabelled, run.folder)
    record = json.loads((run.folder / "store.json").read_text())
    assert record["format"] == store.STORE_FORMAT and record["task_record"]["name"] == "demo"


def test_the_store_holds_what_the_chain_gives_for_a_hippocampus_mri(hippocampus_root, tmp_path):
    task = load_task("msd_hippocampus")
    case = load_split(task, hippocampus_root).train[0]
    run = store.preprocess(task, [case], tmp_path / "store", progress=False)
    assert run.written == [case.id]
    assert_same_as_chain(task, case, run.folder)


@pytest.mark.parametrize(("task_name", "folder"), [("msd_brain", "msd_brain_case"), ("btcv", "btcv_layout_sample")])
def test_the_store_holds_what_the_chain_gives_for_a_brain_mri_and_an_abdomen_ct(task_name, folder, tmp_path):
    task = load_task(task_name)
    case = load_split(task, shared(folder)).all_cases()[0]
    run = store.preprocess(task, [case], tmp_path / "store", progress=False)
    assert run.written == [case.id]
    assert_same_as_chain(task, case, run.folder)


def test_a_second_run_skips_every_case_and_a_changed_file_rebuilds_that_case_only(demo_task, demo_cases, tmp_path):
    first = store.preprocess(demo_task, demo_cases, tmp_path / "store", progress=False)
    again = store.preprocess(demo_task, demo_cases, tmp_path / "store", progress=False)
    assert not again.written and again.current == sorted(c.id for c in demo_cases)
    changed = demo_cases[1]
    other = demo_cases[2].image
    shutil.copyfile(other, changed.image)  # another scan under the same name
    rebuilt = store.preprocess(demo_task, demo_cases, tmp_path / "store", progress=False)
    assert rebuilt.written == [changed.id] and len(rebuilt.current) == len(demo_cases) - 1
    assert_same_as_chain(demo_task, changed, first.folder)


def test_a_missing_case_record_means_the_case_is_rebuilt(demo_task, demo_cases, tmp_path):
    run = store.preprocess(demo_task, demo_cases, tmp_path / "store", progress=False)
    store.case_paths(run.folder, demo_cases[0].id)["meta"].unlink()
    with pytest.raises(Exception, match="not in the store"):
        store.read_case(run.folder, demo_cases[0].id)
    again = store.preprocess(demo_task, demo_cases, tmp_path / "store", progress=False)
    assert again.written == [demo_cases[0].id]
    store.case_paths(run.folder, demo_cases[1].id)["label"].unlink()
    assert store.preprocess(demo_task, demo_cases, tmp_path / "store", progress=False).written == [demo_cases[1].id]


def test_a_leftover_temporary_file_is_never_read_and_is_cleaned_up(demo_task, demo_cases, tmp_path):
    case = demo_cases[0]
    run = store.preprocess(demo_task, [case], tmp_path / "store", progress=False)
    good = store.read_case(run.folder, case.id)
    leftover = run.folder / f".{case.id}.image.b2nd.host.123.abcd{store.TMP_MARK}.b2nd"
    leftover.write_bytes(b"half a file")
    assert np.array_equal(store.read_case(run.folder, case.id)["image"], good["image"])
    store.case_paths(run.folder, case.id)["meta"].unlink()  # as a run killed while rewriting the case
    store.preprocess(demo_task, [case], tmp_path / "store", progress=False)
    assert not leftover.exists()
    assert not [p for p in run.folder.iterdir() if store.TMP_MARK in p.name]


def test_another_task_definition_gets_another_folder(demo_task, tmp_path):
    finer = task_from_record({**demo_task.record, "spacing": [1.5, 1.5, 1.5]}, "finer")
    titled = task_from_record({**demo_task.record, "title": "another title"}, "titled")
    assert store.store_folder(finer, tmp_path) != store.store_folder(demo_task, tmp_path)
    assert store.store_folder(titled, tmp_path) == store.store_folder(demo_task, tmp_path)
    assert store.store_folder(demo_task, tmp_path).name.startswith("demo_")


def test_a_store_of_another_version_is_refused_and_rebuilt_on_request(demo_task, demo_cases, tmp_path):
    run = store.preprocess(demo_task, demo_cases[:2], tmp_path / "store", progress=False)
    record = run.folder / "store.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "medmae": "0.0.1"}))
    with pytest.raises(UserError, match="--rebuild") as error:
        store.preprocess(demo_task, demo_cases[:2], tmp_path / "store", progress=False)
    assert str(run.folder) in str(error.value) and "delete" in str(error.value)
    rebuilt = store.preprocess(demo_task, demo_cases[:2], tmp_path / "store", progress=False, rebuild=True)
    assert len(rebuilt.written) == 2 and json.loads(record.read_text())["medmae"] != "0.0.1"


def test_parts_are_disjoint_and_cover_every_case(demo_task, demo_cases, tmp_path):
    ids = sorted(c.id for c in demo_cases)
    for parts in (1, 2, 4, len(ids) + 1):
        shares = [[c.id for c in store.part_of(demo_cases[::-1], k, parts)] for k in range(parts)]
        assert sorted(i for share in shares for i in share) == ids
    with pytest.raises(UserError):
        store.part_of(demo_cases, 2, 2)
    written = [
        store.preprocess(demo_task, demo_cases, tmp_path / "store", part=k, parts=2, progress=False).written
        for k in range(2)
    ]
    assert not set(written[0]) & set(written[1]) and sorted(written[0] + written[1]) == ids


def test_a_broken_case_is_named_and_the_others_are_written(demo_task, demo_cases, tmp_path):
    broken = demo_cases[1]
    broken.image.write_bytes(b"")
    run = store.preprocess(demo_task, demo_cases, tmp_path / "store", workers=2, progress=False)
    assert list(run.failed) == [broken.id] and str(broken.image) in run.failed[broken.id]
    assert run.written == sorted(c.id for c in demo_cases if c is not broken)
    assert not store.case_paths(run.folder, broken.id)["meta"].exists()
    assert not [p for p in run.folder.iterdir() if store.TMP_MARK in p.name]


def test_read_crop_equals_the_same_box_of_read_case(demo_task, demo_cases, tmp_path):
    case = demo_cases[0]
    run = store.preprocess(demo_task, [case], tmp_path / "store", progress=False)
    whole = store.read_case(run.folder, case.id)
    shape = whole["image"].shape[1:]
    for start, size in [((0, 0, 0), shape), ((3, 5, 7), (20, 21, 22)), ((shape[0] - 4, 0, 1), (4, 9, 3))]:
        crop = store.read_crop(run.folder, case.id, start, size)
        box = (slice(None), *[slice(a, a + n) for a, n in zip(start, size)])
        assert np.array_equal(crop["image"], whole["image"][box])
        assert np.array_equal(crop["label"], whole["label"][box])


def test_case_ids_from_subfolders_become_distinct_safe_file_names():
    names = [store.safe_name(i) for i in ("patient1/ct", "patient1_ct", ".hidden", "a%2Fb", "a/b")]
    assert len(set(names)) == len(names) and all("/" not in n and not n.startswith(".") for n in names)


def test_an_unwritable_store_is_an_output_error_with_no_half_file(demo_task, demo_cases, tmp_path, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    folder = store.open_store(demo_task, tmp_path / "store")
    monkeypatch.setattr(store.os, "fsync", full_disk)  # the first array written: the disk is full
    with pytest.raises(OutputError, match="No space left") as error:
        store.preprocess(demo_task, demo_cases[:2], tmp_path / "store", progress=False)
    assert str(folder) in str(error.value)
    monkeypatch.undo()
    assert sorted(p.name for p in folder.iterdir()) == ["store.json"]
    assert store.is_current(folder, demo_cases[0]) is False


def test_a_case_record_names_its_files_and_geometry(demo_task, demo_cases, tmp_path):
    case = demo_cases[0]
    run = store.preprocess(demo_task, [case], tmp_path / "store", progress=False)
    meta = store.read_case(run.folder, case.id)["meta"]
    assert meta["files"] == store.source_identities(case) and meta["label_file"] == str(case.label)
    assert meta["spacing"] == pytest.approx(list(demo_task.spacing))
    assert meta["shape"][1:] == meta["label_shape"][1:] and meta["label_dtype"] == "uint8"
    source = nib.load(case.image)
    assert meta["source_shape"][1:] == list(source.shape) and np.allclose(meta["source_affine"], source.affine)


@pytest.mark.parametrize("stage", ["train", "pretrain"])
def test_crops_read_from_the_store_are_the_chains_crops_where_every_centre_is_kept(
    demo_task, demo_cases, tmp_path, stage
):
    """With every candidate centre kept (cases below ``store.POINTS`` voxels of each kind), the store's
    training and pretraining chains give bitwise the crops, flips, rotations and intensity changes that the
    chain from the files gives for the same seed."""
    folder = store.preprocess(demo_task, demo_cases, tmp_path / "store", progress=False).folder
    total = sum(m["voxels"]["foreground"] + m["voxels"]["background"] for m in map(_meta(folder), demo_cases))
    assert total <= 2 * store.POINTS * len(demo_cases)
    chain, stored = (CaseDataset(demo_task, demo_cases, stage, samples=3, store=where) for where in (None, folder))
    for index in range(len(demo_cases)):
        for seed in (0, 1):
            expected, got = ([*_seeded(dataset, index, seed)] for dataset in (chain, stored))
            for a, b in zip(expected, got, strict=True):
                keys = ["image", "label"] if stage == "train" else ["image"]
                assert all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) for k in keys)


def _meta(folder):
    return lambda case: store.read_meta(folder, case.id)


def _seeded(dataset, index, seed):
    dataset.transform.set_random_state(seed=seed)
    return dataset[index]


def test_crop_points_sample_the_labelled_voxels_and_the_body_never_the_ignore_label(tmp_path, monkeypatch):
    """Foreground points lie on labelled voxels (not the ignore label), background points on label 0 inside
    the body for CT (window rule); more voxels than ``POINTS`` are sampled, seeded by the case id."""
    monkeypatch.setattr(store, "POINTS", 50)
    task = task_from_record({**load_task("demo").record, "ignore_label": 5}, "ct")
    image = np.zeros((1, 10, 10, 10), np.float32)
    image[:, 2:8, 2:8, 2:8] = 0.5  # the body
    label = np.zeros((1, 10, 10, 10), np.uint8)
    label[:, 3:5, 3:5, 3:5] = 1  # 8 voxels
    label[:, 6:8, 6:8, 6:8] = 5  # ignored: background for sampling
    points = store.crop_points(task, "case", image, label)
    assert sorted(points["foreground"].tolist()) == np.flatnonzero(label[0] == 1).tolist()
    body = (image[0] > 0) & (label[0] != 1)
    assert int(points["background_voxels"]) == body.sum() and len(points["background"]) == 50
    assert body.reshape(-1)[points["background"]].all()
    again = store.crop_points(task, "case", image, label)
    assert np.array_equal(points["background"], again["background"])
    mri = load_task("msd_hippocampus")
    assert int(store.crop_points(mri, "case", image, label % 5)["background_voxels"]) == 1000 - 8  # no body mask


def test_the_store_root_is_the_setting_else_the_environment_else_a_writable_data_root_else_the_cache(
    tmp_path, monkeypatch
):
    assert store.store_root(str(tmp_path / "mine"), tmp_path) == tmp_path / "mine"
    monkeypatch.setenv("MEDMAE_STORE", str(tmp_path / "env"))
    assert store.store_root("auto", tmp_path) == tmp_path / "env"
    monkeypatch.delenv("MEDMAE_STORE")
    assert store.store_root("auto", tmp_path) == tmp_path / "medmae_store"
    monkeypatch.setattr(store.os, "access", lambda path, mode: False)  # a read-only data root
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert store.store_root("auto", tmp_path) == tmp_path / "home" / ".cache" / "medmae" / "store"
    assert store.store_root("auto", None) == tmp_path / "home" / ".cache" / "medmae" / "store"


def test_data_store_off_as_yaml_reads_it_turns_the_store_off():
    from medmae.config import load_config

    setting = load_config("finetune", "demo", overrides=["data.store=off"]).data.store
    assert setting is False and store.store_off(setting) and store.store_off("off")
    assert not store.store_off(load_config("finetune", "demo").data.store)


def test_a_full_disk_on_a_new_store_leaves_no_folder_behind(demo_task, demo_cases, tmp_path, monkeypatch):
    import blosc2

    monkeypatch.setattr(blosc2, "asarray", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space left")))
    with pytest.raises(OutputError, match="No space left"):
        store.preprocess(demo_task, demo_cases[:1], tmp_path / "stores", progress=False)
    assert not (tmp_path / "stores").exists()


def test_predictions_from_the_store_go_back_to_the_original_grid_exactly_as_from_the_chain(
    demo_checkpoint, demo_cases, tmp_path
):
    """The store keeps MONAI's record of what preprocessing did, so inverting a prediction read from it
    gives the label map (and probabilities) that the chain from the files gives, voxel for voxel."""
    from medmae.inference.predict import load_finetuned, predict_volumes

    model, payload, task, device = load_finetuned(str(demo_checkpoint))
    cases = demo_cases[:2]
    assert store.holding(task, cases, tmp_path / "store") is None
    folder = store.preprocess(task, cases, tmp_path / "store", progress=False).folder
    assert store.holding(task, cases, tmp_path / "store") == folder
    written = {
        source: predict_volumes(
            model, task, payload["run_config"], cases, tmp_path / source, device, False, True, store=where
        )
        for source, where in (("chain", None), ("store", folder))
    }
    for case in cases:
        chain, stored = (nib.load(written[source][case.id]) for source in ("chain", "store"))
        assert np.array_equal(chain.get_fdata(), stored.get_fdata()) and np.array_equal(chain.affine, stored.affine)
        assert chain.shape == nib.load(case.image).shape
        probabilities = [np.load(tmp_path / source / f"{case.id}.npz") for source in ("chain", "store")]
        assert all(np.array_equal(probabilities[0][k], probabilities[1][k]) for k in probabilities[0].files)
