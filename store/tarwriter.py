"""Writing a layer tar from a directory, deterministically.

`write_tree` walks a directory through directory fds and streams one tar:
entries depth first, each directory's names in byte order (the order of
containerd, umoci and `tar --sort=name`), numeric ids, no user or group
names, whole-second mtimes, PAX records only where ustar cannot say it. With
`overlay_upper` it turns OverlayFS whiteouts into OCI ones. `encode_header`
builds one entry's header with plain bytes formatting, for speed.
"""

from __future__ import annotations

import errno
import os
import stat
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .archive import (
    BLOCK,
    CHUNK,
    DEFAULT_LIMITS,
    END_OF_ARCHIVE,
    O_DIR,
    OVERLAY_XATTR,
    PAD,
    WH,
    WH_OPAQUE,
    WHITEOUT_PREFIX,
    Limits,
)
from .errors import LimitExceeded, StoreError, UnsafeArchiveEntry
from .log import lazy_logger

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator


__all__ = ["encode_header", "write_tree"]

log = lazy_logger(__name__)

# --------------------------------------------------------------------------- headers


def encode_header(
    name: bytes,
    *,
    typeflag: bytes,
    mode: int = 0,
    uid: int = 0,
    gid: int = 0,
    size: int = 0,
    mtime: int = 0,
    linkname: bytes = b"",
    devmajor: int = 0,
    devminor: int = 0,
    xattrs: tuple[tuple[bytes, bytes], ...] = (),
) -> bytes:
    """The header block(s) of one entry: a PAX block first when ustar cannot hold it."""
    pax: dict[bytes, bytes] = {}
    ustar_name, prefix = _split_name(name)
    if ustar_name is None:
        pax[b"path"] = name
        ustar_name, prefix = name[:100], b""
    if len(linkname) > 100 or not linkname.isascii():
        pax[b"linkpath"] = linkname
        linkname = linkname[:100]
    if not (_is_utf8(name) and _is_utf8(pax.get(b"linkpath", linkname))):
        pax[b"hdrcharset"] = b"BINARY"
    if uid > _MAX_ID:
        pax[b"uid"], uid = b"%d" % uid, 0
    if gid > _MAX_ID:
        pax[b"gid"], gid = b"%d" % gid, 0
    if size > _MAX_SIZE:
        pax[b"size"], size = b"%d" % size, 0
    if not 0 <= mtime <= _MAX_SIZE:
        pax[b"mtime"], mtime = b"%d" % mtime, 0
    if devmajor > _MAX_DEV or devminor > _MAX_DEV:
        raise StoreError(f"entry {name!r}: device number {devmajor}:{devminor} does not fit a tar header")
    for key, value in xattrs:
        pax[b"SCHILY.xattr." + key] = value
    devices = b"%07o\x00%07o\x00" % (devmajor, devminor) if typeflag in b"34" else PAD[16]
    header = _ustar(ustar_name, prefix, typeflag, mode, uid, gid, size, mtime, linkname, devices)
    if not pax:
        return header
    records = _pax_records(pax)
    return (
        _ustar(b"././@PaxHeader", b"", b"x", 0, 0, 0, len(records), 0, b"", PAD[16])
        + records
        + PAD[-len(records) % BLOCK]
        + header
    )


_SMALL_FILE = 256 << 10  # read whole; larger files stream in CHUNK reads

# Largest values the ustar octal fields hold; beyond them a PAX record says it.
_MAX_ID = 0o7777777
_MAX_SIZE = 0o77777777777
_MAX_DEV = 0o7777777
_USTAR_MIDDLE = b"ustar\x0000" + bytes(64)  # magic, version, empty uname and gname


def _ustar(
    name: bytes,
    prefix: bytes,
    typeflag: bytes,
    mode: int,
    uid: int,
    gid: int,
    size: int,
    mtime: int,
    linkname: bytes,
    devices: bytes,
) -> bytes:
    # Three parts of at most 255 bytes: adler32's low half is then 1 + the exact
    # byte sum, which is much cheaper than sum() over the block.
    first = name.ljust(100, b"\0") + b"%07o\x00%07o\x00%07o\x00%011o\x00%011o\x00" % (mode, uid, gid, size, mtime)
    second = typeflag + linkname.ljust(100, b"\0")
    third = _USTAR_MIDDLE + devices + prefix.ljust(155, b"\0") + PAD[12]
    checksum = (
        (zlib.adler32(first) & 0xFFFF) + (zlib.adler32(second) & 0xFFFF) + (zlib.adler32(third) & 0xFFFF) - 3 + 256
    )
    return first + b"%06o\x00 " % checksum + second + third


def _split_name(name: bytes) -> tuple[bytes | None, bytes]:
    """(name, prefix) for ustar, or (None, b"") when only a PAX path can hold `name`."""
    if not name.isascii():
        return None, b""
    if len(name) <= 100:
        return name, b""
    # ustar joins prefix + "/" + name; a trailing slash (directories) stays in name.
    end = len(name) - 1 if name.endswith(b"/") else len(name)
    cut = name.rfind(b"/", 0, min(end, 156))
    if cut <= 0 or cut > 155 or len(name) - cut - 1 > 100 or cut + 1 >= end:
        return None, b""
    return name[cut + 1 :], name[:cut]


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _pax_records(pax: dict[bytes, bytes]) -> bytes:
    # hdrcharset first: readers must know it before they decode path.
    out = []
    for key in sorted(pax, key=lambda k: (k != b"hdrcharset", k)):
        body = b" %s=%s\n" % (key, pax[key])
        length = len(body) + 1
        while len(b"%d" % length) + len(body) != length:
            length += 1
        out.append(b"%d%s" % (length, body))
    return b"".join(out)



# --------------------------------------------------------------------------- writing

_DROPPED_XATTRS = frozenset({b"security.selinux", b"system.nfs4_acl"})  # host-specific
_O_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def write_tree(
    root: str | os.PathLike[str],
    write: Callable[[bytes | bytearray | memoryview], object],
    *,
    source_date_epoch: int | None = None,
    overlay_upper: bool = False,
    limits: Limits = DEFAULT_LIMITS,
) -> int:
    """Stream the tar of the tree under `root` into `write`; returns its length.

    The same tree gives the same bytes. `root` itself is not an entry.
    Sockets are skipped. A name beginning with `.wh.` is refused, since a
    reader would take it for a whiteout; with `overlay_upper`, OverlayFS
    whiteouts, opaque directories and xattrs are converted (redirect and
    metacopy xattrs are refused).
    """
    writer = _TreeWriter(write, source_date_epoch, overlay_upper, limits)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        writer.walk(fd)
    finally:
        os.close(fd)
    return writer.finish()


@dataclass(slots=True)
class _Child:
    key: bytes  # the name in the tar, which orders siblings
    name: bytes  # the name on disk
    entry: os.DirEntry[str] | None
    whiteout: bool = False  # OverlayFS whiteout (overlay_upper only)
    stat: os.stat_result | None = None


class _TreeWriter:
    def __init__(
        self,
        write: Callable[[bytes | bytearray | memoryview], object],
        epoch: int | None,
        overlay: bool,
        limits: Limits,
    ) -> None:
        self._write = write
        self._epoch = epoch
        self._overlay = overlay
        self._limits = limits
        self._buf = bytearray()
        self._chunk = bytearray(CHUNK)
        self._total = 0
        self._links: dict[tuple[int, int], bytes] = {}

    def walk(self, root_fd: int) -> None:
        # Explicit stack: one open directory fd per level, no recursion limit.
        opaque = self._overlay and self._xattrs(b".", _fd_xattrs(root_fd), True)[1]
        stack: list[tuple[int, bytes, Iterator[_Child]]] = [(root_fd, b"", iter(self._children(root_fd, b"", opaque)))]
        try:
            while stack:
                dfd, prefix, children = stack[-1]
                for child in children:
                    opened = self._entry(dfd, prefix, child)
                    if opened is not None:
                        fd, path, opaque = opened
                        stack.append((fd, path, iter(())))  # so that `finally` closes fd
                        if path.count(b"/") > self._limits.max_depth:
                            raise LimitExceeded(
                                f"entry {os.fsdecode(path)!r}: deeper than {self._limits.max_depth} directories",
                                limit=self._limits.max_depth,
                            )
                        stack[-1] = (fd, path, iter(self._children(fd, path, opaque)))
                        break
                else:
                    stack.pop()
                    if stack:
                        os.close(dfd)
        finally:
            for dfd, _, _ in stack[1:]:
                os.close(dfd)

    def _children(self, dfd: int, prefix: bytes, opaque: bool) -> list[_Child]:
        children = []
        with os.scandir(dfd) as it:
            for entry in it:
                name = os.fsencode(entry.name)
                if name.startswith(WH):
                    raise UnsafeArchiveEntry(
                        f"entry {(prefix + name).decode(errors='replace')!r}: a file name may not begin with "
                        f"{WHITEOUT_PREFIX!r} (readers take it for a whiteout)",
                        entry=os.fsdecode(prefix + name),
                    )
                child = _Child(name, name, entry)
                if self._overlay:
                    self._classify(dfd, child)
                children.append(child)
        if opaque:
            children.append(_Child(WH_OPAQUE, WH_OPAQUE, None, whiteout=True))
        children.sort(key=lambda c: c.key)
        return children

    def _classify(self, dfd: int, child: _Child) -> None:
        """Spot OverlayFS whiteouts before sorting: they change the entry's name."""
        entry = child.entry
        assert entry is not None
        if entry.is_symlink() or entry.is_dir(follow_symlinks=False):
            return
        st = entry.stat(follow_symlinks=False)
        child.stat = st
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            child.whiteout = True
        elif stat.S_ISREG(st.st_mode) and st.st_size == 0:
            names = _lxattr_names(dfd, child.name)
            if b"trusted.overlay.whiteout" in names or b"user.overlay.whiteout" in names:
                child.whiteout = True
        if child.whiteout:
            child.key = WH + child.name

    def _entry(self, dfd: int, prefix: bytes, child: _Child) -> tuple[int, bytes, bool] | None:
        """Emit one entry; for a directory, return (its fd, its path, opaque) to descend."""
        path = prefix + child.key
        if child.whiteout:
            self._header(path, b"0", 0, 0, 0, 0, 0)  # as containerd: mode 0, time 0
            return None
        entry = child.entry
        assert entry is not None
        name = child.name
        if entry.is_file(follow_symlinks=False):
            fd = os.open(name, _O_FILE, dir_fd=dfd)
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise StoreError(f"entry {os.fsdecode(path)!r}: changed type while the layer was written")
                self._file(fd, path, st)
            finally:
                os.close(fd)
            return None
        if entry.is_dir(follow_symlinks=False):
            fd = os.open(name, O_DIR, dir_fd=dfd)
            try:
                st = os.fstat(fd)
                xattrs, opaque = self._xattrs(path, _fd_xattrs(fd), True)
                self._header(path + b"/", b"5", st.st_mode, st.st_uid, st.st_gid, 0, self._mtime(st), xattrs=xattrs)
            except BaseException:
                os.close(fd)
                raise
            return fd, path + b"/", opaque
        st = child.stat or entry.stat(follow_symlinks=False)
        mode = st.st_mode
        if stat.S_ISSOCK(mode):
            log.debug("layer: skipping socket %s", os.fsdecode(path))
            return None
        if self._hardlink(path, st):
            return None
        xattrs, _ = self._xattrs(path, _lxattrs(dfd, name), False)
        if stat.S_ISLNK(mode):
            target = os.readlink(name, dir_fd=dfd)
            self._header(path, b"2", mode, st.st_uid, st.st_gid, 0, self._mtime(st), os.fsencode(target), xattrs=xattrs)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            kind = b"3" if stat.S_ISCHR(mode) else b"4"
            major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
            self._header(path, kind, mode, st.st_uid, st.st_gid, 0, self._mtime(st), b"", major, minor, xattrs)
        elif stat.S_ISFIFO(mode):
            self._header(path, b"6", mode, st.st_uid, st.st_gid, 0, self._mtime(st), xattrs=xattrs)
        else:
            raise StoreError(f"entry {os.fsdecode(path)!r}: unsupported file type {stat.filemode(mode)}")
        return None

    def _file(self, fd: int, path: bytes, st: os.stat_result) -> None:
        if self._hardlink(path, st):
            return
        xattrs, _ = self._xattrs(path, _fd_xattrs(fd), False)
        size = st.st_size
        self._header(path, b"0", st.st_mode, st.st_uid, st.st_gid, size, self._mtime(st), xattrs=xattrs)
        buf = self._buf
        if size <= _SMALL_FILE:
            data = os.read(fd, size) if size else b""
            while len(data) < size:
                more = os.read(fd, size - len(data))
                if not more:
                    self._shrunk(path)
                data += more
            buf += data
        else:
            self._flush()
            chunk = self._chunk
            view = memoryview(chunk)
            left = size
            while left:
                count = os.readv(fd, [view[:left] if left < CHUNK else chunk])
                if not count:
                    self._shrunk(path)
                self._write(view[:count])
                left -= count
            self._total += size
            buf = self._buf
        buf += PAD[-size % BLOCK]
        if len(buf) >= CHUNK:
            self._flush()

    def _hardlink(self, path: bytes, st: os.stat_result) -> bool:
        """Emit a link to the first path seen for this inode, if this is not the first."""
        if st.st_nlink < 2:
            return False
        key = (st.st_dev, st.st_ino)
        first = self._links.get(key)
        if first is None:
            self._links[key] = path
            return False
        self._header(path, b"1", st.st_mode, st.st_uid, st.st_gid, 0, self._mtime(st), first)
        return True

    def _xattrs(
        self, path: bytes, found: list[tuple[bytes, bytes]], is_dir: bool
    ) -> tuple[tuple[tuple[bytes, bytes], ...], bool]:
        """The xattrs to record (sorted), and whether an overlay opaque marker was among them."""
        if not found:
            return (), False
        kept, opaque = [], False
        for key, value in found:
            overlay = OVERLAY_XATTR.fullmatch(key)
            if overlay is not None:
                what = overlay.group(2)
                if self._overlay and what in (b"redirect", b"metacopy"):
                    raise UnsafeArchiveEntry(
                        f"entry {os.fsdecode(path)!r}: has the OverlayFS xattr {key.decode(errors='replace')}; "
                        "upper directories must come from mounts without redirect_dir and metacopy",
                        entry=os.fsdecode(path),
                    )
                if self._overlay and is_dir and what == b"opaque" and value == b"y":
                    opaque = True
                elif not self._overlay:
                    log.warning("layer: dropping xattr %s of %s", key.decode(errors="replace"), os.fsdecode(path))
                continue
            if key in _DROPPED_XATTRS or not value:
                continue
            kept.append((key, value))
        kept.sort()
        return tuple(kept), opaque

    def _mtime(self, st: os.stat_result) -> int:
        mtime = st.st_mtime_ns // 1_000_000_000
        epoch = self._epoch
        return mtime if epoch is None or mtime <= epoch else epoch

    def _header(
        self,
        path: bytes,
        typeflag: bytes,
        mode: int,
        uid: int,
        gid: int,
        size: int,
        mtime: int,
        linkname: bytes = b"",
        devmajor: int = 0,
        devminor: int = 0,
        xattrs: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        if b"\n" in path or b"\n" in linkname:
            raise UnsafeArchiveEntry(f"entry {os.fsdecode(path)!r}: newline in a name", entry=os.fsdecode(path))
        mode &= 0o7777
        if (
            not xattrs
            and len(path) <= 100
            and path.isascii()
            and uid <= _MAX_ID
            and gid <= _MAX_ID
            and (
                0 <= mtime <= _MAX_SIZE
                and size <= _MAX_SIZE
                and len(linkname) <= 100
                and linkname.isascii()
                and typeflag not in b"34"
            )
        ):
            self._buf += _ustar(path, b"", typeflag, mode, uid, gid, size, mtime, linkname, PAD[16])
        else:
            self._buf += encode_header(
                path,
                typeflag=typeflag,
                mode=mode,
                uid=uid,
                gid=gid,
                size=size,
                mtime=mtime,
                linkname=linkname,
                devmajor=devmajor,
                devminor=devminor,
                xattrs=xattrs,
            )

    def _shrunk(self, path: bytes) -> None:
        raise StoreError(f"entry {os.fsdecode(path)!r}: file shrank while the layer was written")

    def _flush(self) -> None:
        if self._buf:
            self._write(self._buf)
            self._total += len(self._buf)
            self._buf = bytearray()

    def finish(self) -> int:
        self._buf += END_OF_ARCHIVE
        self._flush()
        return self._total


def _fd_xattrs(fd: int) -> list[tuple[bytes, bytes]]:
    try:
        names = os.listxattr(fd)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return []
        raise
    return [(os.fsencode(n), os.getxattr(fd, n)) for n in names]


def _lxattr_names(dfd: int, name: bytes) -> list[bytes]:
    try:
        return [os.fsencode(n) for n in os.listxattr(b"/proc/self/fd/%d/%s" % (dfd, name), follow_symlinks=False)]
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return []
        raise


def _lxattrs(dfd: int, name: bytes) -> list[tuple[bytes, bytes]]:
    # No fd for symlinks and devices: reach the entry through its directory's fd
    # in /proc, without following the last component.
    path = b"/proc/self/fd/%d/%s" % (dfd, name)
    names = _lxattr_names(dfd, name)
    return [(n, os.getxattr(path, n, follow_symlinks=False)) for n in names]
