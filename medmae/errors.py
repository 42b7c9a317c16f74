"""Errors a user can fix. The command line turns them into exit code 2 and a one-line message."""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """A problem the user can fix: bad arguments, bad or missing data, an unwritable output folder."""


class DataError(UserError):
    """A file or folder that cannot be used; the message starts with its path."""

    def __init__(self, path: str | Path, problem: str | None = None) -> None:
        if problem is None:  # rebuilt by a DataLoader worker from its formatted traceback: keep the last line
            last = str(path).strip().splitlines()[-1]
            path, _, problem = last.split("DataError: ", 1)[-1].partition(": ")
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = str(path), problem


class TaskError(UserError):
    """An unknown task or a task file that does not describe a task."""
