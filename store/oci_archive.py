"""OCI image layouts: walking an image's blob graph, and writing layouts as a tar or a directory.

`walk` lists every blob an image needs through a `BlobSource`, refusing missing blobs, cycles, fan-out
past the caps and manifests whose config disagrees with their layers. `write_layout` writes images into
a deterministic tar or a directory, optionally recompressing layers. Reading archives is store.transfer's.
"""

from __future__ import annotations

import io
import os
import tarfile
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from .compression import Compression, compressor, decompressor
from .content import CHUNK, ContentStore, read_blob
from .descriptor import MAX_BLOB_SIZE, Descriptor, MediaType
from .digest import Digest, Digester
from .errors import (
    DigestMismatch,
    LimitExceeded,
    MalformedDocument,
    NotFound,
    SizeMismatch,
    StoreError,
)
from .image import (
    ImageConfig,
    Index,
    Manifest,
    canonical_json,
    check_layers,
    document_limit,
    parse_config,
    parse_index,
    parse_manifest,
)
from .reference import Reference
from .tags import name_annotations

__all__ = [
    "MAX_DEPTH",
    "MAX_LAYERS",
    "MAX_MANIFESTS",
    "BlobSource",
    "DirOutput",
    "ImageGraph",
    "LayoutOutput",
    "StoreSource",
    "TarOutput",
    "children",
    "recompress",
    "walk",
    "write_layout",
]

MAX_DEPTH = 8  # index → index → … → manifest
MAX_LAYERS = 500  # per manifest; overlay's lowerdir list gives out long before this
MAX_MANIFESTS = 1024  # per index
LAYOUT_FILE = b'{"imageLayoutVersion":"1.0.0"}'


class BlobSource(Protocol):
    """Where `walk` finds blobs: a content store, an archive being loaded, a layout directory."""

    def require(self, descriptor: Descriptor, what: str) -> None:
        """Raise unless the blob is there with the descriptor's size; `what` names it for the message."""
        ...

    def read(self, descriptor: Descriptor, what: str) -> bytes:
        """The verified bytes of a document blob (callers check the size cap first)."""
        ...


class StoreSource:
    """A BlobSource over a content store (`where` names it in errors): blobs missing from it are NotFound."""

    def __init__(self, store: ContentStore, *, where: str = "the store") -> None:
        self.store = store
        self.where = where

    def missing(self, what: str) -> StoreError:
        return NotFound(f"{what}: not in {self.where}")

    def require(self, descriptor: Descriptor, what: str) -> None:
        try:
            size = self.store.info(descriptor.digest).size
        except NotFound:
            raise self.missing(what) from None
        if size != descriptor.size:
            raise SizeMismatch(
                f"{what}: {self.where} has {size} bytes, the descriptor says {descriptor.size}",
                expected=descriptor.size,
                actual=size,
            )

    def read(self, descriptor: Descriptor, what: str) -> bytes:
        self.require(descriptor, what)
        return read_blob(self.store, descriptor, limit=document_limit(descriptor.media_type))


@dataclass(frozen=True, slots=True)
class ImageGraph:
    """An image's blobs in publish order (layers and configs, then manifests, then indexes)."""

    root: Descriptor
    blobs: tuple[Descriptor, ...]
    manifests: tuple[tuple[Descriptor, Manifest, ImageConfig | None], ...]  # with parsed config when it is one
    documents: dict[Digest, bytes] = field(compare=False, repr=False)


def walk(root: Descriptor, source: BlobSource, what: str = "image") -> ImageGraph:
    """Every blob `root` needs, checked present; MalformedDocument/NotFound/LimitExceeded otherwise."""
    blobs: dict[Digest, Descriptor] = {}
    manifests: list[tuple[Descriptor, Manifest, ImageConfig | None]] = []
    documents: dict[Digest, bytes] = {}

    def document(descriptor: Descriptor, label: str) -> bytes:
        limit = document_limit(descriptor.media_type)
        if descriptor.size > limit:
            raise LimitExceeded(f"{label}: {descriptor.size} bytes is more than the {limit} allowed", limit=limit)
        data = source.read(descriptor, label)
        documents[descriptor.digest] = data
        return data

    def visit(descriptor: Descriptor, label: str, path: tuple[Digest, ...]) -> None:
        if descriptor.digest in path:
            raise MalformedDocument(f"{what}: index cycle via {descriptor.digest}")
        if len(path) > MAX_DEPTH:
            raise LimitExceeded(f"{what}: indexes nested deeper than {MAX_DEPTH}", limit=MAX_DEPTH)
        if descriptor.media_type in MediaType.INDEXES:
            index = parse_index(document(descriptor, label), descriptor)
            if len(index.manifests) > MAX_MANIFESTS:
                raise LimitExceeded(f"{label}: more than {MAX_MANIFESTS} manifests", limit=MAX_MANIFESTS)
            for child in index.manifests:
                visit(child, f"{what}: manifest {child.digest}", (*path, descriptor.digest))
        elif descriptor.media_type in MediaType.MANIFESTS:
            manifests.append((descriptor, *_manifest(descriptor, label, document, source, blobs)))
        else:
            source.require(descriptor, label)  # an artifact we carry but do not read
        blobs.setdefault(descriptor.digest, descriptor)

    visit(root, f"{what}: {_kind(root)} {root.digest}", ())
    return ImageGraph(root, tuple(blobs.values()), tuple(manifests), documents)


def _manifest(
    descriptor: Descriptor,
    label: str,
    document: Callable[[Descriptor, str], bytes],
    source: BlobSource,
    blobs: dict[Digest, Descriptor],
) -> tuple[Manifest, ImageConfig | None]:
    manifest = parse_manifest(document(descriptor, label), descriptor)
    if len(manifest.layers) > MAX_LAYERS:
        raise LimitExceeded(f"{label}: {len(manifest.layers)} layers, more than {MAX_LAYERS}", limit=MAX_LAYERS)
    config = None
    if manifest.config.media_type in MediaType.CONFIGS:
        config = parse_config(document(manifest.config, f"{label}: config {manifest.config.digest}"), manifest.config)
        check_layers(manifest, config, label)
    else:
        source.require(manifest.config, f"{label}: config {manifest.config.digest}")
    for i, layer in enumerate(manifest.layers):
        source.require(layer, f"{label}: layer {i} {layer.digest}")
        blobs.setdefault(layer.digest, layer)
    blobs.setdefault(manifest.config.digest, manifest.config)
    return manifest, config


def children(store: ContentStore, descriptor: Descriptor) -> tuple[Descriptor, ...]:
    """What a manifest or index in `store` references directly (nothing for other blobs)."""
    if descriptor.media_type in MediaType.INDEXES:
        return parse_index(StoreSource(store).read(descriptor, f"index {descriptor.digest}"), descriptor).manifests
    if descriptor.media_type in MediaType.MANIFESTS:
        manifest = parse_manifest(StoreSource(store).read(descriptor, f"manifest {descriptor.digest}"), descriptor)
        return (manifest.config, *manifest.layers)
    return ()


def _kind(descriptor: Descriptor) -> str:
    return "index" if descriptor.media_type in MediaType.INDEXES else "manifest"


# ---- recompression --------------------------------------------------------


def recompress(
    store: ContentStore,
    layer: Descriptor,
    diff_id: Digest,
    target: Compression,
    sink: BinaryIO,
    *,
    what: str | None = None,
) -> None:
    """Write `layer` into `sink` compressed as `target`, checking its diff_id on the way."""
    what = what or f"layer {layer.digest}"
    source = Compression.of_media_type(layer.media_type)
    digester = Digester()
    with store.open(layer) as blob, decompressor(source, blob, limit=MAX_BLOB_SIZE, what=what) as plain:
        out = compressor(target, sink)
        while chunk := plain.read(CHUNK):
            digester.update(chunk)
            out.write(chunk)
        out.close()
        while blob.read(CHUNK):  # to the end, so the reader verifies the blob's digest
            pass
    if digester.digest() != diff_id:
        raise DigestMismatch(
            f"{what}: uncompressed content is {digester.digest()}, but the config's diff_id is {diff_id}",
            expected=diff_id,
            actual=digester.digest(),
        )


# ---- outputs ----------------------------------------------------------------


class LayoutOutput(Protocol):
    """Where a layout or archive is written: named directories and files, each written once."""

    def add_dir(self, name: str) -> None: ...

    def add_file(self, name: str, source: BinaryIO, size: int) -> None:
        """Copy `source` to its end (so a verifying reader checks it); exactly `size` bytes."""
        ...


class TarOutput:
    """A deterministic tar: entries in call order, mtime 0, owner 0:0, modes 0644/0755."""

    def __init__(self, sink: BinaryIO) -> None:
        self._sink = sink
        self._names: set[str] = set()
        self._offset = 0

    def has(self, name: str) -> bool:
        return name in self._names

    def add_dir(self, name: str) -> None:
        if name not in self._names:
            self._header(name, tarfile.DIRTYPE, 0o755, 0)

    def add_file(self, name: str, source: BinaryIO, size: int) -> None:
        if name in self._names:
            return
        self._header(name, tarfile.REGTYPE, 0o644, size)
        written = 0
        while chunk := source.read(CHUNK):
            written += len(chunk)
            if written > size:
                break
            self._write(chunk)
        if written != size:
            raise SizeMismatch(
                f"archive member {name}: expected {size} bytes, got {written}", expected=size, actual=written
            )
        self._write(b"\0" * (-size % tarfile.BLOCKSIZE))

    def close(self) -> None:
        """Write the end-of-archive blocks, padded to a whole record like GNU tar."""
        self._write(b"\0" * (2 * tarfile.BLOCKSIZE))
        self._write(b"\0" * (-self._offset % tarfile.RECORDSIZE))

    def _write(self, data: bytes) -> None:
        self._sink.write(data)
        self._offset += len(data)

    def _header(self, name: str, kind: bytes, mode: int, size: int) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.size, info.mtime = kind, mode, size, 0
        info.uname = info.gname = ""
        self._write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        self._names.add(name)


class DirOutput:
    """A directory tree; files are created exclusively (a name written twice keeps the first)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def add_dir(self, name: str) -> None:
        (self.root / name).mkdir(parents=True, exist_ok=True)

    def add_file(self, name: str, source: BinaryIO, size: int) -> None:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        except FileExistsError:
            return
        with os.fdopen(fd, "wb") as f:
            written = 0
            while chunk := source.read(CHUNK):
                written += len(chunk)
                f.write(chunk)
            if written != size:
                raise SizeMismatch(f"{path}: expected {size} bytes, got {written}", expected=size, actual=written)
            f.flush()
            os.fsync(f.fileno())


# ---- writing a layout ---------------------------------------------------------


def write_layout(
    store: ContentStore,
    images: Iterable[tuple[Reference | None, ImageGraph]],
    out: LayoutOutput,
    *,
    compression: Compression | None = None,
    scratch: Path | None = None,
) -> list[Descriptor]:
    """Write `oci-layout`, every blob and `index.json` naming the images; returns the index entries.

    With `compression`, layers compressed otherwise are recompressed (diff_ids
    checked) and the manifests and indexes above them rewritten.
    """
    out.add_file("oci-layout", io.BytesIO(LAYOUT_FILE), len(LAYOUT_FILE))
    out.add_dir("blobs")
    writer = _BlobWriter(store, out, compression, scratch)
    entries = []
    for ref, graph in images:
        descriptor = writer.image(graph)
        if ref is not None:
            descriptor = descriptor.with_annotations(**name_annotations(ref))
        entries.append(descriptor)
    index = canonical_json(Index(manifests=tuple(entries)))
    out.add_file("index.json", io.BytesIO(index), len(index))
    return entries


class _BlobWriter:
    def __init__(
        self, store: ContentStore, out: LayoutOutput, compression: Compression | None, scratch: Path | None
    ) -> None:
        self.store, self.out, self.compression, self.scratch = store, out, compression, scratch
        self.rewritten: dict[Digest, Descriptor] = {}

    def image(self, graph: ImageGraph) -> Descriptor:
        for descriptor, manifest, config in graph.manifests:
            if descriptor.digest not in self.rewritten:
                self.rewritten[descriptor.digest] = self._manifest(descriptor, manifest, config)
        return self._node(graph.root, graph)

    def _node(self, descriptor: Descriptor, graph: ImageGraph) -> Descriptor:
        if descriptor.digest in self.rewritten:
            return self.rewritten[descriptor.digest]
        if descriptor.media_type not in MediaType.INDEXES:
            self.copy(descriptor)
            return descriptor
        index = parse_index(graph.documents[descriptor.digest], descriptor)
        entries = tuple(self._node(child, graph) for child in index.manifests)
        if [e.digest for e in entries] == [c.digest for c in index.manifests]:
            self.copy(descriptor)
            result = descriptor
        else:
            kept = [
                e
                if e.platform is not None or c.platform is None
                else Descriptor(e.media_type, e.digest, e.size, e.annotations, c.platform)
                for e, c in zip(entries, index.manifests, strict=True)
            ]
            result = self.add_bytes(
                canonical_json(Index(manifests=tuple(kept), annotations=index.annotations)), MediaType.INDEX
            )
        self.rewritten[descriptor.digest] = result
        return result

    def _manifest(self, descriptor: Descriptor, manifest: Manifest, config: ImageConfig | None) -> Descriptor:
        wanted = self.compression
        convert = (
            wanted is not None
            and config is not None
            and any(Compression.of_media_type(layer.media_type) is not wanted for layer in manifest.layers)
        )
        if not convert:
            for blob in (manifest.config, *manifest.layers, descriptor):
                self.copy(blob)
            return descriptor
        assert wanted is not None and config is not None
        layers = tuple(
            self.layer(layer, diff_id, wanted) for layer, diff_id in zip(manifest.layers, config.diff_ids, strict=True)
        )
        self.copy(manifest.config)
        config_descriptor = Descriptor(MediaType.CONFIG, manifest.config.digest, manifest.config.size)
        new = Manifest(
            config=config_descriptor,
            layers=layers,
            artifact_type=manifest.artifact_type,
            subject=manifest.subject,
            annotations=manifest.annotations,
        )
        return self.add_bytes(canonical_json(new), MediaType.MANIFEST, descriptor.platform)

    def layer(self, layer: Descriptor, diff_id: Digest, wanted: Compression) -> Descriptor:
        if Compression.of_media_type(layer.media_type) is wanted:
            self.copy(layer)
            return layer
        with tempfile.TemporaryFile(dir=self.scratch) as spool:
            recompress(self.store, layer, diff_id, wanted, spool, what=f"layer {layer.digest}")
            return self.add_spooled(spool, wanted.layer_media_type)

    def copy(self, descriptor: Descriptor) -> None:
        name = _blob_name(descriptor.digest)
        if isinstance(self.out, TarOutput) and self.out.has(name):
            return
        self.out.add_dir(f"blobs/{descriptor.digest.algorithm}")
        with self.store.open(descriptor) as f:
            self.out.add_file(name, f, descriptor.size)

    def add_bytes(self, data: bytes, media_type: str, platform: object = None) -> Descriptor:
        descriptor = Descriptor(media_type, Digest.of(data), len(data), platform=platform)  # type: ignore[arg-type]
        self.out.add_dir(f"blobs/{descriptor.digest.algorithm}")
        self.out.add_file(_blob_name(descriptor.digest), io.BytesIO(data), len(data))
        return descriptor

    def add_spooled(self, spool: BinaryIO, media_type: str) -> Descriptor:
        spool.seek(0)
        digester = Digester()
        while chunk := spool.read(CHUNK):
            digester.update(chunk)
        spool.seek(0)
        descriptor = Descriptor(media_type, digester.digest(), digester.size)
        self.out.add_dir(f"blobs/{descriptor.digest.algorithm}")
        self.out.add_file(_blob_name(descriptor.digest), spool, descriptor.size)
        return descriptor


def _blob_name(digest: Digest) -> str:
    return f"blobs/{digest.algorithm}/{digest.hex}"
