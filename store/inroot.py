"""Resolving paths inside a root directory as if it were `/` (design rule R1).

Parents are opened with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`
through ctypes, or by a component-by-component O_NOFOLLOW walk where openat2
is missing. Either way a symbolic link is followed the way it would be in a
container whose root is that directory: an absolute target starts again at
the root and `..` at the root stays there, so no path leads out (containerd's
rule for legal-but-odd layers, the hostile-inputs decision 1).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import stat
from typing import TYPE_CHECKING

from .archive import O_DIR
from .errors import UnsafeArchiveEntry

if TYPE_CHECKING:
    from collections.abc import Callable


__all__ = ["Resolver", "is_symlink"]


# --------------------------------------------------------------------------- in-root resolution

_SYS_OPENAT2 = 437  # the same number on every Linux architecture (unified syscall table)
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_IN_ROOT = 0x10
_MAX_SYMLINK_HOPS = 40


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


@functools.cache
def _syscall() -> Callable[..., int]:
    function = ctypes.CDLL(None, use_errno=True).syscall
    function.restype = ctypes.c_long
    return function  # type: ignore[no-any-return]


def _openat2(dirfd: int, path: bytes, flags: int) -> int:
    how = _OpenHow(flags, 0, _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS)
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


class Resolver:
    """Directories under one root fd, resolved with that fd as `/`.

    Symbolic links are followed for directories, re-rooted: `etc -> /srv/etc`
    leads to `<root>/srv/etc`, `up -> ../../..` to `<root>`.
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
                    if stack:  # `..` at the root is the root
                        os.close(stack.pop())
                    continue
                here = stack[-1] if stack else self.root_fd
                try:
                    fd = os.open(part, O_DIR, dir_fd=here)
                except FileNotFoundError:
                    if not create:
                        return None
                    _mkdir_implied(here, part)
                    fd = os.open(part, O_DIR, dir_fd=here)
                except OSError as exc:
                    # O_DIRECTORY|O_NOFOLLOW fails with ENOTDIR on a symbolic link too.
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    if not is_symlink(part, here):
                        self._refuse(entry, f"a parent of it is not a directory ({os.fsdecode(part)!r})")
                    hops += 1
                    if hops > _MAX_SYMLINK_HOPS:
                        self._refuse(entry, "too many symbolic links")
                    target = os.readlink(part, dir_fd=here)
                    if target.startswith(b"/"):  # absolute: from the root again
                        while stack:
                            os.close(stack.pop())
                    todo.extend(reversed(target.split(b"/")))
                    continue
                stack.append(fd)
            return stack.pop() if stack else os.dup(self.root_fd)
        finally:
            for fd in stack:
                os.close(fd)

    def _refuse(self, entry: str, why: str) -> None:
        raise UnsafeArchiveEntry(f"{self._what}: entry {entry!r}: {why}", entry=entry)


def is_symlink(name: bytes, dfd: int) -> bool:
    return stat.S_ISLNK(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode)


def _mkdir_implied(dfd: int, name: bytes) -> None:
    # A parent the archive does not list: 0755 whatever the umask, as Docker does.
    os.mkdir(name, 0o755, dir_fd=dfd)
    fd = os.open(name, O_DIR, dir_fd=dfd)
    try:
        os.fchmod(fd, 0o755)
    finally:
        os.close(fd)
