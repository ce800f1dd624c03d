"""Writes that survive a crash: a file is replaced whole or not at all, and the rename itself is made durable.

`replacing(path)` yields a temporary file beside `path`; leaving the block fsyncs it, renames it over `path`
and fsyncs the directory, so a reader (or a reboot) sees the old file or the new one, never a mix. An
exception removes the temporary file and leaves `path` as it was.

    with replacing(store / "index.json") as f:
        f.write(document)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "fsync_directory", "replacing"]


@contextlib.contextmanager
def replacing(path: Path, *, replace: bool = True, mode: int = 0o644) -> Iterator[BinaryIO]:
    """A new file that becomes `path` when the block ends; with replace=False an existing `path` wins."""
    temp = path.with_name(f".{path.name}.{os.urandom(8).hex()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(temp, path)
        else:
            with contextlib.suppress(FileExistsError):  # another process wrote it first
                os.link(temp, path)
            os.unlink(temp)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    fsync_directory(path.parent)


def atomic_write(path: Path, data: bytes, *, replace: bool = True) -> None:
    """Write `data` to `path` through `replacing`."""
    with replacing(path, replace=replace) as f:
        f.write(data)


def fsync_directory(path: Path) -> None:
    """Make the renames and links made in directory `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
