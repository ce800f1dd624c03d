"""Images in and out of the store: `save` (OCI archive or layout directory, Docker archive) and `load`.

`load` streams an archive (plain, gzip or zstd tar; never extracted) or reads a layout directory into a
private staging store, verifying every blob; only a complete, consistent set is linked into the store
(manifests last) and tagged. On any error the staging area goes and the store is as it was.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal, Self

from .archive import Limits, TarGuard
from .compression import Compression, auto_decompressor
from .content import BlobLease, copy_blob, write_blob
from .descriptor import MAX_BLOB_SIZE, Descriptor, MediaType
from .digest import Digest
from .docker_archive import read_docker, write_docker
from .durable import fsync_directory, replacing
from .errors import (
    AlreadyExists,
    IntegrityError,
    InvalidDigest,
    InvalidReference,
    LimitExceeded,
    MalformedDocument,
    NotFound,
    StoreError,
    UnsafeArchiveEntry,
    UnsupportedMediaType,
)
from .image import (
    MAX_MANIFEST_SIZE,
    load_json,
    parse_index,
)
from .local import STAGING_LOCK, LocalContentStore
from .log import lazy_logger
from .oci_archive import (
    MAX_MANIFESTS,
    DirOutput,
    ImageGraph,
    StoreSource,
    TarOutput,
    walk,
    write_layout,
)
from .reference import Reference, parse_reference
from .tags import CONTAINERD_NAME, REF_NAME, TagStore

__all__ = ["ArchiveFormat", "LoadedImage", "load", "save"]

log = lazy_logger(__name__)

ArchiveFormat = Literal["oci", "oci-dir", "docker"]
_SMALL_FILES = {
    "oci-layout": 4096,
    "index.json": MAX_MANIFEST_SIZE,
    "manifest.json": MAX_MANIFEST_SIZE,
    "repositories": MAX_MANIFEST_SIZE,
}
_BLOB_MEMBER = re.compile(r"blobs/([^/]+)/([^/]+)")
_MAX_NAME = 4096
_ARCHIVE_LIMITS = Limits(max_entries=100_000, max_size=MAX_BLOB_SIZE)


@dataclass(frozen=True, slots=True)
class LoadedImage:
    """One image `load` put in the store: its tag (None if the archive named none) and its manifest or index."""

    reference: Reference | None
    descriptor: Descriptor


# ---- save ---------------------------------------------------------------------


def save(
    store: LocalContentStore,
    images: Sequence[tuple[str | Reference | None, Descriptor]],
    dest: str | os.PathLike[str] | BinaryIO,
    *,
    format: ArchiveFormat = "oci",
    compression: Compression | None = None,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Write `images` (tag or None, manifest or index descriptor) to `dest`.

    "oci" is a tar of an OCI layout, "oci-dir" the layout as a new directory,
    "docker" a `docker save` archive. `compression` recompresses layers (for
    docker: NONE, the default, or GZIP). Every blob is checked present before
    anything is written; a file or directory `dest` appears only when complete.
    `progress(n)` hears of every n bytes of file content written.
    """
    refs = [(_as_reference(ref), descriptor) for ref, descriptor in images]
    graphs: dict[Digest, ImageGraph] = {}
    for ref, descriptor in refs:
        if descriptor.digest not in graphs:
            graphs[descriptor.digest] = walk(descriptor, StoreSource(store), f"image {ref or descriptor.digest}")
    if format == "docker":
        grouped: dict[Digest, list[Reference]] = {digest: [] for digest in graphs}
        for ref, descriptor in refs:
            if ref is not None:
                grouped[descriptor.digest].append(ref)
        with _output(dest, directory=False, progress=progress) as (out, scratch):
            write_docker(
                store,
                [(grouped[d], graphs[d]) for d in graphs],
                out,  # type: ignore[arg-type]
                compression=compression or Compression.NONE,
                scratch=scratch,
            )
    elif format in ("oci", "oci-dir"):
        with _output(dest, directory=format == "oci-dir", progress=progress) as (out, scratch):
            write_layout(
                store, [(ref, graphs[d.digest]) for ref, d in refs], out, compression=compression, scratch=scratch
            )
    else:
        raise ValueError(f"unknown archive format {format!r}: use 'oci', 'oci-dir' or 'docker'")


@contextlib.contextmanager
def _output(
    dest: str | os.PathLike[str] | BinaryIO, *, directory: bool, progress: Callable[[int], None] | None
) -> Iterator[tuple[Any, Path | None]]:
    if hasattr(dest, "write"):
        if directory:
            raise ValueError("an OCI layout directory needs a path, not a stream")
        out = TarOutput(dest)  # type: ignore[arg-type]
        yield _reporting(out, progress), None
        out.close()
        return
    path = Path(dest)  # type: ignore[arg-type]
    if directory:
        if path.exists():
            raise AlreadyExists(f"{path}: already exists; an OCI layout is written to a new directory")
        temp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        os.chmod(temp, 0o755)
        try:
            yield _reporting(DirOutput(temp), progress), path.parent
            os.rename(temp, path)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        fsync_directory(path.parent)
    else:
        with replacing(path) as f:
            tar = TarOutput(f)
            yield _reporting(tar, progress), path.parent
            tar.close()


def _reporting(out: TarOutput | DirOutput, progress: Callable[[int], None] | None) -> Any:
    return out if progress is None else _ReportingOutput(out, progress)


class _ReportingOutput:
    """An archive output that reports the bytes of every file added to it."""

    def __init__(self, out: TarOutput | DirOutput, progress: Callable[[int], None]) -> None:
        self._out, self._progress = out, progress

    def __getattr__(self, name: str) -> Any:
        return getattr(self._out, name)

    def add_file(self, name: str, source: BinaryIO, size: int) -> None:
        self._out.add_file(name, _ReportingReader(source, self._progress), size)


class _ReportingReader:
    def __init__(self, source: BinaryIO, progress: Callable[[int], None]) -> None:
        self._source, self._progress = source, progress

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self._progress(len(data))
        return data


# ---- load ---------------------------------------------------------------------


def load(
    store: LocalContentStore,
    source: str | os.PathLike[str] | BinaryIO,
    *,
    compression: Compression = Compression.ZSTD,
    replace_tags: bool = False,
    lease: BlobLease | None = None,
    name: str = "archive",
) -> list[LoadedImage]:
    """Load every image of an OCI archive, OCI layout directory or Docker archive; all or nothing.

    Docker archive layers are recompressed to `compression` (their diff_ids,
    and so the image id, stay); OCI blobs are kept byte for byte. A tag that
    already names another image is AlreadyExists unless `replace_tags`.
    Messages call a path `source` by its path, a stream by `name`.
    """
    if not hasattr(source, "read"):
        name = os.fspath(source)  # type: ignore[arg-type]
    with _Staging(store) as staging:
        if not hasattr(source, "read") and Path(source).is_dir():  # type: ignore[arg-type]
            images = _load_directory(Path(source), staging)  # type: ignore[arg-type]
        elif hasattr(source, "read"):
            images = _load_archive(source, staging, name, compression)  # type: ignore[arg-type]
        else:
            with open(source, "rb") as f:  # type: ignore[arg-type]
                images = _load_archive(f, staging, name, compression)
        pairs = [(ref, graph.root) for ref, graph in images if ref is not None and ref.tag is not None]
        claimed: dict[tuple[str, str | None], Digest] = {}
        for ref, descriptor in pairs:
            if claimed.setdefault((ref.name, ref.tag), descriptor.digest) != descriptor.digest:
                raise MalformedDocument(f"{name}: tag {ref} names two different images")
        tags = TagStore(store.root)
        for ref, descriptor in pairs:
            _check_tag(tags, ref, descriptor, replace_tags)
        staging.publish([blob for _, graph in images for blob in graph.blobs], lease)
        tags.set_many(pairs, replace=replace_tags)
    return [LoadedImage(ref, graph.root) for ref, graph in images]


def _check_tag(tags: TagStore, ref: Reference, descriptor: Descriptor, replace: bool) -> None:
    with contextlib.suppress(NotFound):
        have = tags.get(Reference(ref.domain, ref.path, ref.tag))
        if have.digest == descriptor.digest:
            return
        if not replace:
            raise AlreadyExists(f"tag {ref} already names {have.digest}; load with replace_tags to move it")
        log.info("tag %s moves from %s to %s", ref, have.digest, descriptor.digest)


class _Staging:
    """A private LocalContentStore under `<store>/staging/`, removed on exit."""

    def __init__(self, store: LocalContentStore) -> None:
        self.store = store
        self.parent = store.root / "staging"
        for attempt in range(3):  # another load may remove the empty parent between mkdir and mkdtemp
            self.parent.mkdir(mode=0o700, exist_ok=True)
            try:
                self.dir = Path(tempfile.mkdtemp(prefix="load-", dir=self.parent))
                break
            except FileNotFoundError:
                if attempt == 2:
                    raise
        # Locked while the load runs: GC removes staging directories whose lock is free.
        self._lock = os.open(self.dir / STAGING_LOCK, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        self.content = LocalContentStore(self.dir)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        os.close(self._lock)
        with contextlib.suppress(OSError):
            self.parent.rmdir()

    def publish(self, blobs: list[Descriptor], lease: BlobLease | None) -> None:
        """Link verified staged blobs into the store, in order; a blob already there is success."""
        touched = set()
        for descriptor in blobs:
            if lease is not None:
                lease.add_blob(descriptor.digest)
            if self.store.exists(descriptor.digest):
                continue
            target = self.store.blob_path(descriptor.digest)
            target.parent.mkdir(exist_ok=True)
            try:
                os.link(self.content.blob_path(descriptor.digest), target)
            except FileExistsError:
                pass
            except OSError:
                copy_blob(self.content, self.store, descriptor)
            touched.add(target.parent)
        for directory in touched:
            fsync_directory(directory)


class _StagedSource(StoreSource):
    """A BlobSource over the staging store; `fetch` brings a blob in first (layout directories)."""

    def __init__(self, staging: _Staging, archive: str, fetch: Any = None) -> None:
        super().__init__(staging.content, where=archive)
        self.fetch = fetch

    def missing(self, what: str) -> StoreError:
        return MalformedDocument(f"{what}: blob missing from {self.where}")

    def require(self, descriptor: Descriptor, what: str) -> None:
        if self.fetch is not None and not self.store.exists(descriptor.digest):
            self.fetch(descriptor, what)
        super().require(descriptor, what)


def _load_archive(
    stream: BinaryIO, staging: _Staging, archive: str, compression: Compression
) -> list[tuple[Reference | None, ImageGraph]]:
    small, members = _stage_members(auto_decompressor(stream, limit=MAX_BLOB_SIZE, what=archive), staging, archive)
    source = _StagedSource(staging, archive)
    if "index.json" in small or "oci-layout" in small:
        _check_layout(small.get("oci-layout"), archive)
        if "index.json" not in small:
            raise MalformedDocument(f"{archive}: an OCI layout without index.json")
        return _layout_images(small["index.json"], source, archive)
    if "manifest.json" in small:
        images = read_docker(small["manifest.json"], members, staging.content, compression=compression, archive=archive)
        out: list[tuple[Reference | None, ImageGraph]] = []
        for refs, descriptor in images:
            graph = walk(descriptor, source, f"{archive}: image {descriptor.digest}")
            out += [(ref, graph) for ref in refs] or [(None, graph)]
        return out
    raise MalformedDocument(
        f"{archive}: neither an OCI layout (oci-layout, index.json) nor a docker archive (manifest.json)"
    )


def _stage_members(stream: BinaryIO, staging: _Staging, archive: str) -> tuple[dict[str, bytes], dict[str, Descriptor]]:
    """Read the tar once: small control files into memory, every other file into the staging store."""
    small: dict[str, bytes] = {}
    members: dict[str, Descriptor] = {}

    def stage(member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        name = _member_name(member.name, archive)
        if member.isdir():
            return
        if not member.isreg() or not name:
            raise UnsafeArchiveEntry(
                f"{archive}: member {name!r} is a link or special file, not a regular file", entry=name
            )
        if name in small or name in members:
            raise MalformedDocument(f"{archive}: member {name!r} appears twice")
        data = tar.extractfile(member)
        assert data is not None
        if name in _SMALL_FILES:
            if member.size > _SMALL_FILES[name]:
                raise LimitExceeded(
                    f"{archive}: member {name}: {member.size} bytes is more than the {_SMALL_FILES[name]} allowed",
                    limit=_SMALL_FILES[name],
                )
            small[name] = data.read()
        else:
            members[name] = _stage_blob(data, member.size, name, staging, archive)

    TarGuard(stream, _ARCHIVE_LIMITS, what=archive).visit(stage)
    return small, members


def _member_name(raw: str, archive: str) -> str:
    """The member's name without "./" and trailing "/"; "" for the archive's root directory."""
    name = raw
    while name.startswith("./"):
        name = name[2:]
    if name.rstrip("/") in ("", ".") and not raw.startswith("/"):
        return ""
    if (
        name.startswith("/")
        or "\0" in name
        or len(name) > _MAX_NAME
        or any(part in ("", ".", "..") for part in name.rstrip("/").split("/"))
    ):
        raise UnsafeArchiveEntry(f"{archive}: unsafe member name {raw[:200]!r}", entry=raw)
    return name.rstrip("/")


def _stage_blob(data: BinaryIO, size: int, name: str, staging: _Staging, archive: str) -> Descriptor:
    expected = None
    if match := _BLOB_MEMBER.fullmatch(name):
        try:
            expected = Digest(match.group(1), match.group(2))
        except InvalidDigest as exc:
            raise MalformedDocument(f"{archive}: member {name}: {exc}") from None
    try:
        return write_blob(staging.content, data, "application/octet-stream", expected=expected, size=size)
    except IntegrityError as exc:
        raise type(exc)(
            f"{archive}: member {name}: content is {exc.actual}, not {exc.expected}",
            expected=exc.expected,
            actual=exc.actual,
        ) from None


def _check_layout(data: bytes | None, archive: str) -> None:
    if data is None:
        raise MalformedDocument(f"{archive}: index.json without an oci-layout file")
    layout = load_json(data, f"{archive}: oci-layout", limit=4096)
    version = layout.get("imageLayoutVersion") if isinstance(layout, dict) else None
    if version != MediaType.OCI_LAYOUT_VERSION:
        raise MalformedDocument(f"{archive}: oci-layout version {version!r} is not {MediaType.OCI_LAYOUT_VERSION}")


def _layout_images(index_json: bytes, source: Any, archive: str) -> list[tuple[Reference | None, ImageGraph]]:
    if len(index_json) > MAX_MANIFEST_SIZE:
        raise LimitExceeded(f"{archive}: index.json is more than {MAX_MANIFEST_SIZE} bytes", limit=MAX_MANIFEST_SIZE)
    try:
        index = parse_index(index_json, Descriptor(MediaType.INDEX, Digest.of(index_json), len(index_json)))
    except MalformedDocument as exc:
        raise MalformedDocument(f"{archive}: index.json: {exc}") from None
    if len(index.manifests) > MAX_MANIFESTS:
        raise LimitExceeded(f"{archive}: index.json lists more than {MAX_MANIFESTS} images", limit=MAX_MANIFESTS)
    out: list[tuple[Reference | None, ImageGraph]] = []
    for i, entry in enumerate(index.manifests):
        if entry.media_type not in MediaType.MANIFESTS | MediaType.INDEXES:
            raise UnsupportedMediaType(
                f"{archive}: index.json manifests[{i}]: {entry.media_type!r} is not an image manifest or index"
            )
        ref = _entry_name(entry, f"{archive}: index.json manifests[{i}]")
        out.append((ref, walk(entry, source, f"{archive}: {ref or entry.digest}")))
    return out


def _entry_name(entry: Descriptor, where: str) -> Reference | None:
    """The name of an index.json entry: io.containerd.image.name, else ref.name normalised as Docker does."""
    name = entry.annotations.get(CONTAINERD_NAME) or entry.annotations.get(REF_NAME)
    if name is None:
        return None
    try:
        ref = parse_reference(name)
    except InvalidReference as exc:
        raise InvalidReference(f"{where}: {exc}") from None
    if ref.digest is not None and ref.digest != entry.digest:
        raise InvalidReference(f"{where}: name {name!r} pins another digest than the entry's {entry.digest}")
    return ref


def _load_directory(root: Path, staging: _Staging) -> list[tuple[Reference | None, ImageGraph]]:
    archive = str(root)
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        small = {
            name: _read_in_root(root_fd, [name], limit, archive)
            for name, limit in _SMALL_FILES.items()
            if name in ("oci-layout", "index.json")
        }
        _check_layout(small["oci-layout"], archive)
        if small["index.json"] is None:
            raise MalformedDocument(f"{archive}: an OCI layout without index.json")

        def fetch(descriptor: Descriptor, what: str) -> None:
            parts = ["blobs", descriptor.digest.algorithm, descriptor.digest.hex]
            fd = _open_in_root(root_fd, parts, archive)
            if fd is None:
                raise MalformedDocument(f"{what}: blob missing from {archive}")
            with open(fd, "rb") as f:
                try:
                    write_blob(
                        staging.content, f, descriptor.media_type, expected=descriptor.digest, size=descriptor.size
                    )
                except IntegrityError as exc:
                    raise type(exc)(
                        f"{what}: {archive} holds {exc.actual}, not {exc.expected}",
                        expected=exc.expected,
                        actual=exc.actual,
                    ) from None

        index_json: bytes = small["index.json"]
        return _layout_images(index_json, _StagedSource(staging, archive, fetch), archive)
    finally:
        os.close(root_fd)


def _open_in_root(root_fd: int, parts: list[str], archive: str) -> int | None:
    """A regular file below `root_fd`, every component opened without following links (R1); None if absent."""
    fd = os.dup(root_fd)
    try:
        for part in parts[:-1]:
            next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        leaf = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UnsafeArchiveEntry(
            f"{archive}: {'/'.join(parts)}: not a plain file or directory ({exc.strerror})", entry="/".join(parts)
        ) from None
    finally:
        os.close(fd)
    if not _is_regular(leaf):
        os.close(leaf)
        raise UnsafeArchiveEntry(f"{archive}: {'/'.join(parts)} is not a regular file", entry="/".join(parts))
    return leaf


def _read_in_root(root_fd: int, parts: list[str], limit: int, archive: str) -> bytes | None:
    fd = _open_in_root(root_fd, parts, archive)
    if fd is None:
        return None
    with open(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise LimitExceeded(f"{archive}: {'/'.join(parts)} is more than the {limit} bytes allowed", limit=limit)
    return data


def _is_regular(fd: int) -> bool:
    return stat.S_ISREG(os.fstat(fd).st_mode)


def _as_reference(ref: str | Reference | None) -> Reference | None:
    return parse_reference(ref) if isinstance(ref, str) else ref
