"""Errors a user can fix. The command line turns them into exit code 2 and a one-line message."""

from __future__ import annotations

from pathlib import Path


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so that a run cleans up as after Ctrl-C."""


STOPPED = {"by": None}  # the signal that stopped the command, once one has


def raise_if_stopped() -> None:
    """Raise :class:`Terminated` if a SIGTERM has arrived: the handler raises at once, but an exception
    raised inside a finaliser or a library callback can be swallowed, so long loops check here too."""
    if STOPPED["by"] is not None:
        raise Terminated()


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
