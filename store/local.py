"""LocalContentStore: blobs as files in an OCI layout's `blobs/<algorithm>/<hex>`.

An ingest writes an unnamed O_TMPFILE file in `ingest/`, so a crash leaves
nothing behind. Where the filesystem lacks O_TMPFILE it writes
`ingest/<random>.partial` instead, holding an exclusive flock on it until it
ends, so garbage collection can tell an abandoned file (no lock: its process
died) from one being written. Publishing is `link(2)` of the fsynced,
verified, read-only file to its final name: atomic, and it never replaces a
blob that is already there.
"""

from __future__ import annotations

import errno
import fcntl
import io
import os
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Self

from .content import Info
from .descriptor import Descriptor
from .digest import Digest, Digester
from .durable import fsync_directory
from .errors import DigestMismatch, IntegrityError, NotFound, SizeMismatch, StoreError
from .log import lazy_logger
from .verify import VerifiedReader

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import TracebackType

__all__ = ["LocalContentStore"]

log = lazy_logger(__name__)

INGEST_DIR = "ingest"
PARTIAL_SUFFIX = ".partial"
CREATING_SUFFIX = ".creating"
CREATING_GRACE = 60.0
STAGING_DIR = "staging"  # <root>/staging/<name>/: work of a running load, flocked on STAGING_LOCK
STAGING_LOCK = ".lock"
_WRITEBACK_CHUNK = 8 << 20  # bytes of a blob between two starts of its write-back


class LocalContentStore:
    """The content store of one OCI layout directory (see store.content for the contract)."""

    def __init__(self, root: str | os.PathLike[str], *, unnamed_ingest: bool = True) -> None:
        self.root = Path(root)
        self.unnamed_ingest = unnamed_ingest  # False: named ingest files, as without O_TMPFILE
        self.ingest_dir = self.root / INGEST_DIR
        if not self.root.exists():
            self.root.mkdir(mode=0o700, parents=True)  # R12: the store is private
        for directory in (self.root / "blobs", self.root / "blobs" / "sha256", self.ingest_dir):
            directory.mkdir(mode=0o700, exist_ok=True)

    def blob_path(self, digest: Digest) -> Path:
        return self.root / "blobs" / digest.algorithm / digest.hex

    def writer(self) -> _Writer:
        return _Writer(self)

    def open(self, descriptor: Descriptor) -> BinaryIO:
        path = self.blob_path(descriptor.digest)
        try:
            # O_NONBLOCK: a FIFO planted at a blob path must not hang the open.
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
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
            os.set_blocking(fd, True)
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
        for directory in os.scandir(self.root / "blobs"):
            if not directory.is_dir(follow_symlinks=False):
                continue  # not ours; `store verify` reports it
            algorithm = directory.name
            for entry in os.scandir(directory.path):
                try:
                    digest = Digest(algorithm, entry.name)
                except StoreError:
                    continue  # not ours; `store verify` reports it
                st = entry.stat(follow_symlinks=False)
                yield Info(digest, st.st_size, st.st_mtime)

    def abandoned_staging(self) -> Iterator[Path]:
        """Staging directories of loads that died (their lock file is not held)."""
        try:
            entries = list(os.scandir(self.root / STAGING_DIR))
        except FileNotFoundError:
            return
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False):
                continue
            try:
                fd = os.open(os.path.join(entry.path, STAGING_LOCK), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                yield Path(entry.path)  # died before it could take its lock
                continue
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            finally:
                os.close(fd)
            yield Path(entry.path)

    def abandoned_ingests(self) -> Iterator[Path]:
        """Temporary files whose writer died (their flock is free)."""
        now = time.time()
        for entry in os.scandir(self.ingest_dir):
            if not entry.is_file(follow_symlinks=False):
                continue
            if entry.name.endswith(CREATING_SUFFIX):
                # Named before it is locked; a live writer renames it within
                # microseconds, so only an old one is a crash leftover.
                if now - entry.stat(follow_symlinks=False).st_mtime < CREATING_GRACE:
                    continue
            elif not entry.name.endswith(PARTIAL_SUFFIX):
                continue
            try:
                fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
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
        self._path: Path | None = None
        try:
            if not store.unnamed_ingest:
                raise OSError(errno.EOPNOTSUPP, "named ingest files requested")
            # An unnamed file: a crash leaves nothing behind, and nothing can
            # see the blob before commit links it into place.
            self._fd = os.open(store.ingest_dir, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
            self._fd, self._path = _named_ingest_file(store.ingest_dir)
        self._digester = Digester()
        self._written_back = 0
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
        if self.size - self._written_back >= _WRITEBACK_CHUNK:
            self._start_writeback()
        return len(data)

    def _start_writeback(self) -> None:
        # Start the disk writes of what is written so far (DONTNEED writes dirty pages back
        # without waiting, and drops clean ones), so commit's fsync waits for the tail only.
        try:
            os.posix_fadvise(self._fd, self._written_back, self.size - self._written_back, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass  # only advice
        self._written_back = self.size

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
                _publish(self._fd, self._path, final)  # the point of no return
            except FileExistsError:
                pass  # someone committed the same bytes first: that is success
            else:
                fsync_directory(final.parent)
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
        if self._path is not None:
            try:
                os.unlink(self._path)
            except OSError as exc:
                log.warning("cannot remove ingest file %s: %s", self._path, exc)
        os.close(self._fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.abort()


def _named_ingest_file(ingest_dir: Path) -> tuple[int, Path]:
    """Where O_TMPFILE is missing: `<random>.partial`, locked before it gets that name
    so no collector can take a starting ingest for an abandoned one."""
    name = os.urandom(16).hex()
    creating = ingest_dir / f"{name}{CREATING_SUFFIX}"
    fd = os.open(creating, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    path = ingest_dir / f"{name}{PARTIAL_SUFFIX}"
    os.rename(creating, path)
    return fd, path


def _publish(fd: int, path: Path | None, final: Path) -> None:
    """Give the ingest file its blob name; FileExistsError if the blob is there."""
    if path is not None:
        os.link(path, final)
        return
    # linkat(AT_SYMLINK_FOLLOW) of the /proc magic link names an O_TMPFILE file;
    # passing a dir fd makes Python use linkat() rather than link().
    parent = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.link(f"/proc/self/fd/{fd}", final.name, src_dir_fd=parent, dst_dir_fd=parent, follow_symlinks=True)
    finally:
        os.close(parent)
