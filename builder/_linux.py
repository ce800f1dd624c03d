"""Linux system calls Python 3.11's os module lacks, through ctypes.

Each wrapper raises OSError with errno and the path or operation it was
given, like the os module's own functions. Only what the sandbox uses.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal

__all__ = [
    "CLONE_NEWCGROUP",
    "CLONE_NEWIPC",
    "CLONE_NEWNET",
    "CLONE_NEWNS",
    "CLONE_NEWPID",
    "CLONE_NEWUSER",
    "CLONE_NEWUTS",
    "MNT_DETACH",
    "MOUNT_ATTR_NODEV",
    "MOUNT_ATTR_RDONLY",
    "MS_BIND",
    "MS_MOVE",
    "MS_NODEV",
    "MS_NOEXEC",
    "MS_NOSUID",
    "MS_PRIVATE",
    "MS_RDONLY",
    "MS_REC",
    "MS_REMOUNT",
    "capset",
    "cloexec_from",
    "drop_bounding_set",
    "inet_socket",
    "last_cap",
    "mount",
    "mount_setattr",
    "move_mount",
    "open_tree",
    "pivot_root",
    "prctl",
    "seccomp_filter",
    "sethostname",
    "setns",
    "umount",
    "unshare",
]

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

_OPEN_TREE_CLONE = 1
_OPEN_TREE_CLOEXEC = os.O_CLOEXEC
_AT_RECURSIVE = 0x8000
_AT_FDCWD = -100
_MOVE_MOUNT_F_EMPTY_PATH = 4

PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
# Looked up now, once: a first lookup costs a symbol search (a quarter of a millisecond for
# capset), which a container's PID 1 would otherwise pay between fork and exec.
for _name in ("unshare", "setns", "mount", "umount2", "prctl", "capset", "sethostname", "socket"):
    getattr(_libc, _name)
del _name

# The new mount API's numbers are the same on every architecture; pivot_root's is not.
_SYS = {"pivot_root": {"x86_64": 155, "aarch64": 41}.get(os.uname().machine, -1)}
_SYS.update(open_tree=428, move_mount=429, mount_setattr=442)

MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NODEV = 0x4
_AT_EMPTY_PATH = 0x1000


def _check(result: int, what: str, path: str | None = None) -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}", path)
    return result


def _b(path: str | bytes | None) -> bytes | None:
    return os.fsencode(path) if path is not None else None


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(fd, nstype), "setns")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    _check(_libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data)), "mount", target)


def umount(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_b(target), flags), "umount", target)


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_syscall(_SYS["pivot_root"], _b(new_root), _b(put_old)), "pivot_root", new_root)


def open_tree(path: str, *, recursive: bool = False) -> int:
    """A detached copy of the mount at `path` (a bind mount not yet attached anywhere), as an fd."""
    flags = _OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC | (_AT_RECURSIVE if recursive else 0)
    return _check(_syscall(_SYS["open_tree"], _AT_FDCWD, _b(path), ctypes.c_uint(flags)), "open_tree", path)


def move_mount(fd: int, target: str) -> None:
    """Attach the detached mount `fd` at `target`."""
    result = _syscall(_SYS["move_mount"], fd, b"", _AT_FDCWD, _b(target), ctypes.c_uint(_MOVE_MOUNT_F_EMPTY_PATH))
    _check(result, "move_mount", target)


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]  # fmt: skip


def mount_setattr(fd: int, attributes: int) -> None:
    """Set MOUNT_ATTR_* on the (detached) mount `fd` and every mount below it; unlike a remount, it recurses."""
    attr = _MountAttr(attributes, 0, 0, 0)
    flags = ctypes.c_uint(_AT_EMPTY_PATH | _AT_RECURSIVE)
    result = _syscall(_SYS["mount_setattr"], fd, b"", flags, ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)))
    _check(result, "mount_setattr")


def sethostname(name: str) -> None:
    data = name.encode()
    _check(_libc.sethostname(data, len(data)), "sethostname")


def inet_socket() -> int:
    """An AF_INET datagram socket's fd, for interface ioctls (without importing the socket module)."""
    return _check(_libc.socket(2, 2 | os.O_CLOEXEC, 0), "socket")  # AF_INET, SOCK_DGRAM | SOCK_CLOEXEC


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def seccomp_filter(program: bytes) -> None:
    """Install the classic BPF `program` (packed struct sock_filter) as this thread's seccomp filter.

    The process must have set no_new_privs (or hold CAP_SYS_ADMIN); the filter
    is inherited by children and kept across execve.
    """
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    result = _libc.prctl(PR_SET_SECCOMP, ctypes.c_ulong(2), ctypes.byref(fprog), ctypes.c_ulong(0), ctypes.c_ulong(0))
    _check(result, "seccomp")  # 2: SECCOMP_MODE_FILTER


def prctl(option: int, arg: int = 0) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)), "prctl")


def last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap", "rb") as f:
            return int(f.read())
    except OSError:
        return 40


def drop_bounding_set(keep: int, last: int) -> None:
    """Drop every capability not in the `keep` bit mask from the bounding set."""
    for cap in range(last + 1):
        if not keep & (1 << cap):
            try:
                prctl(PR_CAPBSET_DROP, cap)
            except OSError as exc:
                if exc.errno != errno.EINVAL:  # a capability this kernel does not know
                    raise


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


_CapDataPair = _CapData * 2  # made once: a ctypes array type costs ~0.1 ms to create


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """Set this thread's capability sets (64-bit masks)."""
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = _CapDataPair()
    for i in range(2):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(_libc.capset(ctypes.byref(header), data), "capset")


_SYS.update(close_range=436)
_CLOSE_RANGE_CLOEXEC = 4


def cloexec_from(first: int) -> None:
    """Mark every fd from `first` up close-on-exec (close_range, Linux 5.11), so an exec'd command inherits none."""
    if _syscall(_SYS["close_range"], ctypes.c_uint(first), ctypes.c_uint(0xFFFFFFFF), ctypes.c_uint(_CLOSE_RANGE_CLOEXEC)) < 0:
        os.closerange(first, os.sysconf("SC_OPEN_MAX"))  # older kernels: close instead


_TERMINAL_SIGNALS = {signal.SIGINT, signal.SIGQUIT}


def fork_ignoring_terminal_signals() -> int:
    """os.fork(), with the child ignoring SIGINT and SIGQUIT from the start (a Ctrl-C reaches the
    whole process group: it must not interrupt a child's Python mid set-up, before its own exec).

    The signals are blocked across the fork, so that none arrives between
    the fork and the child's new dispositions; the parent's mask is restored.
    """
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _TERMINAL_SIGNALS)
    try:
        pid = os.fork()
        if pid == 0:
            for signo in _TERMINAL_SIGNALS:
                signal.signal(signo, signal.SIG_IGN)  # also discards one pending
        return pid
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
