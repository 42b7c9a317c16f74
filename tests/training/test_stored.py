"""Training from the store (``medmae.training.stored``): the second process of a machine waits for the
writer's note without preprocessing anything, failed cases stop the run named or are left out, and the
store can be turned off."""

from __future__ import annotations

import json
import shutil
import threading
from types import SimpleNamespace

import pytest

from medmae.config import load_config
from medmae.data.manifests import load_split
from medmae.data.store import store_folder
from medmae.errors import UserError
from medmae.tasks import load_task
from medmae.training import stored


def setup_of(demo_root, *overrides, world=1):
    task = load_task("demo")
    return SimpleNamespace(
        cfg=load_config("finetune", "demo", overrides=list(overrides)),
        task=task,
        ctx=SimpleNamespace(world=world, is_main=world == 1),
        data_root=demo_root,
    ), load_split(task, demo_root).train


def test_a_waiting_process_reads_the_writers_note_and_preprocesses_nothing(demo_root, tmp_path, monkeypatch):
    monkeypatch.setattr(stored, "gather", lambda items, ctx: ["token"])
    monkeypatch.setattr(stored, "barrier", lambda ctx: None)
    monkeypatch.setattr(stored, "POLL_SECONDS", 0.01)
    monkeypatch.setenv("LOCAL_RANK", "1")
    s, cases = setup_of(demo_root, f"data.store={tmp_path}", "data.skip_bad_cases=true", world=2)
    note = store_folder(s.task, tmp_path) / ".ready.token.json"
    note.parent.mkdir(parents=True)
    writer = threading.Timer(0.2, note.write_text, args=(json.dumps({cases[0].id: "img: broken"}),))
    writer.start()
    folder, kept = stored.stored_cases(s, cases)
    writer.join()
    assert folder == note.parent and kept == {case.id for case in cases[1:]}
    assert [path.name for path in folder.iterdir()] == [note.name]  # no case written by this process


def test_failed_cases_stop_the_run_all_named_or_are_left_out():
    cases = [SimpleNamespace(id=name) for name in ("a", "b", "c")]
    failed = {"a": "a.nii.gz: empty file", "c": "c.nii.gz: NaN"}
    with pytest.raises(UserError, match=r"2 of 3 cases could not be preprocessed(.|\n)*a: a.nii.gz(.|\n)*c: c.nii.gz"):
        stored.kept_ids(cases, failed, skip=False)
    assert stored.kept_ids(cases, failed, skip=True) == {"b"}


def test_the_store_off_leaves_every_case_to_the_chain(demo_root, tmp_path):
    s, cases = setup_of(demo_root, "data.store=off")
    assert stored.stored_cases(s, cases) == (None, {case.id for case in cases})


def test_pretraining_keeps_the_image_of_a_case_whose_label_is_broken(demo_root, tmp_path, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    root = shutil.copytree(demo_root, tmp_path / "data")
    s, cases = setup_of(root, f"data.store={tmp_path / 'stores'}")
    broken = next(case for case in cases if case.label is not None)
    broken.label.write_bytes(b"")
    with pytest.raises(UserError, match=f"{broken.id}: .*empty file"):
        stored.stored_cases(s, cases)  # fine-tuning needs the label
    folder, kept = stored.stored_cases(s, cases, image_only=True)
    assert kept == {case.id for case in cases}
    assert json.loads((folder / f"{broken.id}.json").read_text())["label_file"] is None
