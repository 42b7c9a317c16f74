"""``medmae data preprocess`` from the command line: what it prints, where the store goes, exit codes."""

from __future__ import annotations

import json
import shutil

from medmae.cli import main
from medmae.data import store


def preprocess(capsys, *args):
    code = main(["data", "preprocess", "--quiet", *args])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_preprocess_writes_into_the_data_root_then_skips_every_case(demo_root, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MEDMAE_STORE")  # the default place, not the test session's folder
    root = shutil.copytree(demo_root, tmp_path / "demo")
    code, out = preprocess(capsys, "--task", "demo", "--data-root", str(root))
    stores = list((root / "medmae_store").iterdir())
    assert code == 0 and len(stores) == 1 and stores[0].name.startswith("demo_")
    assert "wrote 6 cases, skipped 0" in out and str(stores[0]) in out
    assert len(list(stores[0].glob("*.json"))) == 6 + 1
    code, out = preprocess(capsys, "--task", "demo", "--data-root", str(root), "--workers", "2")
    assert code == 0 and "wrote 0 cases, skipped 6 already current" in out


def test_parts_share_the_cases_and_rebuild_starts_again(demo_root, tmp_path, capsys):
    output = tmp_path / "store"
    flags = ["--task", "demo", "--data-root", str(demo_root), "--output-dir", str(output)]
    assert preprocess(capsys, *flags, "--part", "0", "--parts", "2")[1].count("wrote 3 cases") == 1
    assert "wrote 3 cases, skipped 0" in preprocess(capsys, *flags, "--part", "1", "--parts", "2")[1]
    assert "wrote 0 cases, skipped 6" in preprocess(capsys, *flags)[1]
    assert "wrote 6 cases, skipped 0" in preprocess(capsys, *flags, "--rebuild")[1]
    code, out = preprocess(capsys, *flags, "--part", "2", "--parts", "2")
    assert code == 2 and "--part 2 --parts 2" in out


def test_a_broken_case_is_named_the_others_are_written_and_the_exit_is_2(demo_root, tmp_path, capsys):
    root = shutil.copytree(demo_root, tmp_path / "demo")
    broken = root / "imagesTr" / "img0002.nii.gz"
    broken.write_bytes(b"")
    code, out = preprocess(capsys, "--task", "demo", "--data-root", str(root), "--output-dir", str(tmp_path / "store"))
    assert code == 2 and "wrote 5 cases" in out and "1 failed" in out
    assert "img0002" in out and str(broken) in out and "could not be preprocessed" in out


def test_images_from_subfolders_go_to_the_store_folder_under_safe_names(demo_root, tmp_path, capsys, monkeypatch):
    scans = tmp_path / "scans"
    for k, name in enumerate(["img0001.nii.gz", "img0002.nii.gz"]):
        (scans / f"patient{k}").mkdir(parents=True)
        shutil.copyfile(demo_root / "imagesTr" / name, scans / f"patient{k}" / "ct.nii.gz")
    code, out = preprocess(capsys, "--task", "demo", "--images", str(scans), "--data-root", str(demo_root))
    assert code == 2 and "--images replaces --data-root" in out
    monkeypatch.setenv("MEDMAE_STORE", str(tmp_path / "store"))  # where pretraining with --images looks too
    code, out = preprocess(capsys, "--task", "demo", "--images", str(scans))
    assert code == 0 and "wrote 2 cases" in out
    folder = next((tmp_path / "store").iterdir())
    meta = json.loads((folder / "patient0%2Fct.json").read_text())
    assert meta["case"] == "patient0/ct" and meta["label_file"] is None
    assert store.read_case(folder, "patient1/ct")["label"] is None
