"""Tar mechanics of layers: a deterministic tree writer, a guarded tar reader, and a
safe applier that keeps every effect inside its root.

Writing (`write_tree`) walks a directory through directory fds and streams one
tar: entries depth first, each directory's names in byte order (the order of
containerd, umoci and `tar --sort=name`), numeric ids, no user or group names,
whole-second mtimes, PAX records only where ustar cannot say it. With
`overlay_upper` it turns OverlayFS whiteouts into OCI ones.

Reading (`TarGuard` + `apply_tar`) parses with CPython `tarfile` in stream
mode, but every header first passes `TarGuard`, which checks it against the
caps in `Limits` before `tarfile` sees it (tarfile would read any PAX block
whole and takes a bad header in mid-stream for the end of the archive).
`apply_tar` resolves each path beneath its root from a directory fd
(`openat2(RESOLVE_BENEATH)`, or a component walk without it), never follows
the last component, and honours OCI whiteouts.

Policy on reading, in short: names that are absolute, hold NUL or newline, or
climb out with `..` are refused; so is any path that would pass through a
symbolic link leading out of the root (absolute, or `..` too far), while
relative links that stay inside are followed for parent directories.
Symbolic link targets themselves are stored verbatim. Hard links must point
at an existing non-directory inside the root. Whiteouts hide lower content
only: `.wh.<name>` removes <name>, `.wh..wh..opq` removes whatever in its
directory this layer did not put there, whatever the entry order.
Ownership and device nodes need root; a character device 0:0 is never
created (it would read as an OverlayFS whiteout). OverlayFS xattrs are
dropped on the way in and out.

Not here: compression, blob digests, the content store (see store.layer).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import re
import shutil
import stat
import tarfile
import zlib
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, Literal

from .errors import LimitExceeded, MalformedDocument, StoreError, UnsafeArchiveEntry

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from .digest import Digester

__all__ = [
    "DEFAULT_LIMITS",
    "WHITEOUT_OPAQUE",
    "WHITEOUT_PREFIX",
    "Applied",
    "Limits",
    "TarGuard",
    "Whiteouts",
    "apply_tar",
    "encode_header",
    "write_tree",
]

log = logging.getLogger(__name__)

WHITEOUT_PREFIX = ".wh."
WHITEOUT_OPAQUE = ".wh..wh..opq"
_WH = b".wh."
_WH_META = b".wh..wh."
_WH_OPAQUE = b".wh..wh..opq"

Whiteouts = Literal["delete", "overlay"]

_BLOCK = 512
_ZEROS = bytes(_BLOCK)
_PAD = tuple(bytes(n) for n in range(_BLOCK))  # _PAD[n]: n zero bytes
_END = bytes(2 * _BLOCK)  # end-of-archive marker
_CHUNK = 1 << 20
_SMALL_FILE = 256 << 10  # read whole; larger files stream in _CHUNK reads

# Largest values the ustar octal fields hold; beyond them a PAX record says it.
_MAX_ID = 0o7777777
_MAX_SIZE = 0o77777777777
_MAX_DEV = 0o7777777


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps on what one layer may ask of the reader (hostile-inputs R2, R7)."""

    max_entries: int = 1_000_000
    max_path: int = 4096  # bytes of a cleaned entry name or link target
    max_component: int = 255
    max_depth: int = 256
    max_header: int = 1 << 20  # one PAX or GNU long-name block
    max_size: int = 8 << 30  # uncompressed bytes of the whole layer


DEFAULT_LIMITS = Limits()


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
    devices = b"%07o\x00%07o\x00" % (devmajor, devminor) if typeflag in b"34" else _PAD[16]
    header = _ustar(ustar_name, prefix, typeflag, mode, uid, gid, size, mtime, linkname, devices)
    if not pax:
        return header
    records = _pax_records(pax)
    return (
        _ustar(b"././@PaxHeader", b"", b"x", 0, 0, 0, len(records), 0, b"", _PAD[16])
        + records
        + _PAD[-len(records) % _BLOCK]
        + header
    )


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
    third = _USTAR_MIDDLE + devices + prefix.ljust(155, b"\0") + _PAD[12]
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
_OVERLAY_XATTR = re.compile(rb"(trusted|user)\.overlay\.(.*)", re.DOTALL)
_O_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


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
        self._chunk = bytearray(_CHUNK)
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
                if name.startswith(_WH):
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
            children.append(_Child(_WH_OPAQUE, _WH_OPAQUE, None, whiteout=True))
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
            child.key = _WH + child.name

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
            fd = os.open(name, _O_DIR, dir_fd=dfd)
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
                count = os.readv(fd, [view[:left] if left < _CHUNK else chunk])
                if not count:
                    self._shrunk(path)
                self._write(view[:count])
                left -= count
            self._total += size
            buf = self._buf
        buf += _PAD[-size % _BLOCK]
        if len(buf) >= _CHUNK:
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
            overlay = _OVERLAY_XATTR.fullmatch(key)
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
            self._buf += _ustar(path, b"", typeflag, mode, uid, gid, size, mtime, linkname, _PAD[16])
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
        self._buf += _END
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


# --------------------------------------------------------------------------- reading

_META_TYPES = frozenset({b"x", b"g", b"L", b"K"})
_HEADER_ONLY = frozenset({b"1", b"2", b"3", b"4", b"5", b"6"})
_REGULAR = frozenset({b"0", b"\0", b"7"})
_LONG_DIGITS = re.compile(rb"[0-9]{65}")
_PAX_INTEGER = re.compile(rb"[0-9]{1,20}")  # tarfile's int() would also take "+1", " 1" and "1_0"
_PAX_TIME = re.compile(rb"-?[0-9]{1,20}(\.[0-9]{1,9})?")  # and float() "nan", "1e999"
_PAX_NUMBERS = {
    b"size": _PAX_INTEGER,
    b"uid": _PAX_INTEGER,
    b"gid": _PAX_INTEGER,
    b"mtime": _PAX_TIME,
    b"atime": _PAX_TIME,
    b"ctime": _PAX_TIME,
}
_GLOBAL_KEYS = frozenset({b"comment"})


@dataclass(frozen=True, slots=True)
class _Expect:
    """What the guard saw of one entry, to check tarfile read the same."""

    data_offset: int
    size: int
    name: str


class TarGuard:
    """A reader of a tar stream that vets every header before a tar parser reads it.

    It hashes every byte into `digester`, counts entries, caps PAX and GNU
    long-name blocks, checks header checksums and numeric fields, refuses
    sparse files, unknown entry types, NULs hidden in names and odd PAX
    records (tarfile's PAX regular expressions backtrack badly on long digit
    runs), and raises MalformedDocument at an end of stream that is not an
    end-of-archive marker. `expect()` yields, entry by entry, where the guard
    saw each entry's data, so the parser's view can be checked against it.
    """

    def __init__(self, source: BinaryIO, limits: Limits, digester: Digester | None = None, what: str = "layer") -> None:
        self._source = source
        self._limits = limits
        self._digester = digester
        self._what = what
        self._buf = bytearray()
        self._base = 0  # stream offset of _buf[0]
        self._pos = 0  # next byte to hand out (index into _buf)
        self._scan = 0  # bytes before this index are vetted
        self._data_left = 0  # payload bytes still to pass before the next header
        self._pax: dict[bytes, bytes] = {}  # the pending 'x' header's records
        self._long: dict[bytes, bytes] = {}  # pending GNU 'L' / 'K' names
        self._source_done = False
        self.ended = False  # an end-of-archive block was seen
        self.entries = 0
        self.size = 0  # bytes read from source
        self._expected: deque[_Expect] = deque()
        self._current = ""  # name of the entry being read, for messages

    # -- the reader side
    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        want = n if n is not None and n >= 0 else 1 << 62
        while self._scan - self._pos < want and self._more():
            pass
        end = min(self._scan, self._pos + want)
        out = bytes(self._buf[self._pos : end])
        self._pos = end
        if self._pos > _CHUNK:
            del self._buf[: self._pos]
            self._base += self._pos
            self._scan -= self._pos
            self._pos = 0
        return out

    def expect(self) -> _Expect:
        """The next entry as the guard saw it (after the parser returned it)."""
        return self._expected.popleft()

    def drain(self) -> None:
        """Read the rest of the stream (after the end marker) so it is hashed and verified."""
        while self._more():
            self._pos = self._scan
            if self._pos > _CHUNK:
                del self._buf[: self._pos]
                self._base += self._pos
                self._scan = self._pos = 0
        if not self.ended:
            self._truncated()

    # -- vetting
    def _more(self) -> bool:
        """Vet more bytes; False once nothing more can be vetted."""
        if self.ended:
            if self._scan < len(self._buf):
                self._scan = len(self._buf)
                return True
            return self._fill()
        progressed = False
        while True:
            if self._data_left:
                step = min(self._data_left, len(self._buf) - self._scan)
                self._scan += step
                self._data_left -= step
                progressed = progressed or step > 0
                if self._data_left:
                    break
            if len(self._buf) - self._scan < _BLOCK:
                break
            consumed = self._header()
            if consumed == 0:
                break  # needs more bytes
            self._scan += consumed
            progressed = True
            if self.ended:
                self._scan = len(self._buf)
                return True
        if progressed:
            return True
        if self._fill():
            return True
        if len(self._buf) > self._scan or self._data_left or not self.ended:
            self._truncated()
        return False

    def _fill(self) -> bool:
        if self._source_done:
            return False
        try:
            chunk = self._source.read(_CHUNK)
        except LimitExceeded as exc:  # a decompression bomb: say where it went off
            if not self._current:
                raise
            raise LimitExceeded(f"{exc} (in entry {self._current!r})", limit=exc.limit) from None
        except MalformedDocument as exc:
            if not self._current:
                raise
            raise MalformedDocument(f"{exc} (in entry {self._current!r})") from None
        if not chunk:
            self._source_done = True
            return False
        if self._digester is not None:
            self._digester.update(chunk)
        self.size += len(chunk)
        self._buf += chunk
        return True

    def _truncated(self) -> None:
        where = f" in entry {self._current!r}" if self._current else ""
        raise MalformedDocument(
            f"{self._what}: tar stream ends at offset {self.size} without an end-of-archive marker{where} (truncated?)"
        )

    def _header(self) -> int:
        """Vet the header at _scan; return the bytes it covers (with its meta data), 0 if more are needed."""
        start = self._scan
        block = bytes(self._buf[start : start + _BLOCK])
        offset = self._base + start
        if block == _ZEROS:
            if self._pax or self._long:
                self._malformed(offset, "extended header without an entry")
            self.ended = True
            return _BLOCK
        self._check_block(block, offset)
        typeflag = block[156:157]
        name_field = _nts_strict(block[0:100], "name", offset, self._raw_name(block))
        if typeflag in _META_TYPES:
            size = _nti(block[124:136], offset, self)
            if size < 0 or size > self._limits.max_header:
                raise LimitExceeded(
                    f"{self._what}: tar header block at offset {offset} is {size} bytes "
                    f"(more than the {self._limits.max_header} allowed)",
                    limit=self._limits.max_header,
                )
            total = _BLOCK + size + (-size % _BLOCK)
            if len(self._buf) - start < total:
                return 0
            data = bytes(self._buf[start + _BLOCK : start + _BLOCK + size])
            if typeflag in (b"L", b"K"):
                if typeflag in self._long:
                    self._malformed(offset, "two GNU long names for one entry")
                self._long[typeflag] = _nts_strict(data, "long name", offset, self._raw_name(block))
            else:
                self._vet_pax(data, typeflag == b"g", offset)
            return total
        if typeflag == b"\0" and name_field.endswith(b"/"):
            typeflag = b"5"  # as tarfile: an old-style directory
        if typeflag not in _REGULAR and typeflag not in _HEADER_ONLY:
            self._current = self._display(block)
            kind = "sparse file" if typeflag == b"S" else f"entry type {typeflag!r}"
            raise UnsafeArchiveEntry(f"{self._what}: entry {self._current!r}: unsupported {kind}", entry=self._current)
        self.entries += 1
        if self.entries > self._limits.max_entries:
            raise LimitExceeded(
                f"{self._what}: more than {self._limits.max_entries} entries", limit=self._limits.max_entries
            )
        size = 0
        if typeflag in _REGULAR:
            size = int(self._pax[b"size"]) if b"size" in self._pax else _nti(block[124:136], offset, self)
            if size < 0:
                self._malformed(offset, f"negative size {size}")
            if size > self._limits.max_size:
                shown = self._display(block)
                raise LimitExceeded(
                    f"{self._what}: entry {shown!r} declares {size} bytes, more than the {self._limits.max_size} "
                    "allowed for a whole layer",
                    limit=self._limits.max_size,
                )
        self._current = self._display(block)
        self._expected.append(_Expect(offset + _BLOCK, size, self._current))
        self._pax = {}
        self._long = {}
        self._data_left = size + (-size % _BLOCK)
        return _BLOCK

    def _check_block(self, block: bytes, offset: int) -> None:
        stored = _nti(block[148:156], offset, self)
        # adler32's low half is 1 + the byte sum for up to 255 bytes: three parts.
        unsigned = 253 + sum(zlib.adler32(part) & 0xFFFF for part in (block[:148], block[156:356], block[356:]))
        if stored != unsigned:
            signed = 256 + sum(b - 256 if b > 127 else b for b in block[:148] + block[156:])
            if stored != signed:
                self._malformed(offset, "bad header checksum")
        for field in (block[100:108], block[108:116], block[116:124], block[136:148], block[329:337], block[337:345]):
            _nti(field, offset, self)
        raw = self._raw_name(block)
        _nts_strict(block[157:257], "link name", offset, raw)
        _nts_strict(block[345:500], "name prefix", offset, raw)

    def _vet_pax(self, data: bytes, is_global: bool, offset: int) -> None:
        if _LONG_DIGITS.search(data):
            self._malformed(offset, "PAX header with a run of more than 64 digits")
        records: dict[bytes, bytes] = {}
        pos = 0
        while pos < len(data):
            space = data.find(b" ", pos, pos + 21)
            digits = data[pos:space] if space > pos else b""
            if not digits.isdigit() or not digits.isascii():
                if not data[pos:].strip(b"\0"):
                    break  # padding some writers leave
                self._malformed(offset, "malformed PAX record")
            length = int(digits)
            end = pos + length
            if length <= len(digits) + 3 or end > len(data) or data[end - 1 : end] != b"\n":
                self._malformed(offset, "malformed PAX record")
            key, eq, value = data[space + 1 : end - 1].partition(b"=")
            if not eq or not key or b"\0" in key:
                self._malformed(offset, "malformed PAX record")
            if key in records:
                self._malformed(offset, f"PAX key {key.decode(errors='replace')!r} given twice")
            records[key] = value
            pos = end
        for key, value in records.items():
            self._vet_pax_record(key, value, is_global, offset)
        if is_global:
            return
        if self._pax:
            self._malformed(offset, "two PAX headers for one entry")
        self._pax = records

    def _vet_pax_record(self, key: bytes, value: bytes, is_global: bool, offset: int) -> None:
        name = key.decode(errors="replace")
        if is_global and key not in _GLOBAL_KEYS:
            self._malformed(offset, f"global PAX header with {name!r} (only 'comment' is accepted)")
        if key.startswith(b"GNU.sparse."):
            raise UnsafeArchiveEntry(f"{self._what}: sparse files are not supported (PAX {name})", entry=name)
        pattern = _PAX_NUMBERS.get(key)
        if pattern is not None and not pattern.fullmatch(value):
            self._malformed(offset, f"PAX {name} {value[:40]!r}")
        if key in (b"path", b"linkpath") and b"\0" in value:
            shown = value.decode(errors="replace")
            raise UnsafeArchiveEntry(f"{self._what}: entry {shown!r}: NUL byte in a name", entry=shown)
        elif key == b"hdrcharset" and value not in (b"BINARY", b"ISO-IR 10646 2000 UTF-8"):
            self._malformed(offset, f"PAX hdrcharset {value[:40]!r}")

    def _raw_name(self, block: bytes) -> bytes:
        if b"path" in self._pax:
            return self._pax[b"path"]
        if b"L" in self._long:
            return self._long[b"L"]
        return block[0:100].rstrip(b"\0")

    def _display(self, block: bytes) -> str:
        name = self._raw_name(block)
        if b"path" not in self._pax and b"L" not in self._long:
            prefix = block[345:500].split(b"\0", 1)[0]
            name = name.split(b"\0", 1)[0]
            if prefix:
                name = prefix + b"/" + name
        return os.fsdecode(name)

    def _malformed(self, offset: int, why: str) -> None:
        where = f" (after entry {self._current!r})" if self._current else ""
        raise MalformedDocument(f"{self._what}: malformed tar header at offset {offset}{where}: {why}")


def _nts_strict(field: bytes, what: str, offset: int, raw: bytes) -> bytes:
    """The bytes up to the first NUL; anything but NULs after it is a hidden name."""
    cut = field.find(b"\0")
    if cut < 0:
        return field
    if field[cut:].strip(b"\0"):
        shown = os.fsdecode(raw).replace("\0", "\\x00")
        raise UnsafeArchiveEntry(f"entry {shown!r}: NUL byte in the {what} (header at offset {offset})", entry=shown)
    return field[:cut]


def _nti(field: bytes, offset: int, guard: TarGuard) -> int:
    # Mirrors tarfile.nti, so both read the same number from the same field.
    if field[0] in (0o200, 0o377):
        n = int.from_bytes(field[1:], "big")
        return n - 256 ** (len(field) - 1) if field[0] == 0o377 else n
    try:
        text = field.split(b"\0", 1)[0].decode("ascii")
        return int(text.strip() or "0", 8)
    except ValueError:
        guard._malformed(offset, f"bad numeric field {field!r}")
        raise  # unreachable


# --------------------------------------------------------------------------- in-root resolution

_SYS_OPENAT2 = 437  # the same number on every Linux architecture (unified syscall table)
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_BENEATH = 0x08
_MAX_SYMLINK_HOPS = 40


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


@functools.cache
def _syscall() -> Callable[..., int]:
    function = ctypes.CDLL(None, use_errno=True).syscall
    function.restype = ctypes.c_long
    return function  # type: ignore[no-any-return]


def _openat2(dirfd: int, path: bytes, flags: int) -> int:
    how = _OpenHow(flags, 0, _RESOLVE_BENEATH | _RESOLVE_NO_MAGICLINKS)
    # syscall(2) is variadic and reads longs: pass every argument full width.
    fd = _syscall()(
        ctypes.c_long(_SYS_OPENAT2),
        ctypes.c_long(dirfd),
        ctypes.c_char_p(path),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), path)
    return fd


class _Resolver:
    """Directories beneath one root fd, resolved so that nothing escapes the root.

    Relative symbolic links that stay inside the root are followed for
    directories; absolute ones and `..` past the root are refused (EXDEV from
    openat2's RESOLVE_BENEATH, or the same rule in the component walk).
    """

    def __init__(self, root_fd: int, what: str, use_openat2: bool | None) -> None:
        self.root_fd = root_fd
        self._what = what
        self._openat2 = use_openat2 is not False
        self._key: tuple[bytes, ...] | None = None
        self._fd = -1

    def parent(self, parts: tuple[bytes, ...], entry: str) -> int:
        """A borrowed fd of the directory holding `parts`, created if missing (valid until invalidate)."""
        key = parts[:-1]
        if key != self._key:
            self.invalidate()
            fd = self.open_dir(key, entry, create=True)
            assert fd is not None
            self._key, self._fd = key, fd
        return self._fd

    def invalidate(self) -> None:
        if self._key is not None:
            os.close(self._fd)
            self._key, self._fd = None, -1

    def open_dir(self, parts: tuple[bytes, ...], entry: str, *, create: bool) -> int | None:
        """An fd (the caller's to close) of directory `parts`; None if missing and not `create`."""
        if not parts:
            return os.dup(self.root_fd)
        if self._openat2:
            path = b"/".join(parts)
            for _ in range(4):
                try:
                    return _openat2(self.root_fd, path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                except OSError as exc:
                    code = exc.errno
                if code == errno.EAGAIN:
                    continue  # a rename raced the lookup; the kernel asks us to retry
                if code in (errno.ENOSYS, errno.EPERM):
                    self._openat2 = False  # old kernel or seccomp: use the component walk
                elif code == errno.EXDEV:
                    self._escape(entry)
                elif code == errno.ELOOP:
                    self._refuse(entry, "too many symbolic links")
                elif code == errno.ENOTDIR:
                    self._refuse(entry, f"a parent of it is not a directory ({os.fsdecode(path)!r})")
                elif code != errno.ENOENT:
                    raise OSError(code, os.strerror(code), os.fsdecode(path))
                elif not create:
                    return None
                break
        return self._walk(parts, entry, create)

    def _walk(self, parts: tuple[bytes, ...], entry: str, create: bool) -> int | None:
        # One component at a time from directory fds, never letting the kernel
        # follow a link: symbolic links are read and interpreted here.
        stack: list[int] = []
        todo = list(reversed(parts))
        hops = 0
        try:
            while todo:
                part = todo.pop()
                if part in (b"", b"."):
                    continue
                if part == b"..":
                    if not stack:
                        self._escape(entry)
                    os.close(stack.pop())
                    continue
                here = stack[-1] if stack else self.root_fd
                try:
                    fd = os.open(part, _O_DIR, dir_fd=here)
                except FileNotFoundError:
                    if not create:
                        return None
                    _mkdir_implied(here, part)
                    fd = os.open(part, _O_DIR, dir_fd=here)
                except OSError as exc:
                    # O_DIRECTORY|O_NOFOLLOW fails with ENOTDIR on a symbolic link too.
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    if not _is_symlink(part, here):
                        self._refuse(entry, f"a parent of it is not a directory ({os.fsdecode(part)!r})")
                    hops += 1
                    if hops > _MAX_SYMLINK_HOPS:
                        self._refuse(entry, "too many symbolic links")
                    target = os.readlink(part, dir_fd=here)
                    if target.startswith(b"/"):
                        self._escape(entry)
                    todo.extend(reversed(target.split(b"/")))
                    continue
                stack.append(fd)
            return stack.pop() if stack else os.dup(self.root_fd)
        finally:
            for fd in stack:
                os.close(fd)

    def _escape(self, entry: str) -> None:
        self._refuse(entry, "its path leaves the layer root (through '..' or a symbolic link)")

    def _refuse(self, entry: str, why: str) -> None:
        raise UnsafeArchiveEntry(f"{self._what}: entry {entry!r}: {why}", entry=entry)


def _is_symlink(name: bytes, dfd: int) -> bool:
    return stat.S_ISLNK(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode)


def _mkdir_implied(dfd: int, name: bytes) -> None:
    # A parent the archive does not list: 0755 whatever the umask, as Docker does.
    os.mkdir(name, 0o755, dir_fd=dfd)
    fd = os.open(name, _O_DIR, dir_fd=dfd)
    try:
        os.fchmod(fd, 0o755)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- applying

_O_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_O_META = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_ID_VALUE = 0xFFFFFFFE  # (uid_t)-1 means "no change" to chown
_SKIPPED_KEPT = 1000
# tarfile's stream reader copies what is left of its buffer on every read, so a
# small buffer is cheaper than a large one for layers of many small files.
_TAR_BUFFER = 64 << 10


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
    if whiteouts == "overlay" and os.geteuid() != 0:
        raise StoreError(f"{what}: writing OverlayFS whiteouts needs root (character devices and trusted.* xattrs)")
    guard = TarGuard(source, limits, digester, what)
    root_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    applier = _Applier(_Resolver(root_fd, what, use_openat2), whiteouts, limits, what)
    try:
        try:
            with tarfile.open(  # type: ignore[call-overload]
                fileobj=guard, mode="r|", bufsize=_TAR_BUFFER, encoding="utf-8", errors="surrogateescape"
            ) as tar:
                while (info := tar.next()) is not None:
                    tar.members.clear()  # stream mode would keep every header in memory
                    seen = guard.expect()
                    if info.offset_data != seen.data_offset or (info.isreg() and info.size != seen.size):
                        raise MalformedDocument(f"{what}: tar readers disagree about entry {seen.name!r}")
                    applier.entry(info, tar)
        except tarfile.TarError as exc:
            where = f" in entry {guard._current!r}" if guard._current else ""
            raise MalformedDocument(f"{what}: malformed tar{where}: {exc}") from None
        guard.drain()
        if verify is not None:
            verify()
        applier.finish()
    finally:
        applier.close()
        os.close(root_fd)
    return Applied(guard.entries, guard.size, tuple(applier.skipped))


class _Applier:
    def __init__(self, resolver: _Resolver, whiteouts: Whiteouts, limits: Limits, what: str) -> None:
        self._resolver = resolver
        self._overlay = whiteouts == "overlay"
        self._limits = limits
        self._what = what
        self._owner = os.geteuid() == 0  # ownership, devices: only as root
        self._touched: set[bytes] = set()  # this layer's paths and their parents
        self._dirs: dict[bytes, tuple[int, int]] = {}  # path -> (mode, mtime ns), applied last
        self.skipped: list[str] = []

    # -- dispatch
    def entry(self, info: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        name = info.name
        parts = self._clean(name, name)
        for part in parts[:-1]:
            if part.startswith(_WH):
                self._refuse(name, "a whiteout name used as a directory")
        if not parts:
            if info.isdir():
                return  # the root itself: its metadata belongs to whoever owns the target
            self._refuse(name, "it would replace the layer root")
        base = parts[-1]
        if base.startswith(_WH):
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
            self._hardlink(parts, name, info)
        elif info.ischr() or info.isblk():
            self._device(parts, name, info)
        elif info.isfifo():
            self._special(parts, name, info, 0o600)
        else:
            self._refuse(name, f"unsupported entry type {info.type!r}")

    def _clean(self, name: str, entry: str) -> tuple[bytes, ...]:
        raw = os.fsencode(name)
        limits = self._limits
        if b"\0" in raw:
            self._refuse(entry, "NUL byte in the name")
        if b"\n" in raw:
            self._refuse(entry, "newline in the name")
        if raw.startswith(b"/"):
            self._refuse(entry, "absolute name")
        if len(raw) > limits.max_path:
            self._limit(entry, f"name longer than {limits.max_path} bytes", limits.max_path)
        parts: list[bytes] = []
        for part in raw.split(b"/"):
            if part in (b"", b"."):
                continue
            if part == b"..":
                if not parts:
                    self._refuse(entry, "its name leaves the layer root")
                parts.pop()
                continue
            if len(part) > limits.max_component:
                self._limit(entry, f"a name component longer than {limits.max_component} bytes", limits.max_component)
            parts.append(part)
        if len(parts) > limits.max_depth:
            self._limit(entry, f"deeper than {limits.max_depth} directories", limits.max_depth)
        return tuple(parts)

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
            while chunk := data.read(_CHUNK):
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
        try:
            os.mkdir(base, 0o700, dir_fd=pfd)
        except FileExistsError:
            if not stat.S_ISDIR(os.stat(base, dir_fd=pfd, follow_symlinks=False).st_mode):
                self._remove(pfd, base)
                os.mkdir(base, 0o700, dir_fd=pfd)
        fd = os.open(base, _O_DIR, dir_fd=pfd)
        try:
            if self._owner:
                os.fchown(fd, uid, gid)
            for key, value in self._xattrs(entry, info):
                self._setxattr(entry, fd, key, value, True)
        finally:
            os.close(fd)
        self._dirs[b"/".join(parts)] = (info.mode & 0o7777, mtime)

    def _symlink(self, parts: tuple[bytes, ...], entry: str, info: tarfile.TarInfo) -> None:
        uid, gid, mtime = self._ids_and_time(entry, info)
        target = os.fsencode(info.linkname)
        if not target or b"\0" in target:
            self._refuse(entry, "empty symbolic link target")
        if len(target) > self._limits.max_path:
            self._limit(entry, f"link target longer than {self._limits.max_path} bytes", self._limits.max_path)
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

    def _hardlink(self, parts: tuple[bytes, ...], entry: str, info: tarfile.TarInfo) -> None:
        target = self._clean(info.linkname, entry) if info.linkname else ()
        if not target:
            self._refuse(entry, f"hard link to {info.linkname!r}")
        if target == parts:
            return
        tfd = self._resolver.open_dir(target[:-1], entry, create=False)
        if tfd is None:
            self._refuse(entry, f"hard link target {info.linkname!r} is not in the layer root")
        try:
            try:
                st = os.stat(target[-1], dir_fd=tfd, follow_symlinks=False)
            except FileNotFoundError:
                self._refuse(entry, f"hard link target {info.linkname!r} is not in the layer root")
            if stat.S_ISDIR(st.st_mode):
                self._refuse(entry, f"hard link to the directory {info.linkname!r}")
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
        if base == _WH_OPAQUE:
            self._opaque(where, entry)
            return
        if base.startswith(_WH_META):
            self._refuse(entry, "a whiteout of a whiteout")
        victim = base[len(_WH) :]
        if victim in (b"", b".", b".."):
            self._refuse(entry, "a whiteout that names no file")
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
            fd = os.open(name, _O_DIR, dir_fd=dfd)
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
                fd = os.open(where[-1], _O_DIR, dir_fd=pfd)
            except FileNotFoundError:
                return
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                if _is_symlink(where[-1], pfd):
                    self._refuse(entry, "an opaque whiteout inside a symbolic link")
                return  # a file of a lower layer; this layer's directory entry replaces it
            finally:
                os.close(pfd)
        try:
            if self._overlay:
                os.setxattr(fd, "trusted.overlay.opaque", b"y")
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
                fd = os.open(name, _O_DIR, dir_fd=dfd)
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
            if _OVERLAY_XATTR.fullmatch(os.fsencode(name)):
                log.warning("%s: entry %r: dropping OverlayFS xattr %s", self._what, entry, name)
                continue
            out.append((name, value.encode("utf-8", "surrogateescape")))
        return out

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

    def _limit(self, entry: str, why: str, limit: int) -> None:
        raise LimitExceeded(f"{self._what}: entry {entry!r}: {why}", limit=limit)

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
                fd = os.open(parts[-1], _O_DIR, dir_fd=pfd)
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
