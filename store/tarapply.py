"""Applying a layer tar to a directory, keeping every effect inside it.

Policy, in short: what the headers alone can show is store.entrynames' to
refuse (absolute names, `..` out of the root, writes through a symbolic link
this same layer made that leads out of it). Links already in the target (from
lower layers) resolve as they would in a container with the target as its
root: `var/run -> /run` leads to `<target>/run`, so nothing is written outside
it. Symbolic link targets are stored verbatim. Hard links must point at an
existing non-directory inside the root. Whiteouts hide lower content only:
`.wh.<name>` removes <name>, `.wh..wh..opq` removes whatever in its directory
this layer did not put there, whatever the entry order. Ownership and device
nodes need root; a character device 0:0 is never created (it would read as an
OverlayFS whiteout). OverlayFS xattrs are dropped on the way in.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tarfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from .archive import (
    CHUNK,
    DEFAULT_LIMITS,
    O_DIR,
    OVERLAY_XATTR,
    WH,
    WH_OPAQUE,
    Limits,
    TarGuard,
    Whiteouts,
)
from .entrynames import EntryNames
from .errors import UnsafeArchiveEntry
from .inroot import Resolver, is_symlink
from .log import lazy_logger

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from .digest import Digester

__all__ = ["Applied", "apply_tar"]

log = lazy_logger(__name__)

# --------------------------------------------------------------------------- applying

_O_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_O_META = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_ID_VALUE = 0xFFFFFFFE  # (uid_t)-1 means "no change" to chown
_SKIPPED_KEPT = 1000


@dataclass(frozen=True, slots=True)
class Applied:
    """What applying one layer did."""

    entries: int
    size: int  # bytes of the uncompressed tar stream
    skipped: tuple[str, ...]  # "entry: why" for entries not created (first 1000)


def apply_tar(
    source: BinaryIO,
    target: str | os.PathLike[str] | Path,
    *,
    whiteouts: Whiteouts = "delete",
    limits: Limits = DEFAULT_LIMITS,
    digester: Digester | None = None,
    verify: Callable[[], None] | None = None,
    what: str = "layer",
    use_openat2: bool | None = None,
) -> Applied:
    """Apply the tar stream `source` onto the existing directory `target`.

    `digester`, when given, sees every byte of the stream, the padding after
    the end-of-archive marker included; `verify` is then called (to check a
    diffID, say) before directory modes and times are set, last and deepest
    first, so a staging directory is still easy to remove when it raises.
    Refusals raise UnsafeArchiveEntry or LimitExceeded naming the entry;
    malformed archives raise MalformedDocument. Effects made before an error
    stay: extract into a staging directory where that matters.
    """
    if whiteouts not in ("delete", "overlay"):
        raise ValueError(f"whiteouts must be 'delete' or 'overlay', not {whiteouts!r}")
    guard = TarGuard(source, limits, digester, what)
    root_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    applier = _Applier(Resolver(root_fd, what, use_openat2), whiteouts, limits, what)
    try:
        guard.visit(applier.entry)
        if verify is not None:
            verify()
        applier.finish()
    finally:
        applier.close()
        os.close(root_fd)
    return Applied(guard.entries, guard.size, tuple(applier.skipped))


class _Applier:
    def __init__(self, resolver: Resolver, whiteouts: Whiteouts, limits: Limits, what: str) -> None:
        self._names = EntryNames(limits, what)
        self._resolver = resolver
        self._overlay = whiteouts == "overlay"
        # Unprivileged, OverlayFS reads its xattrs from user.* (mount option
        # userxattr); whiteout devices (0:0) anyone may make since Linux 5.8.
        self._opaque_xattr = "trusted.overlay.opaque" if os.geteuid() == 0 else "user.overlay.opaque"
        self._what = what
        self._owner = os.geteuid() == 0  # ownership, devices: only as root
        self._touched: set[bytes] = set()  # this layer's paths and their parents
        self._dirs: dict[bytes, tuple[int, int]] = {}  # path -> (mode, mtime ns), applied last
        self.skipped: list[str] = []

    # -- dispatch
    def entry(self, info: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        name = info.name
        parts, link = self._names.check(info)
        if not parts:
            return  # the root directory: its metadata belongs to whoever owns the target
        base = parts[-1]
        if base.startswith(WH):
            self._whiteout_entry(parts, name)
            return
        self._touch(parts)
        if info.isreg():
            self._file(parts, name, info, tar)
        elif info.isdir():
            self._dir(parts, name, info)
        elif info.issym():
            self._symlink(parts, name, info)
        elif info.islnk():
            assert link is not None
            self._hardlink(parts, name, link, info.linkname)
        elif info.ischr() or info.isblk():
            self._device(parts, name, info)
        elif info.isfifo():
            self._special(parts, name, info, 0o600)
        else:
            self._refuse(name, f"unsupported entry type {info.type!r}")

    def _touch(self, parts: tuple[bytes, ...]) -> None:
        path = b"/".join(parts)
        touched = self._touched
        while path and path not in touched:
            touched.add(path)
            cut = path.rfind(b"/")
            path = path[:cut] if cut > 0 else b""

    # -- entry kinds
    def _file(self, parts: tuple[bytes, ...], entry: str, info: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        uid, gid, mtime = self._ids_and_time(entry, info)
        pfd = self._resolver.parent(parts, entry)
        base = parts[-1]
        try:
            fd = os.open(base, _O_NEW_FILE, 0o600, dir_fd=pfd)
        except FileExistsError:
            self._remove(pfd, base)
            fd = os.open(base, _O_NEW_FILE, 0o600, dir_fd=pfd)
        try:
            data = tar.extractfile(info)
            assert data is not None
            while chunk := data.read(CHUNK):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
            if self._owner:
                os.fchown(fd, uid, gid)
            os.fchmod(fd, info.mode & 0o7777)  # after chown, which clears set-id bits
            for key, value in self._xattrs(entry, info):
                self._setxattr(entry, fd, key, value, True)
            os.utime(fd, ns=(mtime, mtime))
        finally:
            os.close(fd)

    def _dir(self, parts: tuple[bytes, ...], entry: str, info: tarfile.TarInfo) -> None:
        uid, gid, mtime = self._ids_and_time(entry, info)
        pfd = self._resolver.parent(parts, entry)
        base = parts[-1]
        existed = False
        try:
            os.mkdir(base, 0o700, dir_fd=pfd)
        except FileExistsError:
            if not stat.S_ISDIR(os.stat(base, dir_fd=pfd, follow_symlinks=False).st_mode):
                self._remove(pfd, base)
                os.mkdir(base, 0o700, dir_fd=pfd)
            else:
                existed = True
        fd = os.open(base, O_DIR, dir_fd=pfd)
        try:
            if self._owner:
                os.fchown(fd, uid, gid)
            xattrs = self._xattrs(entry, info)
            if existed:
                self._drop_xattrs(entry, fd, {key for key, _ in xattrs})
            for key, value in xattrs:
                self._setxattr(entry, fd, key, value, True)
        finally:
            os.close(fd)
        self._dirs[b"/".join(parts)] = (info.mode & 0o7777, mtime)

    def _symlink(self, parts: tuple[bytes, ...], entry: str, info: tarfile.TarInfo) -> None:
        uid, gid, mtime = self._ids_and_time(entry, info)
        target = os.fsencode(info.linkname)
        pfd = self._resolver.parent(parts, entry)
        base = parts[-1]
        try:
            os.symlink(target, base, dir_fd=pfd)
        except FileExistsError:
            self._remove(pfd, base)
            os.symlink(target, base, dir_fd=pfd)
        if self._owner:
            os.chown(base, uid, gid, dir_fd=pfd, follow_symlinks=False)
        xattrs = self._xattrs(entry, info)
        if xattrs:
            path = b"/proc/self/fd/%d/%s" % (pfd, base)
            for key, value in xattrs:
                self._setxattr(entry, path, key, value, False)
        os.utime(base, ns=(mtime, mtime), dir_fd=pfd, follow_symlinks=False)

    def _hardlink(self, parts: tuple[bytes, ...], entry: str, target: tuple[bytes, ...], linkname: str) -> None:
        if target == parts:
            return
        tfd = self._resolver.open_dir(target[:-1], entry, create=False)
        if tfd is None:
            self._refuse(entry, f"hard link target {linkname!r} is not in the layer root")
        try:
            try:
                st = os.stat(target[-1], dir_fd=tfd, follow_symlinks=False)
            except FileNotFoundError:
                self._refuse(entry, f"hard link target {linkname!r} is not in the layer root")
            if stat.S_ISDIR(st.st_mode):
                self._refuse(entry, f"hard link to the directory {linkname!r}")
            pfd = self._resolver.parent(parts, entry)
            base = parts[-1]
            try:
                os.link(target[-1], base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
            except FileExistsError:
                now = os.stat(base, dir_fd=pfd, follow_symlinks=False)
                if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                    return
                self._remove(pfd, base)
                os.link(target[-1], base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
        finally:
            os.close(tfd)

    def _device(self, parts: tuple[bytes, ...], entry: str, info: tarfile.TarInfo) -> None:
        if not self._owner:
            self._skip(entry, "device nodes are created only as root")
            return
        if info.ischr() and info.devmajor == 0 and info.devminor == 0:
            self._skip(entry, "character device 0:0 (an OverlayFS whiteout look-alike)")
            return
        if not (0 <= info.devmajor < 1 << 12 and 0 <= info.devminor < 1 << 20):
            self._refuse(entry, f"device number {info.devmajor}:{info.devminor} out of range")
        kind = stat.S_IFCHR if info.ischr() else stat.S_IFBLK
        self._special(parts, entry, info, kind | 0o600, os.makedev(info.devmajor, info.devminor))

    def _special(self, parts: tuple[bytes, ...], entry: str, info: tarfile.TarInfo, mode: int, device: int = 0) -> None:
        """FIFOs and devices: made by mknod, their metadata set through an O_PATH fd."""
        uid, gid, mtime = self._ids_and_time(entry, info)
        pfd = self._resolver.parent(parts, entry)
        base = parts[-1]
        make = (
            (lambda: os.mkfifo(base, 0o600, dir_fd=pfd))
            if info.isfifo()
            else (lambda: os.mknod(base, mode, device, dir_fd=pfd))
        )
        try:
            make()
        except FileExistsError:
            self._remove(pfd, base)
            make()
        fd = os.open(base, _O_META, dir_fd=pfd)
        try:
            path = b"/proc/self/fd/%d" % fd
            if self._owner:
                os.chown(path, uid, gid)
            os.chmod(path, info.mode & 0o7777)
            for key, value in self._xattrs(entry, info):
                self._setxattr(entry, path, key, value, True)
            os.utime(path, ns=(mtime, mtime))
        finally:
            os.close(fd)

    # -- whiteouts
    def _whiteout_entry(self, parts: tuple[bytes, ...], entry: str) -> None:
        base, where = parts[-1], parts[:-1]
        self._touch(where)
        if base == WH_OPAQUE:
            self._opaque(where, entry)
            return
        victim = base[len(WH) :]
        path = b"/".join((*where, victim))
        own = path in self._touched  # whiteouts hide lower layers only, never this layer's own files
        if own and self._overlay:
            return
        self._resolver.invalidate()
        dfd = self._resolver.open_dir(where, entry, create=self._overlay)
        if dfd is None:
            return
        try:
            if own:
                self._clear_own_dir(dfd, victim, path)
            else:
                self._remove(dfd, victim, missing_ok=True)
                if self._overlay:
                    os.mknod(victim, stat.S_IFCHR, 0, dir_fd=dfd)
        finally:
            os.close(dfd)

    def _clear_own_dir(self, dfd: int, name: bytes, path: bytes) -> None:
        """A whiteout of a directory this layer also fills: keep only this layer's part of it."""
        try:
            fd = os.open(name, O_DIR, dir_fd=dfd)
        except OSError:
            return  # this layer's own file, not a directory: nothing lower is left
        try:
            self._clear(fd, path)
        finally:
            os.close(fd)

    def _opaque(self, where: tuple[bytes, ...], entry: str) -> None:
        self._resolver.invalidate()
        if not where:
            fd = os.dup(self._resolver.root_fd)
        else:
            pfd = self._resolver.open_dir(where[:-1], entry, create=self._overlay)
            if pfd is None:
                return
            try:
                if self._overlay:
                    try:
                        os.mkdir(where[-1], 0o755, dir_fd=pfd)
                    except FileExistsError:
                        pass
                fd = os.open(where[-1], O_DIR, dir_fd=pfd)
            except FileNotFoundError:
                return
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                if is_symlink(where[-1], pfd):
                    self._refuse(entry, "an opaque whiteout inside a symbolic link")
                return  # a file of a lower layer; this layer's directory entry replaces it
            finally:
                os.close(pfd)
        try:
            if self._overlay:
                os.setxattr(fd, self._opaque_xattr, b"y")
            else:
                self._clear(fd, b"/".join(where))
        finally:
            os.close(fd)

    def _clear(self, dfd: int, prefix: bytes) -> None:
        """Remove what this layer did not put under the directory `dfd`."""
        with os.scandir(dfd) as it:
            children = [(os.fsencode(e.name), e.is_dir(follow_symlinks=False)) for e in it]
        for name, is_dir in children:
            path = prefix + b"/" + name if prefix else name
            if path not in self._touched:
                self._remove(dfd, name)
            elif is_dir:
                fd = os.open(name, O_DIR, dir_fd=dfd)
                try:
                    self._clear(fd, path)
                finally:
                    os.close(fd)

    # -- helpers
    def _remove(self, dfd: int, name: bytes, *, missing_ok: bool = False) -> None:
        try:
            os.unlink(name, dir_fd=dfd)
        except FileNotFoundError:
            if not missing_ok:
                raise
        except IsADirectoryError:
            shutil.rmtree(name, dir_fd=dfd)  # fd-based, never follows links

    def _ids_and_time(self, entry: str, info: tarfile.TarInfo) -> tuple[int, int, int]:
        uid, gid = info.uid, info.gid
        if not (0 <= uid <= _MAX_ID_VALUE and 0 <= gid <= _MAX_ID_VALUE):
            self._refuse(entry, f"owner {uid}:{gid} out of range")
        try:
            mtime = int(info.mtime) * 1_000_000_000 if isinstance(info.mtime, int) else int(info.mtime * 1e9)
        except (OverflowError, ValueError):
            self._refuse(entry, f"modification time {info.mtime!r} out of range")
        if not -(1 << 62) < mtime < 1 << 62:
            self._refuse(entry, f"modification time {info.mtime!r} out of range")
        return uid, gid, mtime

    def _xattrs(self, entry: str, info: tarfile.TarInfo) -> list[tuple[str, bytes]]:
        if not info.pax_headers:
            return []
        out = []
        for key, value in info.pax_headers.items():
            if not key.startswith("SCHILY.xattr."):
                continue
            name = key[len("SCHILY.xattr.") :]
            if OVERLAY_XATTR.fullmatch(os.fsencode(name)):
                log.warning("%s: entry %r: dropping OverlayFS xattr %s", self._what, entry, name)
                continue
            out.append((name, value.encode("utf-8", "surrogateescape")))
        return out

    def _drop_xattrs(self, entry: str, fd: int, keep: set[str]) -> None:
        """An existing directory's user.* and trusted.* xattrs that the entry lacks go: the entry's
        attributes replace the directory's (OCI layer spec), not add to them. OverlayFS ones stay."""
        try:
            names = os.listxattr(fd)
        except OSError as exc:
            if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                return
            raise
        for name in names:
            if name in keep or not name.startswith(("user.", "trusted.")) or OVERLAY_XATTR.fullmatch(os.fsencode(name)):
                continue
            try:
                os.removexattr(fd, name)
            except OSError as exc:
                if exc.errno not in (errno.ENODATA, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
                self._skip(entry, f"xattr {name} of the existing directory not removed ({exc.strerror})")

    def _setxattr(self, entry: str, where: int | bytes, key: str, value: bytes, follow: bool) -> None:
        try:
            os.setxattr(where, key, value, follow_symlinks=follow)
        except OSError as exc:
            if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
                self._skip(entry, f"xattr {key} not set ({exc.strerror})")
                return
            self._refuse(entry, f"xattr {key} cannot be set: {exc.strerror}")

    def _skip(self, entry: str, why: str) -> None:
        log.warning("%s: entry %r skipped: %s", self._what, entry, why)
        if len(self.skipped) < _SKIPPED_KEPT:
            self.skipped.append(f"{entry}: {why}")

    def _refuse(self, entry: str, why: str) -> None:
        raise UnsafeArchiveEntry(f"{self._what}: entry {entry!r}: {why}", entry=entry)

    # -- the end
    def finish(self) -> None:
        """Directory modes and times, deepest first, now that nothing more is created in them."""
        self._resolver.invalidate()
        for path in sorted(self._dirs, key=lambda p: p.count(b"/"), reverse=True):
            mode, mtime = self._dirs[path]
            parts = tuple(path.split(b"/"))
            try:
                pfd = self._resolver.open_dir(parts[:-1], os.fsdecode(path), create=False)
            except UnsafeArchiveEntry:
                continue  # a later entry replaced a parent with a link out of the root
            if pfd is None:
                continue
            try:
                fd = os.open(parts[-1], O_DIR, dir_fd=pfd)
            except OSError:
                continue  # replaced or whited out since
            finally:
                os.close(pfd)
            try:
                os.fchmod(fd, mode)
                os.utime(fd, ns=(mtime, mtime))
            finally:
                os.close(fd)

    def close(self) -> None:
        self._resolver.invalidate()
