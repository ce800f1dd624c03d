"""Tags: image names kept as entries of the store's OCI layout `index.json`.

An entry's `org.opencontainers.image.ref.name` (and `io.containerd.image.name`) is the full normalised
reference, `docker.io/library/busybox:latest`, so skopeo, umoci and podman find it by that name. Writers
flock `index.json.lock` and rename a new file into place; readers take no lock. Foreign entries are kept.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .descriptor import Descriptor, MediaType
from .digest import Digest
from .durable import atomic_write
from .errors import AlreadyExists, InvalidReference, MalformedDocument, NotFound
from .image import MAX_MANIFEST_SIZE, canonical_json, parse_index
from .reference import Reference, parse_reference

__all__ = ["CONTAINERD_NAME", "REF_NAME", "TagStore", "entry_reference", "name_annotations"]

REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"
INDEX = "index.json"
LAYOUT = "oci-layout"
LOCK = "index.json.lock"
_LAYOUT_BYTES = b'{"imageLayoutVersion":"1.0.0"}'
_Entries = list[dict[str, Any]]


def name_annotations(ref: Reference) -> dict[str, str]:
    """The annotations that name an image in an OCI layout, for `ref` (tag only, no digest)."""
    name = str(Reference(ref.domain, ref.path, ref.tag))
    return {REF_NAME: name, CONTAINERD_NAME: name}


class TagStore:
    """The tags of the OCI layout at `root`; creates `oci-layout` and an empty `index.json` when missing."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        _check_or_create_layout(self.root)
        if not (self.root / INDEX).exists():
            with self._locked():
                if not (self.root / INDEX).exists():
                    self._write([], {})

    def list(self) -> list[tuple[Reference, Descriptor]]:
        """Every tag and the descriptor it names, in `index.json` order."""
        entries, _ = self._read()
        return [(ref, _descriptor(raw)) for raw in entries if (ref := entry_reference(raw)) is not None]

    def untagged(self) -> list[Descriptor]:
        """The entries no tag names (Docker's dangling images: untagged builds), in `index.json` order."""
        entries, _ = self._read()
        return [_descriptor(raw) for raw in entries if entry_reference(raw) is None]

    def add_untagged(self, descriptor: Descriptor) -> None:
        """List `descriptor` without a name, unless an entry (named or not) already lists it."""
        with self._locked():
            entries, top = self._read()
            if all(raw.get("digest") != str(descriptor.digest) for raw in entries):
                self._write([*entries, descriptor.to_json()], top)

    def remove_untagged(self, descriptor: Descriptor) -> bool:
        """Drop the unnamed entry of `descriptor`; whether there was one."""
        with self._locked():
            entries, top = self._read()
            kept = [e for e in entries if entry_reference(e) is not None or e.get("digest") != str(descriptor.digest)]
            if len(kept) == len(entries):
                return False
            self._write(kept, top)
            return True

    def get(self, ref: str | Reference) -> Descriptor:
        """The descriptor a tag (or `name@digest`) names; NotFound if none."""
        wanted = _as_reference(ref)
        for raw in self._read()[0]:
            have = entry_reference(raw)
            if have is None or have.name != wanted.name:
                continue
            descriptor = _descriptor(raw)
            if wanted.tag is not None and have.tag != wanted.tag:
                continue
            if wanted.digest is not None and descriptor.digest != wanted.digest:
                continue
            return descriptor
        raise NotFound(f"image {wanted}: not found")

    def set(self, ref: str | Reference, descriptor: Descriptor) -> None:
        """Point the tag `ref` at `descriptor` (a manifest or index), replacing what it named."""
        self.set_many([(ref, descriptor)])

    def set_many(self, pairs: Iterable[tuple[str | Reference, Descriptor]], *, replace: bool = True) -> None:
        """Set several tags in one atomic update; with `replace=False`, AlreadyExists if any tag
        already names a different image (and nothing changes)."""
        wanted = [(_tag_reference(ref, descriptor), descriptor) for ref, descriptor in pairs]
        with self._locked():
            before, top = self._read()
            entries = before
            for ref, descriptor in wanted:
                entries = _put(entries, ref, descriptor, replace)
            # an image add_untagged listed is no longer dangling (what other tools wrote stays)
            ours = {str(descriptor.digest): descriptor.to_json() for _, descriptor in wanted}
            entries = [e for e in entries if entry_reference(e) is not None or e != ours.get(e.get("digest"))]
            if entries != before:  # re-tagging what a tag already names writes nothing (no fsyncs)
                self._write(entries, top)

    def remove(self, ref: str | Reference) -> Descriptor:
        """Untag `ref` (the image's blobs stay); NotFound if it names nothing."""
        wanted = _as_reference(ref)
        with self._locked():
            entries, top = self._read()
            kept = [raw for raw in entries if not _same_tag(entry_reference(raw), wanted)]
            if len(kept) == len(entries):
                raise NotFound(f"image {wanted}: not found")
            removed = next(raw for raw in entries if _same_tag(entry_reference(raw), wanted))
            self._write(kept, top)
        return _descriptor(removed)

    def _read(self) -> tuple[_Entries, dict[str, Any]]:
        return _read_index(self.root / INDEX)

    def _write(self, entries: _Entries, top: dict[str, Any]) -> None:
        document = {**top, "schemaVersion": 2, "mediaType": MediaType.INDEX, "manifests": entries}
        atomic_write(self.root / INDEX, canonical_json(document))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the lock


def _read_index(path: Path) -> tuple[_Entries, dict[str, Any]]:
    """The raw entries of `index.json` (kept as written) and its other fields, after a strict parse."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return [], {}
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_MANIFEST_SIZE + 1)
    parse_index(data, Descriptor(MediaType.INDEX, Digest.of(data), len(data)))
    top = json.loads(data)
    return top.pop("manifests"), top


def entry_reference(raw: dict[str, Any]) -> Reference | None:
    """The reference an `index.json` entry is tagged with, or None (untagged or not a valid name)."""
    annotations = raw.get("annotations") or {}
    for key in (CONTAINERD_NAME, REF_NAME):
        name = annotations.get(key)
        if isinstance(name, str):
            with contextlib.suppress(InvalidReference):
                ref = parse_reference(name)
                if ref.tag is not None:
                    return ref
    return None


def _put(entries: _Entries, ref: Reference, descriptor: Descriptor, replace: bool) -> _Entries:
    new = descriptor.with_annotations(**name_annotations(ref)).to_json()
    out: _Entries = []
    placed = False
    for raw in entries:
        if not _same_tag(entry_reference(raw), ref):
            out.append(raw)
            continue
        if not replace and raw.get("digest") != str(descriptor.digest):
            raise AlreadyExists(f"tag {ref} already names {raw.get('digest')}: not replacing it")
        if not placed:
            out.append(new)
            placed = True
    if not placed:
        out.append(new)
    return out


def _same_tag(have: Reference | None, wanted: Reference) -> bool:
    return have is not None and have.name == wanted.name and have.tag == wanted.tag


def _as_reference(ref: str | Reference) -> Reference:
    return ref if isinstance(ref, Reference) else parse_reference(ref)


def _tag_reference(ref: str | Reference, descriptor: Descriptor) -> Reference:
    parsed = _as_reference(ref)
    if parsed.tag is None:
        raise InvalidReference(f"cannot tag {parsed}: a tag needs a name:tag, not only a digest")
    if parsed.digest is not None and parsed.digest != descriptor.digest:
        raise InvalidReference(f"cannot tag {parsed}: the image is {descriptor.digest}")
    if descriptor.media_type not in MediaType.MANIFESTS | MediaType.INDEXES:
        raise InvalidReference(f"cannot tag {parsed}: {descriptor.media_type} is not a manifest or index")
    return Reference(parsed.domain, parsed.path, parsed.tag)


def _descriptor(raw: dict[str, Any]) -> Descriptor:
    descriptor = Descriptor.from_json(raw, "index.json entry")
    others = {k: v for k, v in descriptor.annotations.items() if k not in (REF_NAME, CONTAINERD_NAME)}
    return Descriptor(
        descriptor.media_type, descriptor.digest, descriptor.size, MappingProxyType(others), descriptor.platform
    )


def _check_or_create_layout(root: Path) -> None:
    path = root / LAYOUT
    if not path.exists():
        atomic_write(path, _LAYOUT_BYTES, replace=False)
        return
    with open(path, "rb") as f:
        data = f.read(4096)
    try:
        version = json.loads(data).get("imageLayoutVersion")
    except (ValueError, AttributeError):
        version = None
    if version != MediaType.OCI_LAYOUT_VERSION:
        raise MalformedDocument(f"{path}: not an OCI image layout version {MediaType.OCI_LAYOUT_VERSION}")
