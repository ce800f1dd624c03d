"""OverlaySnapshotter: snapshots as OverlayFS layers under `<store>/snapshots/`.

Each snapshot is `snapshots/<id>/fs` (its files: the upper directory of an
active snapshot, a lower directory once committed) and `snapshots/<id>/work`
(OverlayFS's work directory, active snapshots only). `<id>` is 16 hex digits
of sha256(key): short, so that a stack of ~200 layers still fits in one
mount option string when written relative to `snapshots/`. Records (kind,
parent) live in the store's metadata database; the directory follows its
record, so commit renames `<id of key>` to `<id of name>`.

Committed snapshots are a cache of their layer blobs, which are the truth
(fsynced by the content store). Their files are not synced to disk: a
commit writes `snapshots/<id>/boot`, this boot's id, and a snapshot made in
an earlier boot is not usable, since a crash may have torn its files (the
kernel writes everything back on a clean shutdown, but nothing here can tell
one from a crash). It is unpacked again from its blob on first use. Writing
a layer's files twice (blob and snapshot) to disk on every commit cost as
much as a build step's own work for large layers.

Mount options turn off what would make an upper directory more than a plain
change set: `redirect_dir` (renamed directories), `metacopy` (metadata-only
copy-up) and `index` (hard-link bookkeeping). Unprivileged, OverlayFS keeps
its markers in `user.overlay.*` xattrs (`userxattr`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import AlreadyExists, NotFound, StoreError
from .snapshots import Kind, Mount, SnapshotInfo

if TYPE_CHECKING:
    from collections.abc import Iterator

    from .metadata import Metadata

__all__ = ["OverlaySnapshotter", "merged_entry"]

_OVERLAY_OPTIONS = ("metacopy=off", "index=off")
_BOOT = "boot"


@functools.cache
def _boot_id() -> str:
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()


class OverlaySnapshotter:
    """See the module docstring; the protocol is store.snapshots.Snapshotter."""

    def __init__(self, root: str | os.PathLike[str], metadata: Metadata, *, userxattr: bool | None = None) -> None:
        self.root = Path(root) / "snapshots"
        self._metadata = metadata
        self._userxattr = os.geteuid() != 0 if userxattr is None else userxattr

    # ---- the protocol ----------------------------------------------------

    def stat(self, key: str) -> SnapshotInfo:
        record = self._metadata.get_snapshot(key)
        return SnapshotInfo(Kind(record.kind), record.key, record.parent, record.created)

    def prepare(self, key: str, parent: str | None = None) -> tuple[Mount, ...]:
        return self._create(key, parent, Kind.ACTIVE)

    def view(self, key: str, parent: str) -> tuple[Mount, ...]:
        return self._create(key, parent, Kind.VIEW)

    def mounts(self, key: str) -> tuple[Mount, ...]:
        info = self.stat(key)
        if info.kind is Kind.COMMITTED:
            raise StoreError(f"snapshot {key}: committed, mount a view or an active snapshot over it")
        return self._mounts(key, info.kind, info.parent)

    def commit(self, name: str, key: str) -> None:
        """Make active `key` the committed snapshot `name` (AlreadyExists when another commit won).

        Its files were written without fsync (by a layer unpack, or by a
        container) and stay so: the snapshot is marked with this boot's id,
        and is usable in this boot only (see the module docstring).
        """
        if self.stat(key).kind is Kind.ACTIVE:  # else NotFound, or the metadata's refusal below
            (self._dir(key) / _BOOT).write_text(_boot_id())
        with self._metadata.gc_lock(exclusive=False):
            self._metadata.commit_snapshot(key, name)  # AlreadyExists when the name is taken
            shutil.rmtree(self._dir(key) / "work", ignore_errors=True)
            if os.path.lexists(self._dir(name)):
                self._rmtree(self._dir(name))  # a leftover no record claims (a remove cut short)
            os.rename(self._dir(key), self._dir(name))

    def remove(self, key: str) -> None:
        self._metadata.delete_snapshot(key)
        self._rmtree(self._dir(key))

    def walk(self) -> Iterator[SnapshotInfo]:
        for record in self._metadata.snapshots():
            yield SnapshotInfo(Kind(record.kind), record.key, record.parent, record.created)

    # ---- beyond the protocol ---------------------------------------------

    def upper_dir(self, key: str) -> Path:
        """The files of snapshot `key`: an active snapshot's upper directory (for the differ)."""
        return self._dir(key) / "fs"

    def usable(self, name: str) -> bool:
        """Whether committed snapshot `name` exists with its files, made in this boot (a cache: they may be gone)."""
        try:
            info = self.stat(name)
        except NotFound:
            return False
        if info.kind is not Kind.COMMITTED or not os.path.isdir(self.upper_dir(name)):
            return False
        try:
            return (self._dir(name) / _BOOT).read_text() == _boot_id()
        except FileNotFoundError:
            return True  # committed by a pybuild that synced its snapshots

    def discard_damaged(self, name: str) -> bool:
        """Forget committed snapshot `name` if it is recorded but its files are gone (with what is stacked on it).

        Checked again under the lock commits take, so a snapshot another
        process has just committed is never mistaken for a damaged one.
        """
        with self._metadata.gc_lock(exclusive=True):
            try:
                self.stat(name)
            except NotFound:
                return False
            if self.usable(name):
                return False
            self.discard(name)
            return True

    def discard(self, name: str) -> None:
        """Forget committed snapshot `name` whose files are missing or damaged, and what was stacked on it."""
        children: dict[str | None, list[str]] = {}
        for record in self._metadata.snapshots():
            children.setdefault(record.parent, []).append(record.key)
        order, todo = [], [name]
        while todo:
            key = todo.pop()
            order.append(key)
            todo.extend(children.get(key, ()))
        for key in reversed(order):
            with contextlib.suppress(NotFound):
                self.remove(key)

    def remove_files(self, keys: list[str]) -> None:
        """Remove the directories of snapshots whose records are gone already (forgotten by a sweep)."""
        for key in keys:
            self._rmtree(self._dir(key))

    def sweep(self) -> list[str]:
        """Remove snapshot directories no record names (a commit or remove cut short); returns their ids."""
        removed = []
        with self._metadata.gc_lock(exclusive=True):
            known = {self._id(record.key) for record in self._metadata.snapshots()}
            with contextlib.suppress(FileNotFoundError):
                for entry in os.scandir(self.root):
                    if entry.name not in known:
                        self._rmtree(Path(entry.path))
                        removed.append(entry.name)
        return removed

    # ---- internals -------------------------------------------------------

    def _create(self, key: str, parent: str | None, kind: Kind) -> tuple[Mount, ...]:
        if parent is not None and not self.usable(parent):
            raise NotFound(f"snapshot {key}: parent {parent}: not found")
        self._metadata.put_snapshot(key, parent=parent, kind=kind.value)
        where = self._dir(key)
        try:
            os.makedirs(self.root, exist_ok=True)
            os.mkdir(where, 0o700)
            if kind is Kind.ACTIVE:
                os.mkdir(where / "fs", 0o755)
                os.mkdir(where / "work", 0o700)
        except FileExistsError:
            self._metadata.delete_snapshot(key)
            raise AlreadyExists(f"snapshot {key}: its directory {where} exists already") from None
        except BaseException:
            self._metadata.delete_snapshot(key)
            self._rmtree(where)
            raise
        return self._mounts(key, kind, parent)

    def _mounts(self, key: str, kind: Kind, parent: str | None) -> tuple[Mount, ...]:
        lowers = [str(self.upper_dir(p)) for p in self._parents(parent)]
        own = self._dir(key)
        if kind is Kind.VIEW:
            if len(lowers) == 1:
                return (Mount("bind", lowers[0], ("rbind", "ro")),)
            return (Mount("overlay", "overlay", ("lowerdir=" + ":".join(lowers), *_OVERLAY_OPTIONS, *self._extra)),)
        if not lowers:
            return (Mount("bind", str(own / "fs"), ("rbind", "rw")),)
        options = (
            "lowerdir=" + ":".join(lowers),
            f"upperdir={own / 'fs'}",
            f"workdir={own / 'work'}",
            *self._extra,
            *_OVERLAY_OPTIONS,
        )
        return (Mount("overlay", "overlay", options),)

    @property
    def _extra(self) -> tuple[str, ...]:
        # userxattr already implies no redirects; the kernel refuses it with redirect_dir=off.
        return ("userxattr",) if self._userxattr else ("redirect_dir=off",)

    def _parents(self, parent: str | None) -> list[str]:
        chain = []
        while parent is not None:
            chain.append(parent)
            parent = self._metadata.get_snapshot(parent).parent
        return chain

    def _dir(self, key: str) -> Path:
        return self.root / self._id(key)

    @staticmethod
    def _id(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    @staticmethod
    def _rmtree(path: Path) -> None:
        # OverlayFS leaves work/work mode 000: fine for root, not for its unprivileged owner.
        with contextlib.suppress(OSError):
            os.chmod(path / "work" / "work", 0o700)
        shutil.rmtree(path, ignore_errors=True)  # what stays, sweep() takes later


def merged_entry(layers: list[str], path: str) -> tuple[str, os.stat_result] | None:
    """What OverlayFS would show at relative `path` over layer directories `layers` (top first): the
    entry's path in the layer that provides it, and its stat; None when there is nothing there.

    A whiteout (character device 0:0) hides the name in every layer below;
    an opaque directory hides the lower layers' entries in it; a file or a
    link where a directory would be hides whatever is below it. The entry
    itself is not followed when it is a link.
    """
    parts = path.split("/")
    for layer in layers:
        where, opaque = layer, False
        for depth, part in enumerate(parts):
            try:
                st = os.stat(os.path.join(where, part), follow_symlinks=False)
            except FileNotFoundError:
                break  # not in this layer: look below, unless a directory on the way is opaque here
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                return None
            if depth == len(parts) - 1:
                return os.path.join(where, part), st
            if not stat.S_ISDIR(st.st_mode):
                return None
            where = os.path.join(where, part)
            opaque = opaque or _opaque(where)
        if opaque:
            return None
    return None


def _opaque(directory: str) -> bool:
    try:
        names = os.listxattr(directory, follow_symlinks=False)
    except OSError:
        return False
    return "trusted.overlay.opaque" in names or "user.overlay.opaque" in names
