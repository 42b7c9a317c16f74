"""Files written whole or not at all (a temporary file in the same folder, fsync, then rename), and output
folders that a failed command leaves as they were."""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from medmae.errors import UserError


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
