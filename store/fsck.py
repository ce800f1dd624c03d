"""fsck: check a LocalContentStore at rest and report every problem, changing nothing.

Each blob is re-hashed in 1 MiB reads (never loaded whole); blob paths are
lstat'ed first and opened without following links or blocking on FIFOs. Then
every root and everything its manifests reference must be present with its size.
"""

from __future__ import annotations

import enum
import hashlib
import os
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .digest import Digest
from .errors import StoreError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from .descriptor import Descriptor
    from .local import LocalContentStore

__all__ = ["Problem", "ProblemKind", "verify"]

CHUNK = 1 << 20


class ProblemKind(enum.StrEnum):
    """What is wrong; the value is the word `pybuild store fsck` prints."""

    CORRUPT = "corrupt"  # the bytes do not hash to the blob's name
    NOT_REGULAR = "not-regular"  # a symlink, FIFO, directory … where a blob should be
    WRITABLE = "writable"  # a blob that is not read-only
    BAD_NAME = "bad-name"  # a name under blobs/ that is not a digest
    MISSING = "missing"  # a root or referenced blob is absent
    SIZE_MISMATCH = "size-mismatch"  # a descriptor's size is not the blob's
    UNREADABLE = "unreadable"  # a manifest or index whose references cannot be read
    STALE_INGEST = "stale-ingest"  # a temporary file whose writer is gone
    PERMISSIONS = "permissions"  # the store root is open to other users


@dataclass(frozen=True, slots=True, kw_only=True)
class Problem:
    """One finding: its kind, the blob (or path) concerned, and a one-line message."""

    kind: ProblemKind
    message: str
    digest: Digest | None = None
    path: str | None = None

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


def verify(
    content: LocalContentStore,
    *,
    roots: Iterable[Descriptor],
    children: Callable[[Descriptor], Iterable[Descriptor]],
) -> list[Problem]:
    """Every problem found in the store, blobs first, then references, then leftovers."""
    problems: list[Problem] = []
    mode = os.stat(content.root).st_mode
    if mode & 0o077:
        problems.append(
            Problem(
                kind=ProblemKind.PERMISSIONS,
                path=str(content.root),
                message=f"store root {content.root} has mode {stat.filemode(mode)}, expected drwx------",
            )
        )
    sizes = _check_blobs(content, problems)  # digest -> size of every sound blob
    _check_references(content, roots, children, sizes, problems)
    for path in content.abandoned_ingests():
        problems.append(
            Problem(kind=ProblemKind.STALE_INGEST, path=str(path), message=f"ingest {path.name}: its writer is gone")
        )
    return problems


def _check_blobs(content: LocalContentStore, problems: list[Problem]) -> dict[Digest, int]:
    sound: dict[Digest, int] = {}
    blobs = content.root / "blobs"
    for top in sorted(os.scandir(blobs), key=lambda e: e.name):
        if not top.is_dir(follow_symlinks=False):
            problems.append(
                Problem(kind=ProblemKind.BAD_NAME, path=top.path, message=f"{top.path}: not an algorithm directory")
            )
            continue
        for entry in sorted(os.scandir(top.path), key=lambda e: e.name):
            try:
                digest = Digest(top.name, entry.name)
            except StoreError:
                problems.append(
                    Problem(kind=ProblemKind.BAD_NAME, path=entry.path, message=f"{entry.path}: not a digest")
                )
                continue
            try:
                problem = _check_blob(digest, entry.path)
            except FileNotFoundError:
                continue  # removed meanwhile (a concurrent gc)
            except OSError as exc:
                problem = Problem(
                    kind=ProblemKind.UNREADABLE, digest=digest, path=entry.path, message=f"blob {digest}: {exc}"
                )
            if problem is None:
                sound[digest] = entry.stat(follow_symlinks=False).st_size
            else:
                problems.append(problem)
                if problem.kind is ProblemKind.WRITABLE:  # the bytes are right: still usable
                    sound[digest] = entry.stat(follow_symlinks=False).st_size
    return sound


def _check_blob(digest: Digest, path: str) -> Problem | None:
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        return Problem(
            kind=ProblemKind.NOT_REGULAR,
            digest=digest,
            path=path,
            message=f"blob {digest}: is {stat.filemode(st.st_mode)}, not a regular file",
        )
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped since the lstat
            return Problem(
                kind=ProblemKind.NOT_REGULAR, digest=digest, path=path, message=f"blob {digest}: not a regular file"
            )
        hasher = hashlib.new(digest.algorithm)
        while chunk := os.read(fd, CHUNK):
            hasher.update(chunk)
    finally:
        os.close(fd)
    actual = Digest(digest.algorithm, hasher.hexdigest())
    if actual != digest:
        return Problem(
            kind=ProblemKind.CORRUPT, digest=digest, path=path, message=f"blob {digest}: content hashes to {actual}"
        )
    if st.st_mode & 0o222:
        return Problem(
            kind=ProblemKind.WRITABLE,
            digest=digest,
            path=path,
            message=f"blob {digest}: mode {stat.filemode(st.st_mode)}, expected read-only",
        )
    return None


def _check_references(
    content: LocalContentStore,
    roots: Iterable[Descriptor],
    children: Callable[[Descriptor], Iterable[Descriptor]],
    sound: dict[Digest, int],
    problems: list[Problem],
) -> None:
    seen: set[Digest] = set()
    stack = list(roots)
    while stack:
        descriptor = stack.pop()
        digest = descriptor.digest
        if digest in seen:
            continue
        seen.add(digest)
        if digest not in sound:
            if not content.exists(digest):
                problems.append(
                    Problem(kind=ProblemKind.MISSING, digest=digest, message=f"blob {digest}: referenced but missing")
                )
            continue  # present but broken: reported by the blob scan
        if sound[digest] != descriptor.size:
            problems.append(
                Problem(
                    kind=ProblemKind.SIZE_MISMATCH,
                    digest=digest,
                    message=f"blob {digest}: descriptor says {descriptor.size} bytes, blob has {sound[digest]}",
                )
            )
            continue
        try:
            stack.extend(children(descriptor))
        except StoreError as exc:
            problems.append(Problem(kind=ProblemKind.UNREADABLE, digest=digest, message=f"blob {digest}: {exc}"))
