"""`import_rootfs`: a one-layer image from a root-filesystem tarball, like `docker import`.

The tarball (plain, gzip or zstd) is never extracted: it is read once through
the same guard and entry-name policy (store.entrynames) as any layer, so what
is imported is what `unpack_layer` will later accept, while its bytes are
hashed (the diff_id) and recompressed into the store.
"""

from __future__ import annotations

import datetime
import os
from typing import TYPE_CHECKING, BinaryIO

from .archive import DEFAULT_LIMITS, Limits, TarGuard
from .compression import Compression, auto_decompressor, compressor
from .content import write_blob
from .descriptor import MAX_BLOB_SIZE, Descriptor, MediaType
from .digest import Digest, Digester
from .entrynames import EntryNames
from .image import HistoryEntry, ImageConfig, Manifest, canonical_json, host_platform
from .reference import Reference, parse_reference
from .tags import TagStore

if TYPE_CHECKING:
    from .content import BlobLease
    from .local import LocalContentStore

__all__ = ["import_rootfs"]


def import_rootfs(
    store: LocalContentStore,
    source: str | os.PathLike[str] | BinaryIO,
    ref: str | Reference | None,
    *,
    compression: Compression = Compression.ZSTD,
    created: datetime.datetime | None = None,
    comment: str = "imported from a root filesystem tarball",
    lease: BlobLease | None = None,
    limits: Limits = DEFAULT_LIMITS,
    name: str = "rootfs",
) -> Descriptor:
    """Store `source` as a one-layer image for this host's platform; tag it `ref` if given; return the manifest.

    The uncompressed tar, byte for byte, is the layer's diff_id. Entries whose names
    are absolute or climb out of the root, that write through a link out of
    it, or that break `limits`, are refused, naming the entry.
    Messages call a path `source` by its path, a stream by `name`.
    """
    tag = parse_reference(ref) if isinstance(ref, str) else ref
    when = (created or datetime.datetime.now(datetime.UTC)).astimezone(datetime.UTC)
    stamp = when.replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
    if hasattr(source, "read"):
        layer, diff_id = _import_layer(store, source, compression, lease, limits, name)  # type: ignore[arg-type]
    else:
        with open(source, "rb") as f:  # type: ignore[arg-type]
            layer, diff_id = _import_layer(store, f, compression, lease, limits, os.fspath(source))
    architecture, variant = host_platform()
    config = ImageConfig(
        architecture=architecture,
        variant=variant,
        os="linux",
        diff_ids=(diff_id,),
        created=stamp,
        history=(HistoryEntry(created=stamp, created_by="pybuild import", comment=comment),),
    )
    config_descriptor = write_blob(store, canonical_json(config), MediaType.CONFIG)
    manifest = write_blob(
        store, canonical_json(Manifest(config=config_descriptor, layers=(layer,))), MediaType.MANIFEST
    )
    for blob in (config_descriptor, manifest):
        if lease is not None:
            lease.add_blob(blob.digest)
    if tag is not None:
        TagStore(store.root).set(tag, manifest)
    return manifest


def _import_layer(
    store: LocalContentStore,
    raw: BinaryIO,
    compression: Compression,
    lease: BlobLease | None,
    limits: Limits,
    what: str,
) -> tuple[Descriptor, Digest]:
    plain = auto_decompressor(raw, limit=MAX_BLOB_SIZE, what=what)
    with store.writer() as w:
        out = compressor(compression, w)  # type: ignore[arg-type]
        sink = _Sink(out)
        names = EntryNames(limits, what)
        TarGuard(plain, limits, sink, what).visit(lambda info, _: names.check(info))
        out.close()
        if lease is not None:
            lease.add_blob(w.digest())
        info = w.commit()
    return Descriptor(compression.layer_media_type, info.digest, info.size), sink.digester.digest()


class _Sink:
    """Takes every byte the guard vets: hashes it (the diff_id) and passes it on to the compressor."""

    def __init__(self, out: BinaryIO) -> None:
        self.digester = Digester()
        self._out = out

    def update(self, data: bytes) -> None:
        self.digester.update(data)
        self._out.write(data)
