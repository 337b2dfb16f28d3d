"""Atomic writes, the one way distilwave writes a file or a directory that someone may read.

A reader (a resumed job, the service, a user) sees the old file or the new one, never half of
either: data goes to a temporary sibling, is flushed and fsynced, then renamed over the target,
and the directory entry is fsynced too. Files get the modes ``open()`` would give (the umask's),
so a bundle written by one user can be served by another (a container's).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode ``open()`` gives a new file (``mkstemp`` alone makes 0600 files)."""
    return 0o666 & ~_umask()


def fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes | Callable[[IO[bytes]], object]) -> None:
    """Write ``data`` (bytes, or a function writing to a binary handle) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as handle:
            if isinstance(data, bytes):
                handle.write(data)
            else:
                data(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, text.encode("utf-8"))


def atomic_write_json(path: Path, payload: Any, sort_keys: bool = True) -> None:
    """JSON with two-space indents (and ``str`` for what JSON cannot hold), atomically."""
    text = json.dumps(payload, indent=2, sort_keys=sort_keys, default=str) + "\n"
    atomic_write_text(path, text)


def atomic_copy(source: Path, path: Path) -> None:
    """Copy ``source`` over ``path`` atomically."""
    with open(source, "rb") as handle:
        atomic_write(path, lambda out: shutil.copyfileobj(handle, out))


def is_atomic_temp(path: Path) -> bool:
    """A temporary file ``atomic_write`` left behind when killed mid-write."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


def replace_directory(directory: Path, fill: Callable[[Path], None]) -> Path:
    """Build a directory with ``fill(staging)`` and swap it in for ``directory`` atomically.

    ``fill`` writes into a temporary sibling; its files are fsynced, given the umask's modes,
    and the staging directory is renamed into place (an old one is renamed away first and
    removed), so a reader never sees a half-written directory.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        fill(staging)
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes a private (0700) directory
        for path in staging.iterdir():
            os.chmod(path, file_mode())
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        fsync_directory(staging)
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            directory.rename(old)
            staging.rename(directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(directory)
        fsync_directory(directory.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory
