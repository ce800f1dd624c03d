"""Snapshots: the filesystems containers and build steps run on, and their vocabulary.

A snapshot is a directory tree in one of three kinds:

- **committed**: immutable, named by the chainID of the layers it holds
  (`sha256:...`, see store.image.chain_id). It is a cache of those layers,
  unpacked once and shared by every container and build on top of them.
- **active**: writable, under a caller's `key`, on top of a committed
  `parent` (or of nothing). Processes write into it through a mount.
- **view**: a read-only look at a committed parent under a `key`.

The lifecycle, as in containerd's snapshotter (from which the names come):

    prepare(key, parent)  -> mounts   a new active snapshot over parent
    mounts(key)           -> mounts   the same mounts again
    commit(name, key)                 the active key becomes committed name
    view(key, parent)     -> mounts   a read-only snapshot
    remove(key)                       forget it, its files too
    stat(key) / walk()                what exists

A snapshotter never mounts anything: it *describes* mounts (`Mount`: type,
source, options, as mount(8) takes them) and the caller performs them, in
whatever mount namespace it likes. The bottom of a stack is a bind mount;
anything above is an OverlayFS mount whose `lowerdir` lists the parents,
nearest first, and whose `upperdir` is the active snapshot's own directory.

A committed snapshot is disposable: `Store.checkout` rebuilds a missing one
from the layer blobs it was unpacked from. Snapshots and their records live
in the store directory (see store.overlay for the layout).

Example, unpacking a layer and running on it:

    snaps = OverlaySnapshotter(store_root, metadata)
    snaps.prepare("unpack-1", parent=None)
    apply_layer(content, layer.descriptor, snaps.upper_dir("unpack-1"), whiteouts="overlay")
    snaps.commit(chain_id(None, layer.diff_id), "unpack-1")
    mounts = snaps.prepare("ctr-1", parent=chain_id(None, layer.diff_id))
    ... mount `mounts` on a root, run, unmount ...
    snaps.remove("ctr-1")
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, NamedTuple, Protocol

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["Kind", "Mount", "SnapshotInfo", "Snapshotter"]


class Kind(enum.Enum):
    ACTIVE = "active"
    VIEW = "view"
    COMMITTED = "committed"


# The values of snapshots, checkouts and metadata records are NamedTuples, not dataclasses: just
# as immutable, and far cheaper to define, which every `pybuild run` and build start pays for.
class Mount(NamedTuple):
    """One mount as mount(8) takes it: `mount -t type -o options source target`."""

    type: str
    source: str
    options: tuple[str, ...] = ()

    def option(self, name: str) -> str | None:
        """The value of `name=value` among the options, or None."""
        prefix = name + "="
        for option in self.options:
            if option.startswith(prefix):
                return option[len(prefix) :]
        return None


class SnapshotInfo(NamedTuple):
    kind: Kind
    name: str
    parent: str | None
    created: float  # Unix seconds


class Snapshotter(Protocol):
    def stat(self, key: str) -> SnapshotInfo: ...
    def prepare(self, key: str, parent: str | None = None) -> tuple[Mount, ...]: ...
    def view(self, key: str, parent: str) -> tuple[Mount, ...]: ...
    def mounts(self, key: str) -> tuple[Mount, ...]: ...
    def commit(self, name: str, key: str) -> None: ...
    def remove(self, key: str) -> None: ...
    def walk(self) -> Iterator[SnapshotInfo]: ...
