"""User errors: a DataError names its file first, also when rebuilt from a loader worker's traceback."""

from __future__ import annotations

from medmae.errors import DataError, TaskError, UserError


def test_a_data_error_names_the_file_then_the_problem():
    error = DataError("/data/img0001.nii.gz", "truncated file")
    assert str(error) == "/data/img0001.nii.gz: truncated file"
    assert (error.path, error.problem) == ("/data/img0001.nii.gz", "truncated file")
    assert isinstance(error, UserError) and issubclass(TaskError, UserError)


def test_a_data_error_rebuilt_from_a_worker_traceback_keeps_its_last_line():
    """A DataLoader worker re-raises an error as its type built from the formatted traceback alone."""
    traceback = (
        "Caught DataError in DataLoader worker process 0.\nTraceback (most recent call last):\n  ...\n"
        "medmae.errors.DataError: /data/img0002.nii.gz: case img0002: unreadable NIfTI"
    )
    error = DataError(traceback)
    assert error.path == "/data/img0002.nii.gz"
    assert str(error) == "/data/img0002.nii.gz: case img0002: unreadable NIfTI"
