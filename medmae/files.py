"""Files written whole or not at all (a temporary file in the same folder, fsync, then rename), and output
folders that a failed command leaves as they were."""

from __future__ import annotations

import errno
import fcntl
import gzip
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from medmae.errors import UserError

log = logging.getLogger("medmae")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class OutputError(UserError, OSError):
    """A file that cannot be written (no permission, a full disk); the message names the file."""


@contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside ``path`` (``mode`` ``"w"`` or ``"wb"``); on success it replaces ``path``,
    on any error it is removed and ``path`` is left as it was. An ``OSError`` on the way (no permission, a
    full disk) becomes an :class:`OutputError` naming ``path``."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the mode a plain open() would
        with os.fdopen(fd, mode, **({"newline": ""} if "b" not in mode else {})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OutputError):
            raise
        raise OutputError(f"{path}: cannot be written ({error.strerror or error})") from error
    except BaseException:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary file name beside ``path`` that ends in its suffix, for writers that take a name and pick
    the format from it (SimpleITK); on success the file replaces ``path``, on any error it is removed. An
    ``OSError`` or a writer's ``RuntimeError`` becomes an :class:`OutputError` naming ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as error:
        tmp.unlink(missing_ok=True)
        reason = getattr(error, "strerror", None) or str(error).strip().splitlines()[-1]
        raise OutputError(f"{path}: cannot be written ({reason})") from error
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_open(path) as handle:
        handle.write(text)
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def write_nifti(image, path: str | Path) -> Path:
    """Write a nibabel image to ``path`` atomically, gzipped when the name ends in ``.gz``."""
    data = image.to_bytes()
    return write_bytes(path, gzip.compress(data, compresslevel=1) if str(path).endswith(".gz") else data)


def output_folder(path: str | Path, flag: str = "--output-dir") -> Path:
    """``path`` as a folder to write into; :class:`OutputError` when it, or a folder above it, is a file."""
    path = Path(path)
    for folder in (path, *path.parents):
        if folder.exists() and not folder.is_dir():
            where = "names a file" if folder == path else f"lies below {folder}, which is a file"
            raise OutputError(f"{path}: {flag} {where}, not a folder")
    return path


def snapshot(folder: Path) -> set[Path] | None:
    """Every path under ``folder`` now, or None when it does not exist (see :func:`remove_added`)."""
    return set(folder.rglob("*")) if folder.exists() else None


def remove_added(folder: Path, before: set[Path] | None) -> None:
    """Remove what was added under ``folder`` since ``before = snapshot(folder)``: the whole folder when it
    did not exist, else the new files and folders (files replaced since stay replaced)."""
    if before is None:
        shutil.rmtree(folder, ignore_errors=True)
        return
    for path in sorted(set(folder.rglob("*")) - before, key=lambda p: len(p.parts), reverse=True):
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


@contextmanager
def removed_on_error(folder: str | Path) -> Iterator[Path]:
    """Whatever this block adds under ``folder`` is removed again if it raises (:func:`remove_added`); as
    every write is atomic, a file it replaced is whole. Output of a failed command is never left half made."""
    folder = Path(folder)
    before = snapshot(folder)
    try:
        yield folder
    except BaseException:
        remove_added(folder, before)
        raise


LOCK_NAME = ".medmae.lock"
UNLOCKABLE = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP)  # file systems that take no flock (some NFS, Lustre)
_HELD: set[IO] = set()  # lock files this process holds, closed in forked children (DataLoader workers)


def _close_held_in_child() -> None:
    """A forked child shares its parent's lock: close its copies, so the lock ends with the parent."""
    for handle in _HELD:
        handle.close()
    _HELD.clear()


os.register_at_fork(after_in_child=_close_held_in_child)


@dataclass
class FolderLock:
    """A folder held by this process alone (:func:`lock_folder`); ``made``: the folders the lock created
    (the folder and missing ones above it, innermost first); ``handle`` None where the file system takes no
    lock."""

    folder: Path
    handle: IO | None
    made: list[Path]

    def release(self) -> None:
        """Let the folder go: the lock file is removed, and the folders the lock made while they are empty
        (a run refused or failed before writing leaves nothing behind)."""
        (self.folder / LOCK_NAME).unlink(missing_ok=True)
        if self.handle is not None:
            _HELD.discard(self.handle)
            self.handle.close()
        for folder in self.made:
            if not folder.is_dir() or any(folder.iterdir()):
                return
            folder.rmdir()


def lock_folder(folder: Path, flag: str = "--output-dir") -> FolderLock:
    """Hold ``folder`` (made if missing) for this process alone with an advisory lock on ``.medmae.lock``
    inside it, which the operating system drops when the process ends, however it ends. Another holder
    gets a :class:`UserError` naming the holder (its process, host, start and command line). On a file
    system that takes no lock, a warning says the folder is not protected, and the run goes on."""
    made = [f for f in (folder, *folder.parents) if not f.exists()]
    path = folder / LOCK_NAME
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = _locked(path, flag)
    except OSError as error:
        if error.errno not in UNLOCKABLE:
            raise OutputError(f"{folder}: cannot be written ({error.strerror or error})") from error
        log.warning(
            "WARNING: %s: its file system takes no lock (%s): nothing stops a second run from writing into it",
            folder,
            error.strerror,
        )
        path.unlink(missing_ok=True)
        return FolderLock(folder, None, made)
    _HELD.add(handle)
    return FolderLock(folder, handle, made)


def _locked(path: Path, flag: str) -> IO:
    """``path`` opened and locked, with this process named in it; :class:`UserError` when another holds it."""
    while True:
        handle = path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "a process that has not written its name yet"
            handle.close()
            raise UserError(
                f"{path.parent}: in use by another run ({holder}); wait until it ends, or choose another {flag}"
            ) from None
        except OSError:
            handle.close()
            raise
        if path.exists() and path.stat().st_ino == os.fstat(handle.fileno()).st_ino:
            break
        handle.close()  # the holder removed the file as it ended, between our open and our lock: again
    handle.truncate(0)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    handle.write(f"process {os.getpid()} on {socket.gethostname()} since {started}: {' '.join(sys.argv)}\n")
    handle.flush()
    return handle
