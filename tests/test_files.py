"""Files are written whole or not at all, and a failed command leaves its output folder as it was."""

from __future__ import annotations

import errno
import fcntl
import gzip
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medmae.errors import UserError
from medmae.files import (
    OutputError,
    atomic_open,
    atomic_path,
    lock_folder,
    removed_on_error,
    write_nifti,
    write_text,
)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path):
    path = write_text(tmp_path / "notes.txt", "old")
    with pytest.raises(RuntimeError), atomic_open(path) as handle:
        handle.write("new, half written")
        raise RuntimeError("stopped")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_a_writer_that_takes_a_name_gets_one_with_the_suffix_and_fails_without_a_trace(tmp_path):
    path = write_text(tmp_path / "labels.nrrd", "old")
    with pytest.raises(OutputError, match=rf"^{path}: cannot be written \(no NRRD writer\)"), atomic_path(path) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".nrrd" and tmp != path
        tmp.write_text("half")
        raise RuntimeError("ITK ERROR\nno NRRD writer")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["labels.nrrd"]
    with atomic_path(path) as tmp:
        tmp.write_text("new")
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["labels.nrrd"]


def test_a_file_that_cannot_be_written_is_an_output_error_naming_it(tmp_path):
    blocker = write_text(tmp_path / "blocker", "a file where a folder should be")
    with pytest.raises(OutputError, match=rf"^{blocker / 'out.csv'}: cannot be written"):
        write_text(blocker / "out.csv", "x")


def test_nifti_is_gzipped_by_its_name_and_reads_back(tmp_path):
    image = nib.Nifti1Image(np.arange(24, dtype=np.float32).reshape(2, 3, 4), np.diag([2.0, 2.0, 3.0, 1.0]))
    path = write_nifti(image, tmp_path / "a.nii.gz")
    assert gzip.decompress(path.read_bytes())[:4] == (348).to_bytes(4, "little")  # a NIfTI-1 header inside
    again = nib.load(path)
    assert np.array_equal(again.get_fdata(), image.get_fdata()) and np.allclose(again.affine, image.affine)


def test_a_failure_removes_what_the_block_added_and_keeps_what_was_there(tmp_path):
    kept = write_text(tmp_path / "out" / "kept.txt", "before")
    with pytest.raises(ValueError), removed_on_error(tmp_path / "out") as folder:
        write_text(folder / "new" / "report.csv", "x")
        write_text(kept, "replaced whole")
        raise ValueError("the command failed")
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == ["kept.txt"]
    assert kept.read_text() == "replaced whole"
    with pytest.raises(ValueError), removed_on_error(tmp_path / "fresh") as folder:
        write_text(Path(folder) / "a.txt", "x")
        raise ValueError
    assert not (tmp_path / "fresh").exists()


def test_a_held_folder_is_refused_and_a_folder_the_lock_made_goes_with_it(tmp_path):
    folder = tmp_path / "new" / "run"
    lock = lock_folder(folder)
    with pytest.raises(UserError, match=rf"in use by another run \(process {os.getpid()} on .*--output-dir"):
        lock_folder(folder)
    lock.release()
    assert not (tmp_path / "new").exists()  # the folders the lock made go with it
    (folder / "kept").mkdir(parents=True)
    lock = lock_folder(folder)
    lock.release()
    assert sorted(p.name for p in folder.iterdir()) == ["kept"]  # the folder was there before: it stays


def test_a_forked_child_does_not_keep_its_parents_hold(tmp_path):
    """DataLoader workers are forked: the hold must end with the process that took it."""
    folder = tmp_path / "run"
    script = (
        "import os, sys, time; from pathlib import Path; from medmae.files import lock_folder\n"
        f"held = lock_folder(Path({str(folder)!r}))\n"
        "if os.fork() == 0:\n"
        "    os.dup2(os.open(os.devnull, os.O_RDWR), 1); os.dup2(1, 2); time.sleep(30); os._exit(0)\n"
        "print('forked', flush=True)\n"
    )
    parent = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True, timeout=20)
    assert parent.stdout.strip() == "forked"
    lock_folder(folder).release()  # the child still sleeps; the parent, which held the folder, has ended


def test_a_file_system_that_takes_no_lock_is_warned_about_and_the_run_goes_on(tmp_path, caplog, monkeypatch):
    def no_locks(handle, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    lock = lock_folder(tmp_path / "run")
    assert "its file system takes no lock (No locks available)" in caplog.text
    assert not (tmp_path / "run" / ".medmae.lock").exists()
    lock.release()
    assert not (tmp_path / "run").exists()
