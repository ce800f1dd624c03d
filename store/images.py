"""Store: one pybuild store directory, and the image-level operations on it.

The directory is an OCI image layout (`oci-layout`, `index.json` with the
tags, `blobs/sha256/...`) that skopeo, umoci and podman read directly, plus
pybuild's own files beside it (`pybuild.db` for leases and cache records,
`ingest/`, `staging/`, lock files). Its location: an explicit directory, else
$PYBUILD_STORE, else /var/lib/pybuild for root, else
$XDG_DATA_HOME/pybuild or ~/.local/share/pybuild.

Images are named by a tag (`busybox` means docker.io/library/busybox:latest),
by digest (`sha256:...` of the manifest or of the config, the image id), or by
a unique prefix of either (at least 4 hex digits).
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from .content import read_blob
from .descriptor import Descriptor, MediaType
from .digest import Digest
from .errors import InvalidReference, NotFound, StoreError
from .image import (
    ImageConfig,
    Manifest,
    host_platform,
    parse_config,
    parse_index,
    parse_manifest,
)
from .local import LocalContentStore
from .reference import Reference, parse_reference
from .tags import TagStore

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from .checkout import Checkout
    from .fsck import Problem
    from .gc import GcReport
    from .metadata import Metadata
    from .overlay import OverlaySnapshotter

__all__ = ["Image", "Store", "default_root"]


def default_root(environ: Mapping[str, str] | None = None, euid: int | None = None) -> Path:
    """Where the store lives when no directory is given."""
    environ = os.environ if environ is None else environ
    if environ.get("PYBUILD_STORE"):
        return Path(environ["PYBUILD_STORE"])
    if (os.geteuid() if euid is None else euid) == 0:
        return Path("/var/lib/pybuild")
    data = environ.get("XDG_DATA_HOME") or str(Path(environ.get("HOME") or Path.home()) / ".local" / "share")
    return Path(data) / "pybuild"


class Image(NamedTuple):
    """A stored image for this host's platform: its names, manifest and config."""

    names: tuple[Reference, ...]
    descriptor: Descriptor  # what the names point at: a manifest, or an index
    manifest_descriptor: Descriptor
    manifest: Manifest
    config: ImageConfig

    @property
    def id(self) -> Digest:
        """The image id, as Docker has it: the config's digest."""
        return self.manifest.config.digest

    @property
    def size(self) -> int:
        """Bytes of the manifest, config and layers as stored (compressed)."""
        return self.manifest_descriptor.size + self.manifest.config.size + sum(l.size for l in self.manifest.layers)


class Store:
    """A pybuild store at `root`; see the module docstring."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()
        self.content = LocalContentStore(self.root)
        self.tags = TagStore(self.root)

    @cached_property
    def metadata(self) -> Metadata:
        from .metadata import Metadata

        return Metadata(self.root)

    @cached_property
    def snapshots(self) -> OverlaySnapshotter:
        from .overlay import OverlaySnapshotter

        return OverlaySnapshotter(self.root, self.metadata)

    def sweep_snapshots(self) -> list[str]:
        """Remove the writable snapshots of processes that died (a `pybuild run` killed with SIGKILL), with their files.

        Their leases die with them; committed snapshots are kept (a cache,
        pruned with the images). Cheap enough to run before every checkout:
        it touches only the dead ones (`prune` looks for other leftovers).
        """
        metadata = self.metadata
        with metadata.gc_lock(exclusive=True):
            reaped = metadata.reap_leases()
            forgotten = metadata.sweep_snapshots(excluding=reaped)
        self.snapshots.remove_files(forgotten)
        return forgotten

    def checkout(self, image: str | Image, *, prefix: str = "checkout") -> Checkout:
        """A fresh writable snapshot over `image`'s layers (unpacked on first use); see store.checkout."""
        from .checkout import checkout

        return checkout(self, image if isinstance(image, Image) else self.image(image), prefix=prefix)

    def checkout_layers(self, layers: Sequence[tuple[Descriptor, Digest]], *, prefix: str = "checkout") -> Checkout:
        """A fresh writable snapshot over `layers` (blob, diff_id), bottom first: a build step's root."""
        from .checkout import checkout_layers

        return checkout_layers(self, layers, prefix=prefix)

    # ---- finding images --------------------------------------------------

    def resolve(self, name: str) -> tuple[Reference | None, Descriptor]:
        """The tag (or None) and the descriptor (manifest or index) `name` stands for."""
        hex_part = name.removeprefix("sha256:")
        is_hex = len(hex_part) >= 4 and all(c in "0123456789abcdef" for c in hex_part)
        if not name.startswith("sha256:") and len(hex_part) != 64:
            try:
                ref = parse_reference(name)
            except InvalidReference:
                if not is_hex:
                    raise
            else:
                try:
                    return ref, self.tags.get(ref)
                except NotFound:
                    if not is_hex:
                        raise
        if not is_hex:
            raise NotFound(f"image {name}: not found")
        return None, self._by_prefix(name, hex_part)

    def _by_prefix(self, name: str, hex_part: str) -> Descriptor:
        tagged = {d.digest: d for d in self.roots()}
        found = [d for digest, d in tagged.items() if digest.hex.startswith(hex_part)]
        if not found:  # the image id: the config's digest
            found = [d for d in tagged.values() if self._config_digest(d).hex.startswith(hex_part)]
        if len(found) > 1:
            listed = ", ".join(sorted(d.digest.short for d in found))
            raise StoreError(f"image {name}: ambiguous, it starts {listed}")
        if not found:
            raise NotFound(f"image {name}: not found")
        return found[0]

    def image(self, name: str) -> Image:
        """The image `name` stands for, for this host's platform."""
        ref, descriptor = self.resolve(name)
        return self._image(descriptor, (ref,) if ref is not None else self._names(descriptor.digest))

    def images(self) -> list[Image]:
        """Every tagged image, grouped by what the tags point at, in tag order; then the untagged ones."""
        by_digest: dict[Digest, list[Reference]] = {}
        first: dict[Digest, Descriptor] = {}
        for ref, descriptor in self.tags.list():
            by_digest.setdefault(descriptor.digest, []).append(ref)
            first.setdefault(descriptor.digest, descriptor)
        for descriptor in self.tags.untagged():
            by_digest.setdefault(descriptor.digest, [])
            first.setdefault(descriptor.digest, descriptor)
        return [self._image(first[d], tuple(refs)) for d, refs in by_digest.items()]

    def _names(self, digest: Digest) -> tuple[Reference, ...]:
        return tuple(ref for ref, d in self.tags.list() if d.digest == digest)

    def _image(self, descriptor: Descriptor, names: tuple[Reference, ...]) -> Image:
        manifest_descriptor = self._platform_manifest(descriptor)
        manifest = parse_manifest(read_blob(self.content, manifest_descriptor, limit=4 << 20), manifest_descriptor)
        config = parse_config(read_blob(self.content, manifest.config), manifest.config)
        return Image(names, descriptor, manifest_descriptor, manifest, config)

    def _platform_manifest(self, descriptor: Descriptor) -> Descriptor:
        if descriptor.media_type not in MediaType.INDEXES:
            return descriptor
        index = parse_index(read_blob(self.content, descriptor, limit=4 << 20), descriptor)
        arch, _ = host_platform()
        for entry in index.manifests:
            wanted = entry.platform or {}
            if wanted.get("os", "linux") == "linux" and wanted.get("architecture", arch) == arch:
                return entry
        raise NotFound(f"index {descriptor.digest}: no image for linux/{arch}")

    def _config_digest(self, descriptor: Descriptor) -> Digest:
        try:
            return self._image(descriptor, ()).id
        except StoreError:
            return descriptor.digest  # unreadable: matched by its own digest only

    # ---- names -----------------------------------------------------------------

    def tag(self, source: str, target: str) -> Reference:
        """Give the image `source` stands for the name `target`."""
        _, descriptor = self.resolve(source)
        ref = parse_reference(target)
        if ref.digest is not None:
            raise InvalidReference(f"{target}: a tag cannot contain a digest")
        self.tags.set(ref, descriptor)
        return ref

    def untag(self, name: str) -> list[Reference]:
        """Remove a tag, or every tag of an image named by digest or id (an untagged image: its entry);
        blobs go at the next prune."""
        ref, descriptor = self.resolve(name)
        refs = [ref] if ref is not None else list(self._names(descriptor.digest))
        for r in refs:
            self.tags.remove(r)
        if ref is None:
            self.tags.remove_untagged(descriptor)
        return refs

    # ---- maintenance -----------------------------------------------------------

    def roots(self) -> list[Descriptor]:
        """What the index lists, named or not: what GC keeps, and what ids and digests are looked up in."""
        return [descriptor for _, descriptor in self.tags.list()] + self.tags.untagged()

    def children(self, descriptor: Descriptor) -> Iterable[Descriptor]:
        from .oci_archive import children

        return children(self.content, descriptor)

    def prune(self, *, keep_cache: bool = True, dry_run: bool = False) -> GcReport:
        """Remove what no tag, kept cache record or live build lease needs."""
        from .gc import collect

        report = collect(
            self.content,
            self.metadata,
            roots=self.roots(),
            children=self.children,
            keep_cache=lambda key, record: keep_cache,
            dry_run=dry_run,
        )
        if not dry_run and (self.root / "snapshots").is_dir():
            self.snapshots.sweep()  # the files of the snapshot records collect forgot, and other leftovers
        return report

    def verify(self) -> list[Problem]:
        """Re-hash every blob and check every tagged image's references."""
        from .fsck import verify

        return verify(self.content, roots=self.roots(), children=self.children)
