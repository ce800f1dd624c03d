"""LocalContentStore: blobs as files in an OCI layout's `blobs/<algorithm>/<hex>`.

An ingest writes `ingest/<random>.partial`, holding an exclusive flock on it
until it ends, so garbage collection can tell an abandoned temporary file (no
lock: its process died) from one being written. Publishing is `link(2)` of
the fsynced, verified, read-only file to its final name: atomic, and it
never replaces a blob that is already there.
"""

from __future__ import annotations

import errno
import fcntl
import io
import logging
import os
import secrets
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from .content import Info
from .descriptor import Descriptor
from .digest import Digest, Digester
from .errors import DigestMismatch, IntegrityError, NotFound, SizeMismatch, StoreError
from .verify import VerifiedReader

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import TracebackType

__all__ = ["LocalContentStore"]

log = logging.getLogger(__name__)

INGEST_DIR = "ingest"
PARTIAL_SUFFIX = ".partial"


class LocalContentStore:
    """The content store of one OCI layout directory (see store.content for the contract)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.ingest_dir = self.root / INGEST_DIR
        for directory in (self.root / "blobs" / "sha256", self.ingest_dir):
            directory.mkdir(parents=True, exist_ok=True)

    def blob_path(self, digest: Digest) -> Path:
        return self.root / "blobs" / digest.algorithm / digest.hex

    def writer(self) -> _Writer:
        return _Writer(self)

    def open(self, descriptor: Descriptor) -> BinaryIO:
        path = self.blob_path(descriptor.digest)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound(f"blob {descriptor.digest}: not found") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise IntegrityError(
                    f"blob {descriptor.digest}: is a symbolic link, not a blob", expected="file", actual="symlink"
                ) from None
            raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise IntegrityError(
                    f"blob {descriptor.digest}: is not a regular file", expected="file", actual=stat.filemode(st.st_mode)
                )
            if st.st_size != descriptor.size:
                raise SizeMismatch(
                    f"blob {descriptor.digest}: expected {descriptor.size} bytes, got {st.st_size}",
                    expected=descriptor.size,
                    actual=st.st_size,
                )
        except BaseException:
            os.close(fd)
            raise
        return io.BufferedReader(VerifiedReader(io.FileIO(fd, "rb"), descriptor), buffer_size=1 << 20)  # type: ignore[arg-type]

    def info(self, digest: Digest) -> Info:
        try:
            st = os.lstat(self.blob_path(digest))
        except FileNotFoundError:
            raise NotFound(f"blob {digest}: not found") from None
        return Info(digest, st.st_size, st.st_mtime)

    def exists(self, digest: Digest) -> bool:
        return os.path.lexists(self.blob_path(digest))

    def delete(self, digest: Digest) -> None:
        try:
            os.unlink(self.blob_path(digest))
        except FileNotFoundError:
            raise NotFound(f"blob {digest}: not found") from None

    def walk(self) -> Iterator[Info]:
        blobs = self.root / "blobs"
        for algorithm in sorted(os.listdir(blobs)):
            for entry in os.scandir(blobs / algorithm):
                try:
                    digest = Digest(algorithm, entry.name)
                except StoreError:
                    continue  # not ours; `store verify` reports it
                st = entry.stat(follow_symlinks=False)
                yield Info(digest, st.st_size, st.st_mtime)

    def abandoned_ingests(self) -> Iterator[Path]:
        """Temporary files whose writer died (their flock is free)."""
        for entry in os.scandir(self.ingest_dir):
            if not entry.name.endswith(PARTIAL_SUFFIX):
                continue
            try:
                fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live writer holds it
            finally:
                os.close(fd)
            yield Path(entry.path)


class _Writer:
    def __init__(self, store: LocalContentStore) -> None:
        self._store = store
        self._path = store.ingest_dir / f"{secrets.token_hex(16)}{PARTIAL_SUFFIX}"
        self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        self._digester = Digester()
        self._closed = False

    @property
    def size(self) -> int:
        return self._digester.size

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            self._digester.update(view[:written])
            view = view[written:]
        return len(data)

    def digest(self) -> Digest:
        return self._digester.digest()

    def commit(self, *, size: int | None = None, expected: Digest | None = None) -> Info:
        if self._closed:
            raise StoreError("commit of an ended ingest")
        try:
            if size is not None and size != self.size:
                raise SizeMismatch(
                    f"ingest of {expected or 'blob'}: expected {size} bytes, got {self.size}",
                    expected=size,
                    actual=self.size,
                )
            actual = self.digest()
            if expected is not None and actual != expected:
                raise DigestMismatch(
                    f"ingest of {expected}: content does not match: expected {expected}, got {actual}",
                    expected=expected,
                    actual=actual,
                )
            os.fchmod(self._fd, 0o444)
            os.fsync(self._fd)
            final = self._store.blob_path(actual)
            final.parent.mkdir(exist_ok=True)
            try:
                os.link(self._path, final)  # the point of no return
            except FileExistsError:
                pass  # someone committed the same bytes first: that is success
            else:
                _fsync_directory(final.parent)
        except BaseException:
            self.abort()
            raise
        self._end()
        return Info(actual, self.size, time.time())

    def abort(self) -> None:
        if not self._closed:
            self._end()

    def _end(self) -> None:
        # After the link the blob is published: failures here are logged only.
        self._closed = True
        try:
            os.unlink(self._path)
        except OSError as exc:
            log.warning("cannot remove ingest file %s: %s", self._path, exc)
        os.close(self._fd)

    def __enter__(self) -> _Writer:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.abort()


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
