"""Checking out an image: its layers unpacked once into committed snapshots, a fresh writable one on top.

`checkout(store, image)` walks the image's layers bottom up. Each prefix of
the stack is a committed snapshot named by its chainID; one that is missing
(never unpacked, or its files were removed: snapshots are a cache) is
unpacked from its verified blob into a new active snapshot and committed.
Two processes unpacking the same layer race harmlessly: the first commit
wins, the loser removes its copy. On top goes an active snapshot under a
fresh key, held by a lease so that `pybuild prune` leaves it alone, and
removed by `Checkout.remove` (the lease dies with its process otherwise,
and the next sweep takes what a killed process left).
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, NamedTuple

from .compression import Compression
from .digest import Digest
from .errors import AlreadyExists, MalformedDocument, NotFound
from .image import chain_id

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

    from .content import BlobLease
    from .descriptor import Descriptor
    from .images import Image, Store
    from .layer import Layer
    from .metadata import Lease
    from .snapshots import Mount

__all__ = ["Checkout", "Committed", "checkout", "checkout_layers", "image_layers", "unpack_layers"]


class Checkout(NamedTuple):
    """A writable snapshot over an image: mount `mounts` as a root, then `remove()` (or keep it)."""

    store: Store
    key: str
    parent: str | None  # the chainID of the image's layers, None for an image without layers
    mounts: tuple[Mount, ...]
    lease: Lease

    @property
    def upper_dir(self) -> Path:
        return self.store.snapshots.upper_dir(self.key)

    def remove(self) -> None:
        try:
            self.store.snapshots.remove(self.key)
        finally:
            self.lease.release()

    def commit(
        self,
        *,
        compression: Compression | None = None,
        source_date_epoch: int | None = None,
        lease: BlobLease | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> Committed:
        """Turn what was written into a layer blob, and the snapshot into the committed one of the new stack.

        Call it once every process that wrote is gone and the root is
        unmounted (a sandbox run has returned). OverlayFS whiteouts and opaque
        directories become OCI ones (store.tarwriter); the layer goes through
        the store's layer writer; the snapshot is committed under the new
        chainID (or, when another build committed that stack first, removed
        in favour of theirs). The checkout's lease is released either way;
        pass the caller's `lease` to keep the new blob from prune until an
        image or cache record references it. `progress(n)` hears of every n
        bytes of the layer's tar.
        """
        from .layer import write_layer

        snapshots = self.store.snapshots
        try:
            layer = write_layer(
                self.upper_dir,
                self.store.content,
                compression=compression or Compression.ZSTD,
                source_date_epoch=source_date_epoch,
                overlay_upper=self.parent is not None,
                lease=lease,
                progress=progress,
            )
            chain = str(chain_id([Digest.parse(self.parent), layer.diff_id]) if self.parent else layer.diff_id)
            try:
                snapshots.commit(chain, self.key)
            except AlreadyExists:
                snapshots.remove(self.key)
        except BaseException:
            with contextlib.suppress(NotFound):
                snapshots.remove(self.key)
            raise
        finally:
            self.lease.release()
        return Committed(layer, chain)


class Committed(NamedTuple):
    """What `Checkout.commit` made: the layer blob, and the chainID naming the stack with it on top."""

    layer: Layer
    chain_id: str


def checkout(store: Store, image: Image, *, prefix: str = "checkout") -> Checkout:
    return checkout_layers(store, image_layers(image), prefix=prefix)


def checkout_layers(
    store: Store, layers: Sequence[tuple[Descriptor, Digest]], *, prefix: str = "checkout"
) -> Checkout:
    """A fresh writable snapshot over `layers` (blob descriptor, diff_id), bottom first; see `checkout`."""
    parent = unpack_layers(store, layers)
    key = f"{prefix}-{os.urandom(8).hex()}"
    lease = store.metadata.lease()
    try:
        lease.add_snapshot(key)
        mounts = store.snapshots.prepare(key, parent)
    except BaseException:
        lease.release()
        raise
    return Checkout(store, key, parent, mounts, lease)


def image_layers(image: Image) -> tuple[tuple[Descriptor, Digest], ...]:
    """`image`'s layers paired with their diff_ids, bottom first."""
    layers, diff_ids = image.manifest.layers, image.config.diff_ids
    if len(layers) != len(diff_ids):
        raise MalformedDocument(
            f"image {image.manifest_descriptor.digest}: {len(layers)} layer(s) but {len(diff_ids)} diff_id(s)"
        )
    return tuple(zip(layers, diff_ids))


def unpack_layers(store: Store, layers: Sequence[tuple[Descriptor, Digest]]) -> str | None:
    """Make sure each prefix of `layers` is a committed snapshot; the top one's name (None: no layers)."""
    snapshots = store.snapshots
    chain: str | None = None
    for layer, diff_id in layers:
        parent, chain = chain, str(chain_id([chain, diff_id]) if chain else diff_id)
        if snapshots.usable(chain):
            continue
        from .layer import apply_layer

        snapshots.discard_damaged(chain)  # a record whose files are gone: rebuild it
        key = f"unpack-{os.urandom(8).hex()}"
        with store.metadata.lease() as lease:
            lease.add_snapshot(key)
            snapshots.prepare(key, parent)
            try:
                apply_layer(store.content, layer, snapshots.upper_dir(key), diff_id=diff_id, whiteouts="overlay")
                snapshots.commit(chain, key)
            except AlreadyExists:  # another process committed it first: use theirs
                snapshots.remove(key)
            except BaseException:
                with contextlib.suppress(NotFound):
                    snapshots.remove(key)
                raise
    return chain
