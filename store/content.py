"""The content store: blobs addressed by their digest, verified on the way in and out.

Vocabulary
    blob        an immutable sequence of bytes: a layer tar, a config, a manifest
    digest      `sha256:<hex>` of the blob's bytes; the blob's name and its proof
    descriptor  what a document says about a blob: media type, digest, size
    ingest      writing a blob: stream bytes into a Writer, then commit

Lifecycle of an ingest

    with store.writer() as w:           # a private temporary file inside the store
        for chunk in source:
            w.write(chunk)              # hashed as it is written
        w.commit(size=n, expected=d)    # the point of no return

`commit` flushes and fsyncs the temporary file, checks the size and the
digest against what the caller expected (DigestMismatch / SizeMismatch
otherwise, and the bytes are thrown away), then links it into place under its
digest, fsyncs the directory and leaves the blob read-only. If the blob is
already there, commit succeeds and the new copy is dropped: ingesting the
same content twice, or from two processes at once, is not an error. Leaving
the `with` block without committing aborts and removes the temporary file; a
process killed mid-ingest leaves only a temporary file, which garbage
collection removes once no live process holds it.

Reading: `store.open(descriptor)` returns a reader that hashes while it
streams and raises DigestMismatch or SizeMismatch on the read that reaches the
end, so a consumer that reads to the end never acts on bad bytes unnoticed.
Descriptors come from `Descriptor.from_json`, which refuses absurd sizes first.

Example

    >>> d = write_blob(store, b'{"a":1}', MediaType.CONFIG)
    >>> read_blob(store, d)
    b'{"a":1}'

The protocol is deliberately small; everything else (`write_blob`,
`read_blob`, `copy_blob`) is written once, here, on top of it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, BinaryIO, NamedTuple, Protocol, Self

from .descriptor import Descriptor
from .digest import Digest
from .errors import LimitExceeded

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from types import TracebackType

__all__ = ["BlobLease", "ContentStore", "Info", "Writer", "copy_blob", "read_blob", "write_blob"]

CHUNK = 1 << 20


class BlobLease(Protocol):
    """What an importer needs of a GC lease (store.metadata.Lease): protect a blob before publishing it."""

    def add_blob(self, digest: Digest) -> None: ...


class Info(NamedTuple):
    """A committed blob: its digest, size, and when it was committed (Unix time)."""

    digest: Digest
    size: int
    created: float


class Writer(Protocol):
    """An ingest in progress. A context manager: leaving without commit aborts."""

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append bytes; returns how many were written."""
        ...

    @property
    def size(self) -> int:
        """Bytes written so far."""
        ...

    def digest(self) -> Digest:
        """Digest of the bytes written so far."""
        ...

    def commit(self, *, size: int | None = None, expected: Digest | None = None) -> Info:
        """Check and publish; see the module docstring. Always ends the writer."""
        ...

    def abort(self) -> None:
        """Drop the bytes written; ends the writer. Harmless after commit."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class ContentStore(Protocol):
    """Blobs by digest. Implementations: store.local.LocalContentStore."""

    def writer(self) -> Writer:
        """Start an ingest."""
        ...

    def open(self, descriptor: Descriptor) -> BinaryIO:
        """A verifying reader of the blob (NotFound if absent)."""
        ...

    def info(self, digest: Digest) -> Info:
        """Size and commit time of a blob (NotFound if absent)."""
        ...

    def exists(self, digest: Digest) -> bool: ...

    def delete(self, digest: Digest) -> None:
        """Remove a blob; NotFound if absent."""
        ...

    def walk(self) -> Iterator[Info]:
        """Every committed blob, in no particular order."""
        ...


def write_blob(
    store: ContentStore,
    data: bytes | BinaryIO | Iterable[bytes],
    media_type: str,
    *,
    expected: Digest | None = None,
    size: int | None = None,
) -> Descriptor:
    """Ingest `data` (bytes, a binary file or chunks) and return its descriptor."""
    with store.writer() as w:
        if isinstance(data, (bytes, bytearray, memoryview)):
            w.write(data)
        elif hasattr(data, "read"):
            while chunk := data.read(CHUNK):  # type: ignore[union-attr]
                w.write(chunk)
        else:
            for chunk in data:  # type: ignore[union-attr]
                w.write(chunk)
        info = w.commit(size=size, expected=expected)
    return Descriptor(media_type, info.digest, info.size)


def read_blob(store: ContentStore, descriptor: Descriptor, *, limit: int = 8 << 20) -> bytes:
    """The whole verified blob; LimitExceeded if it is larger than `limit` (documents)."""
    if descriptor.size > limit:
        raise LimitExceeded(
            f"blob {descriptor.digest}: {descriptor.size} bytes is more than the {limit} allowed for a document",
            limit=limit,
        )
    with store.open(descriptor) as f:
        return f.read()


def copy_blob(source: ContentStore, target: ContentStore, descriptor: Descriptor) -> None:
    """Copy one blob between stores, verified on both sides; nothing if already there."""
    if target.exists(descriptor.digest):
        return
    with source.open(descriptor) as f:
        write_blob(target, f, descriptor.media_type, expected=descriptor.digest, size=descriptor.size)
