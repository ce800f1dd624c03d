"""Layers: a directory tree to a compressed, content-addressed tar blob, and back.

`write_layer` makes the tar in one streaming pass: the uncompressed bytes are
hashed for the diffID while they go to the compressor, whose output goes to
a content-store writer (the blob digest). `apply_layer` reads a verified blob,
decompresses it by media type and applies it with store.archive; `unpack_layer`
does the same into a staging directory that becomes `dest` only once the
diffID has been verified (hostile-inputs R6). Not here: snapshots, manifests.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .archive import DEFAULT_LIMITS, Limits, Whiteouts
from .compression import Compression, compressor, decompressor
from .content import BlobLease, ContentStore, Writer
from .descriptor import Descriptor
from .digest import Digest, Digester
from .durable import fsync_directory
from .errors import DigestMismatch, StoreError
from .tarapply import Applied, apply_tar
from .tarwriter import write_tree

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Layer", "apply_layer", "unpack_layer", "write_layer"]


@dataclass(frozen=True, slots=True)
class Layer:
    """A committed layer blob: its descriptor, the digest of its uncompressed tar, and that tar's size."""

    descriptor: Descriptor
    diff_id: Digest
    size_uncompressed: int


def write_layer(
    root: str | os.PathLike[str],
    store: ContentStore,
    *,
    compression: Compression = Compression.ZSTD,
    source_date_epoch: int | None = None,
    overlay_upper: bool = False,
    lease: BlobLease | None = None,
    progress: Callable[[int], None] | None = None,
) -> Layer:
    """Commit the tree under `root` as a layer blob; the same tree gives the same blob.

    mtimes are clamped to `source_date_epoch` when given. With
    `overlay_upper`, `root` is an OverlayFS upper directory whose whiteouts
    become OCI ones (see store.tarwriter.write_tree). With `lease`, the blob is
    leased before it is committed, so a concurrent prune cannot take it.
    `progress(n)` hears of every n bytes of tar written.
    """
    diff = Digester()
    with store.writer() as writer:
        blob = _Batched(writer)
        # zstd runs multi-threaded (at least one worker, so the frame is the same
        # whatever the number of CPUs).
        with compressor(compression, blob) as sink:  # type: ignore[arg-type]
            update = diff.update if compression is not Compression.NONE else None
            send = sink.write
            if update is None and progress is None:
                write = send
            else:

                def write(data: bytes | bytearray | memoryview) -> None:
                    if update is not None:
                        update(data)
                    send(data)
                    if progress is not None:
                        progress(len(data))

            size = write_tree(root, write, source_date_epoch=source_date_epoch, overlay_upper=overlay_upper)
        blob.flush()
        info = lease.commit(writer) if lease is not None else writer.commit()
    diff_id = info.digest if compression is Compression.NONE else diff.digest()
    return Layer(Descriptor(compression.layer_media_type, info.digest, info.size), diff_id, size)


class _Batched:
    """Gathers the compressor's output (about 128 KiB a call) into 1 MiB writes to the store."""

    def __init__(self, writer: Writer) -> None:
        self._writer = writer
        self._buffer = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._buffer += data
        if len(self._buffer) >= _BATCH:
            self._writer.write(self._buffer)
            self._buffer = bytearray()
        return len(data)

    def flush(self) -> None:
        if self._buffer:
            self._writer.write(self._buffer)
            self._buffer = bytearray()


_BATCH = 1 << 20


def apply_layer(
    store: ContentStore,
    descriptor: Descriptor,
    target: str | os.PathLike[str],
    *,
    diff_id: Digest | None = None,
    whiteouts: Whiteouts = "delete",
    limits: Limits = DEFAULT_LIMITS,
) -> Applied:
    """Apply the layer blob onto the existing directory `target` (flattening).

    The blob is verified against its descriptor and, when `diff_id` is given,
    the uncompressed stream against it (DigestMismatch). Both checks end only
    when the stream does, so on failure `target` holds part of the layer: use
    unpack_layer when that matters.
    """
    kind = Compression.of_media_type(descriptor.media_type)
    digester = Digester()
    what = f"layer {descriptor.digest}"
    with store.open(descriptor) as blob, decompressor(kind, blob, limit=limits.max_size, what=what) as stream:

        def verify() -> None:
            while blob.read(1 << 20):
                pass  # the verified reader checks the blob's digest at its end
            actual = digester.digest()
            if diff_id is not None and actual != diff_id:
                raise DigestMismatch(
                    f"{what}: uncompressed content does not match its diffID: expected {diff_id}, got {actual}",
                    expected=diff_id,
                    actual=actual,
                )

        return apply_tar(
            stream, target, whiteouts=whiteouts, limits=limits, digester=digester, verify=verify, what=what
        )


def unpack_layer(
    store: ContentStore,
    descriptor: Descriptor,
    diff_id: Digest,
    dest: str | os.PathLike[str],
    *,
    whiteouts: Whiteouts = "delete",
    limits: Limits = DEFAULT_LIMITS,
) -> Applied:
    """Extract the layer into the new directory `dest`, which appears only once the layer is verified.

    The layer goes into a private staging directory beside `dest`; on any
    error the staging directory is removed and `dest` never exists.
    """
    dest = Path(dest)
    if os.path.lexists(dest):
        raise StoreError(f"unpack layer {descriptor.digest}: {dest} exists already")
    staging = dest.parent / f".{dest.name}.staging-{os.urandom(8).hex()}"
    os.mkdir(staging, 0o700)
    try:
        applied = apply_layer(store, descriptor, staging, diff_id=diff_id, whiteouts=whiteouts, limits=limits)
        os.chmod(staging, 0o755)  # private while unverified; a root filesystem's usual mode after
        _rename_noreplace(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_directory(dest.parent)
    return applied


_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


def _rename_noreplace(source: Path, dest: Path) -> None:
    # os.rename would replace an empty directory that appeared at dest meanwhile.
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except AttributeError:  # C library older than glibc 2.28
        if os.path.lexists(dest):
            raise StoreError(f"unpack layer into {dest}: it exists already") from None
        os.rename(source, dest)
        return
    if renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(dest), _RENAME_NOREPLACE) == 0:
        return
    code = ctypes.get_errno()
    if code == errno.EEXIST:
        raise StoreError(f"unpack layer into {dest}: it exists already")
    raise OSError(code, os.strerror(code), str(dest))
