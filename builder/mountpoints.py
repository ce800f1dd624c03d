"""Mount points a container needs that its image lacks, kept out of its upper directory.

A container gets /proc, /dev, /sys and its own /etc/hosts, /etc/hostname
and /etc/resolv.conf mounted over directories and files of its root. Most
images ship without the three /etc files, some without the directories.
Making them inside the container would copy /etc up into the upper
directory and put them in the layer the run commits (BuildKit makes such
"stubs" and removes them after). Instead, the sandbox lays a read-only
layer of empty stubs over the image's layers (`stub_layer`): the mount
points exist, and the upper directory only ever holds what the command did.

`missing(layers)` looks the mount points up through the lower directories
as OverlayFS would (store.overlay.merged_entry). A directory the stub layer holds takes its attributes
from the image's (OverlayFS shows a merged directory with the top layer's),
so /etc keeps its mode and owner.

When the root is not an overlay (a bind mount of a single directory), the
sandbox makes the stubs inside the container and `remove_stubs` takes them
out of the directory afterwards.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
from typing import TYPE_CHECKING

from store.overlay import merged_entry

if TYPE_CHECKING:
    from store.snapshots import Mount

__all__ = ["MOUNT_POINTS", "missing", "remove_stubs", "stub_layer", "with_stub_layer"]

# (path, is a directory), parents before children.
MOUNT_POINTS = (
    ("proc", True),
    ("dev", True),
    ("sys", True),
    ("etc", True),
    ("etc/hosts", False),
    ("etc/hostname", False),
    ("etc/resolv.conf", False),
)
_OPAQUE = ("trusted.overlay.opaque", "user.overlay.opaque")  # what makes an upper directory hide the lower


Wanted = tuple[tuple[str, bool, "tuple[int, int, int, int] | None"], ...]


def missing(layers: list[str]) -> Wanted:
    """The mount points the merged view of `layers` lacks, as (path, is a directory, attributes): the
    attributes (mode, uid, gid, mtime) are the image's, for /etc when only files in it are missing. A mount
    point under something that is not a directory (/etc a link) is left out: the sandbox deals with
    it inside the container."""
    wanted: list[tuple[str, bool, tuple[int, int, int, int] | None]] = []
    absent: set[str] = set()
    blocked: set[str] = set()
    for path, is_dir in MOUNT_POINTS:
        parent = path.rpartition("/")[0]
        if parent in blocked:
            continue
        if parent in absent:
            wanted.append((path, is_dir, None))
            absent.add(path)
            continue
        found = merged_entry(layers, path)
        st = found[1] if found else None
        if st is None:
            wanted.append((path, is_dir, None))
            absent.add(path)
        elif is_dir and not stat.S_ISDIR(st.st_mode):
            blocked.add(path)
    if "etc" not in absent and "etc" not in blocked and any(p.startswith("etc/") for p, _, _ in wanted):
        found = merged_entry(layers, "etc")
        assert found is not None
        st = found[1]
        wanted.insert(0, ("etc", True, (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns)))
    return tuple(wanted)


def stub_layer(cache: str, wanted: Wanted) -> str:
    """A directory holding `wanted` as empty stubs (made once per distinct `wanted`, under `cache`)."""
    key = hashlib.sha256(repr(wanted).encode()).hexdigest()[:16]
    where = os.path.join(cache, key)
    if os.path.isdir(where):
        return where
    building = f"{where}.{os.urandom(4).hex()}"
    os.makedirs(cache, 0o755, exist_ok=True)
    os.mkdir(building, 0o755)
    for path, is_dir, _ in wanted:
        target = os.path.join(building, path)
        if is_dir:
            os.mkdir(target, 0o755)
        else:
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
    for path, _, attributes in wanted:  # once their entries are made, which would change their times
        if attributes is not None:  # what the image's directory shows (OverlayFS takes the top layer's)
            target = os.path.join(building, path)
            mode, uid, gid, mtime = attributes
            if os.geteuid() == 0:  # unprivileged, the image's files are ours already
                os.chown(target, uid, gid)
            os.chmod(target, mode)
            os.utime(target, ns=(mtime, mtime))
    try:
        os.rename(building, where)
    except OSError as exc:  # another run made it first
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
        shutil.rmtree(building)
    return where


def with_stub_layer(rootfs: tuple[Mount, ...], cache: str, known: dict[str, str | None]) -> tuple[Mount, ...]:
    """`rootfs` with a layer of the mount points it lacks laid over its lower directories (when an overlay).

    Only the lower directories are looked at (committed snapshots, which do
    not change: `known` remembers them): what the upper directory holds is
    above the stub layer and wins, and a whiteout there hides a stub, which
    the sandbox then makes inside the container.
    """
    if len(rootfs) != 1 or rootfs[0].type != "overlay":
        return rootfs
    (mount,) = rootfs
    lowerdir = mount.option("lowerdir") or ""
    if lowerdir not in known:
        wanted = missing(lowerdir.split(":"))
        known[lowerdir] = stub_layer(cache, wanted) if wanted else None
    layer = known[lowerdir]
    if layer is None:
        return rootfs
    options = tuple(f"lowerdir={layer}:{o[len('lowerdir=') :]}" if o.startswith("lowerdir=") else o for o in mount.options)
    return (type(mount)(mount.type, mount.source, options),)


def remove_stubs(rootfs: tuple[Mount, ...], stubs: list[str]) -> None:
    """Take the mount points a container had to make out of its upper directory again.

    A stub goes when still empty; then each directory above it that OverlayFS
    copied up only to hold the stub (empty, not opaque, same owner and mode
    as in the layer below) goes too, deepest first, so the layer does not list it.
    """
    if not stubs or len(rootfs) != 1:
        return
    mount = rootfs[0]
    upper = mount.option("upperdir") if mount.type == "overlay" else mount.source
    if upper is None:
        return
    lowers = (mount.option("lowerdir") or "").split(":") if mount.type == "overlay" else []
    parents = {p[:i] for p in stubs for i in range(1, len(p)) if p[i] == "/"} - set(stubs)
    for path in sorted(stubs, key=lambda p: p.count("/"), reverse=True):
        _remove_empty(upper, path, lowers=None)
    for path in sorted(parents, key=lambda p: p.count("/"), reverse=True):
        _remove_empty(upper, path, lowers=lowers)


def _remove_empty(upper: str, path: str, *, lowers: list[str] | None) -> None:
    """Remove `path` under `upper` if an empty file or directory (with `lowers`: a directory as it is below)."""
    parts = [p for p in path.split("/") if p]
    try:
        dfd = os.open(upper, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        for part in parts[:-1]:
            nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
            os.close(dfd)
            dfd = nfd
        st = os.stat(parts[-1], dir_fd=dfd, follow_symlinks=False)
        if lowers is not None:
            if not stat.S_ISDIR(st.st_mode) or not _same_below(lowers, parts, st):
                return
            fd = os.open(parts[-1], os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
            try:
                if set(_OPAQUE).intersection(os.listxattr(fd)):
                    return
            finally:
                os.close(fd)
        if stat.S_ISDIR(st.st_mode):
            os.rmdir(parts[-1], dir_fd=dfd)  # fails, as it should, when not empty
        elif stat.S_ISREG(st.st_mode) and st.st_size == 0:
            os.unlink(parts[-1], dir_fd=dfd)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ENOTEMPTY, errno.ENOTDIR, errno.ELOOP):
            raise
    finally:
        os.close(dfd)


def _same_below(lowers: list[str], parts: list[str], st: os.stat_result) -> bool:
    for lower in lowers:
        try:
            below = os.stat(os.path.join(lower, *parts), follow_symlinks=False)
        except OSError:
            continue
        return (below.st_mode, below.st_uid, below.st_gid) == (st.st_mode, st.st_uid, st.st_gid)
    return False
