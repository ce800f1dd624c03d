"""The container side of a sandbox run: what PID 1 does between its fork and the command's exec.

builder.namespace_sandbox forks PID 1 and supervises it; everything here
runs in that child (or in the one forked ahead, `warm_child`), in this
order: close the builder's descriptors, make the namespaces, stage what
every container gets (`_stage`: /proc, /sys, /dev, the loopback), mount
the root and move the staged mounts under it, pivot_root, bind the /etc
files and volumes, become the user with Docker's capabilities, set
no_new_privs and the seccomp filter, exec. Failures are written to the
report pipe the parent reads; nothing ever returns from here.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import gc
import os
import posixpath
import select
import signal
import stat
import struct
from typing import TYPE_CHECKING

from . import _linux as linux
from . import seccomp
from .errors import SandboxError
from .sandbox import DEFAULT_PATH
from .users import Credentials, UserError, resolve_user

if TYPE_CHECKING:
    import socket
    from typing import NoReturn

    from store.snapshots import Mount

    from .sandbox import ExecRequest

__all__ = ["NAMESPACES", "SECCOMP", "Container", "mount_rootfs", "warm_child"]

# Docker's default capability set.
_DEFAULT_CAPS = sum(1 << c for c in (0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31))
_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
_MASKED = ("/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sysrq-trigger", "/proc/latency_stats",
           "/proc/sched_debug", "/proc/acpi", "/proc/scsi")  # fmt: skip
_READONLY = ("/proc/sys", "/proc/bus", "/proc/fs", "/proc/irq")
_STUB_FILES = ("/etc/hosts", "/etc/hostname", "/etc/resolv.conf")
_ETC_FILES = ("hosts", "hostname", "resolv.conf")
SECCOMP = seccomp.filter_program() if seccomp.supported() else None
_PAGE = 4096
_NOEXEC_FLAGS = linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC
NAMESPACES = linux.CLONE_NEWNS | linux.CLONE_NEWUTS | linux.CLONE_NEWIPC | linux.CLONE_NEWCGROUP
_TIOCSCTTY = 0x540E
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1


def warm_child(control: int, life_r: int, life_w: int, network: str, where: str) -> NoReturn:
    """A PID 1 forked ahead (builder.namespace_sandbox._Warm): make the namespaces but the cgroup one,
    stage, then wait on `control` for the run (pickled) and its descriptors, and go on as `Container`."""
    gc.disable()  # a collection would write to every object: copy-on-write of the whole heap, for nothing
    report_w = -1
    try:
        os.close(life_w)
        linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
        if select.select([life_r], [], [], 0)[0]:
            os._exit(1)  # the parent died before PDEATHSIG was set
        _close_all_but({control, life_r})
        linux.unshare(NAMESPACES & ~linux.CLONE_NEWCGROUP | (linux.CLONE_NEWNET if network == "none" else 0))
        linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
        _stage(os.path.join(where, "stage"), network)
        import pickle
        import socket

        with socket.socket(fileno=control) as sock:
            message, fds, _, _ = socket.recv_fds(sock, 1 << 20, 64)
        if not message:
            os._exit(0)  # discarded
        request, creds, etc, cgroups, count = pickle.loads(message)
        report_w = fds[0]
        container = Container(request, where, etc, tuple(fds[4 : 4 + cgroups]), rootless=False)
        container.creds = creds
        container.stdio = (fds[1], fds[2], fds[3])
        if count > 4 + cgroups:
            container.pty_socket = socket.socket(fileno=fds[4 + cgroups])
        container.resume(report_w, life_r)
    except BaseException as exc:  # noqa: BLE001 - nothing may escape a forked child
        if report_w >= 0:
            _report(report_w, _describe(exc))
    os._exit(127)


class Container:
    """What PID 1 does between fork and exec; every method runs in the child."""

    def __init__(
        self, request: ExecRequest, where: str, etc: tuple[bytes, ...], cgroup_fds: tuple[int, ...], rootless: bool
    ) -> None:
        self.request = request
        self.rootless = rootless
        self.where = where
        self.root = os.path.join(where, "root")  # mount points: empty directories of the sandbox,
        self.stage = os.path.join(where, "stage")  # each run's mounts private to its own namespace
        self.etc = etc
        self.cgroup_fds = cgroup_fds
        self.stdio: tuple[int, int, int] = (0, 1, 2)
        self.pty_socket: socket.socket | None = None
        self.stubs: list[str] = []
        self.pivoted = False
        self.creds: Credentials | None = None  # USER resolved by the builder, from the image's layers

    def start(self, report_w: int, life_r: int, life_w: int, *, namespaces: int) -> NoReturn:
        """In a freshly forked PID 1: make the namespaces, set up, exec."""
        gc.disable()  # a collection would write to every object: copy-on-write of the whole heap, for nothing
        try:
            os.close(life_w)
            linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
            if select.select([life_r], [], [], 0)[0]:
                os._exit(1)  # the parent died before PDEATHSIG was set
        except BaseException:  # noqa: BLE001 - nothing may escape a forked child
            os._exit(127)
        self._to_exec(report_w, life_r, namespaces, prepared=False)

    def resume(self, report_w: int, life_r: int) -> NoReturn:
        """In a PID 1 forked ahead (`_Warm`), its other namespaces made: the cgroup one, set up, exec."""
        self._to_exec(report_w, life_r, linux.CLONE_NEWCGROUP, prepared=True)

    def _to_exec(self, report_w: int, life_r: int, namespaces: int, *, prepared: bool) -> NoReturn:
        code = 127
        try:
            # The builder's own descriptors (the store's files, directories) must not be
            # reachable from the container, through /proc/self/fd, even before exec.
            keep = {report_w, life_r, *self.stdio, *self.cgroup_fds}
            if self.pty_socket is not None:
                keep.add(self.pty_socket.fileno())
            _close_all_but(keep)
            try:
                self._setup(namespaces, prepared=prepared)
            finally:  # what was made goes, even when the set-up fails half-way
                os.write(report_w, b"stubs\0" + "\0".join(self.stubs).encode() + b"\n")
            self._exec()
        except _ExecFailed as exc:
            code = exc.code
            _report(report_w, str(exc), kind=b"exec")
        except BaseException as exc:  # noqa: BLE001 - every failure is reported, none escapes the child
            _report(report_w, _describe(exc))
        os._exit(code)

    def _setup(self, namespaces: int, *, prepared: bool) -> None:
        request = self.request
        for fd in self.cgroup_fds:  # before the cgroup namespace, whose root it becomes
            os.write(fd, b"0")
            os.close(fd)
        if prepared:
            linux.unshare(namespaces)
        else:
            linux.unshare(namespaces | (linux.CLONE_NEWNET if request.network == "none" else 0))
            linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
            _stage(self.stage, request.network)
        linux.sethostname(request.hostname or "pybuild")
        stdin, stdout, stderr = self.stdio
        for target, fd in ((0, stdin), (1, stdout), (2, stderr)):
            os.dup2(fd, target)
        # Host-side sources, taken before pivot_root hides the host: the container's
        # own /etc files (on the staging tmpfs: no one else writes them, gone with it)...
        etc = []
        for name, data in zip(_ETC_FILES, self.etc):
            path = os.path.join(self.stage, "etc", name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            os.write(fd, data)
            os.close(fd)
            etc.append(linux.open_tree(path))
        binds = []  # ...and the volumes: nodev, read-only all the way down when asked (a remount would not recurse)
        for bind in request.binds:
            fd = linux.open_tree(bind.source, recursive=True)
            binds.append(fd)
            linux.mount_setattr(fd, linux.MOUNT_ATTR_NODEV | (linux.MOUNT_ATTR_RDONLY if bind.readonly else 0))
        mount_rootfs(request.rootfs, self.root)
        os.chdir(self.root)
        for name in ("proc", "sys", "dev"):  # staged mounts move in, onto directories of the root
            staged = os.path.join(self.stage, name)
            if os.path.ismount(staged):  # sysfs may be missing (unprivileged, the host's network)
                self._stub("/" + name, directory=True)
                _move_here(staged, name)
        linux.pivot_root(".", ".")
        linux.umount(".", linux.MNT_DETACH)
        os.chdir("/")
        self.pivoted = True
        for path, fd in zip(_STUB_FILES, etc):
            self._stub(path, directory=False)
            linux.move_mount(fd, path)
            os.close(fd)
        for bind, fd in zip(request.binds, binds):
            self._stub(bind.target, directory=stat.S_ISDIR(os.fstat(fd).st_mode))
            linux.move_mount(fd, bind.target)
            os.close(fd)

    def _stub(self, path: str, *, directory: bool) -> None:
        """Make sure the mount point `path` exists in the container, noting what was created for removal after.

        Paths are the container's, made relative to the cwd: the new root,
        before and after pivot_root.
        """
        here = "." + path
        if os.path.lexists(here):
            if os.path.islink(here):
                raise SandboxError(f"mount point {path} is a symbolic link in the image")
            return
        parent = os.path.dirname(path)
        if parent != "/" and not os.path.lexists("." + parent):
            self._stub(parent, directory=True)
        if directory:
            os.mkdir(here, 0o755)
        else:
            os.close(os.open(here, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o644))
        # Where it really is: the image's links (/var/run -> /run) are followed, inside the root.
        self.stubs.append(os.path.realpath(path) if self.pivoted else path)

    def _exec(self) -> None:
        request = self.request
        creds = self.creds
        if creds is None:  # the builder could not read the image's files from its layers: read them here
            try:
                creds = resolve_user(request.user, _read_etc("/etc/passwd"), _read_etc("/etc/group"))
            except UserError as exc:
                raise _ExecFailed(str(exc), 125) from None
        env = dict(_split_env(request.env))
        env.setdefault("PATH", DEFAULT_PATH)
        env.setdefault("HOSTNAME", request.hostname or "pybuild")
        env.setdefault("HOME", creds.home)
        if request.tty:
            env.setdefault("TERM", "xterm")
            os.setsid()
            master, slave = os.openpty()  # of the container's own /dev/pts, so ttyname() works inside
            for target in (0, 1, 2):
                os.dup2(slave, target)
            os.close(slave)
            fcntl.ioctl(1, _TIOCSCTTY, 0)
            import socket

            socket.send_fds(self.pty_socket, [b"pty"], [master])
            os.close(master)
        cwd = posixpath.normpath(posixpath.join("/", request.cwd or "/"))
        if cwd == "/proc" or cwd.startswith("/proc/"):
            raise _ExecFailed(f"working directory {request.cwd}: refused, it is inside /proc", 125)
        try:
            try:
                os.chdir(cwd)
            except FileNotFoundError:  # made, as Docker makes a missing working directory
                os.makedirs(cwd, 0o755)
                os.chown(cwd, creds.uid, creds.gid)
                os.chdir(cwd)
        except OSError as exc:
            raise _ExecFailed(f"working directory {request.cwd}: {exc.strerror}", 125) from None
        try:
            inside = os.getcwd().startswith("/")  # the kernel says "(unreachable)" for a directory outside the root
        except FileNotFoundError:
            inside = False
        if not inside:
            raise _ExecFailed(f"working directory {request.cwd}: refused, it leads outside the container", 125)
        if creds.uid != 0 or creds.gid != 0 or len(creds.groups) > 1:
            try:
                os.setgroups(list(creds.groups))
                os.setresgid(creds.gid, creds.gid, creds.gid)
                os.setresuid(creds.uid, creds.uid, creds.uid)
            except OSError as exc:
                unmapped = " (this user namespace maps only root: no range in /etc/subuid)" if self.rootless else ""
                raise _ExecFailed(f"user {request.user}: cannot switch to it: {exc.strerror}{unmapped}", 125) from None
            linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)  # a change of ids clears it
        if creds.uid == 0:
            linux.capset(_DEFAULT_CAPS, _DEFAULT_CAPS, 0)
        linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
        if SECCOMP is not None:  # last: it refuses some of what the set-up above needed
            linux.seccomp_filter(SECCOMP)
        os.umask(0o022)  # Docker's, whatever the builder's own
        linux.cloexec_from(3)
        argv = list(request.argv)
        try:
            os.execvpe(argv[0], argv, env)
        except FileNotFoundError:
            raise _ExecFailed(f'exec {argv[0]!r}: executable file not found in $PATH or no such file', 127) from None
        except PermissionError:
            raise _ExecFailed(f"exec {argv[0]!r}: permission denied", 126) from None
        except OSError as exc:
            raise _ExecFailed(f"exec {argv[0]!r}: {exc.strerror}", 126) from None


class _ExecFailed(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _default_signals() -> None:
    """Every signal to its default action and none blocked: the command must not inherit that Python
    ignores SIGPIPE, nor what the builder's caller ignored (nohup, a background job) or blocked."""
    with open("/proc/self/status", "rb") as f:  # the container's /proc: PID 1's own, the kernel's view
        ignored = int(next(line for line in f if line.startswith(b"SigIgn:")).split()[1], 16)
    # exec resets handled signals, not ignored ones. glibc keeps 32 and 33 for itself (not in
    # valid_signals, and sigaction refuses them); a caller written in Rust or Go may ignore them,
    # and every libc claims them again at start-up.
    for signo in signal.valid_signals():
        if ignored >> (signo - 1) & 1:
            signal.signal(signo, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())


def _close_all_but(keep: set[int]) -> None:
    low = 3
    for fd in sorted(fd for fd in keep if fd >= 3):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 20)  # close_range(2): one system call whatever the bound


def _stage(stage: str, network: str) -> None:
    """Mount what every container gets on the empty directory `stage`, ready to move under a root.

    /proc (the kernel's sensitive files masked, /proc/sys and others
    read-only), /sys (read-only), a minimal /dev (the host's nodes bound on a
    nodev tmpfs: a node the command makes, with the CAP_MKNOD it keeps as in
    Docker, opens nothing; pts; shm), a directory for the /etc files; the
    loopback interface up; the capability bounding set and the signal
    actions as the command gets them. None of it depends on the command, so a PID 1
    forked ahead does it before its run is known. Done before pivot_root:
    unprivileged, the kernel lets a user namespace mount proc and sysfs only
    while a full view of them is still in its mount table.
    """
    linux.mount("tmpfs", stage, "tmpfs", _NOEXEC_FLAGS, "mode=755,size=1m")
    for name in ("proc", "sys", "dev", "etc"):
        os.mkdir(os.path.join(stage, name), 0o755)
    proc = os.path.join(stage, "proc")
    linux.mount("proc", proc, "proc", _NOEXEC_FLAGS)
    empty = os.path.join(stage, "empty")  # on the staging tmpfs: no filesystem of its own per masked directory
    os.mkdir(empty, 0o555)
    for path in _MASKED:
        target = stage + path
        with contextlib.suppress(FileNotFoundError):
            if os.path.isdir(target):
                linux.mount(empty, target, None, linux.MS_BIND)
                linux.mount(None, target, None, linux.MS_REMOUNT | linux.MS_BIND | linux.MS_RDONLY)
            else:
                linux.mount("/dev/null", target, None, linux.MS_BIND)
    for path in _READONLY:
        target = stage + path
        with contextlib.suppress(FileNotFoundError):
            linux.mount(target, target, None, linux.MS_BIND | linux.MS_REC)
            linux.mount(None, target, None, linux.MS_REMOUNT | linux.MS_BIND | linux.MS_RDONLY | linux.MS_REC)
    with contextlib.suppress(PermissionError):  # unprivileged with the host's network: sysfs is the host's
        linux.mount("sysfs", os.path.join(stage, "sys"), "sysfs", _NOEXEC_FLAGS | linux.MS_RDONLY)
    dev = os.path.join(stage, "dev")
    linux.mount("tmpfs", dev, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "mode=755,size=65536k")
    for name in _DEVICES:
        node = os.path.join(dev, name)
        os.close(os.open(node, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o666))
        linux.mount(f"/dev/{name}", node, None, linux.MS_BIND)
    os.mkdir(os.path.join(dev, "pts"), 0o755)
    options = "newinstance,ptmxmode=0666,mode=0620"
    try:
        linux.mount("devpts", os.path.join(dev, "pts"), "devpts", linux.MS_NOSUID | linux.MS_NOEXEC, options + ",gid=5")
    except OSError as exc:  # unprivileged with a single mapped id: group tty (5) does not exist
        if exc.errno != errno.EINVAL:
            raise
        linux.mount("devpts", os.path.join(dev, "pts"), "devpts", linux.MS_NOSUID | linux.MS_NOEXEC, options)
    os.mkdir(os.path.join(dev, "shm"), 0o1777)
    linux.mount("shm", os.path.join(dev, "shm"), "tmpfs", _NOEXEC_FLAGS, "mode=1777,size=65536k")
    for link, target in (("ptmx", "pts/ptmx"), ("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):  # fmt: skip
        os.symlink(target, os.path.join(dev, link))
    if network == "none":
        _loopback_up()
    linux.drop_bounding_set(_DEFAULT_CAPS, linux.last_cap())  # what exec may grant: Docker's set at most
    _default_signals()


def _move_here(source: str, name: str) -> None:
    """Move the mount at `source` onto directory `name` of the cwd, without following a symbolic link there."""
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        linux.mount(source, f"/proc/self/fd/{fd}", None, linux.MS_MOVE)
    finally:
        os.close(fd)


def mount_rootfs(mounts: tuple[Mount, ...], target: str) -> None:
    """Mount the root filesystem `mounts` describe (one bind or overlay) on `target`, nodev."""
    if len(mounts) != 1:
        raise SandboxError(f"root filesystem: expected one mount, got {len(mounts)}")
    (mount,) = mounts
    # nodev: device nodes of the image (or made by the command) open nothing; Docker's device rules, by mount.
    if mount.type == "bind":
        fd = linux.open_tree(mount.source, recursive=True)
        try:
            linux.mount_setattr(fd, linux.MOUNT_ATTR_NODEV | (linux.MOUNT_ATTR_RDONLY if "ro" in mount.options else 0))
            linux.move_mount(fd, target)
        finally:
            os.close(fd)
        return
    if mount.type != "overlay":
        raise SandboxError(f"root filesystem: cannot mount type {mount.type!r}")
    data = ",".join(mount.options)
    if len(data) >= _PAGE:
        data = _compact(mount.options)
    linux.mount(mount.source, target, "overlay", linux.MS_NODEV, data)


def _compact(options: tuple[str, ...]) -> str:
    """Options with the lower/upper/work dirs under the snapshots directory made relative to it, the cwd.

    A mount's options must fit in a page; with snapshot ids of 16 hex digits a
    relative lower dir costs 20 bytes, so about 200 layers fit. Directories
    elsewhere (the sandbox's stub layer) stay absolute.
    """
    paths = [o.split("=", 1)[1] for o in options if o.startswith(("lowerdir=", "upperdir=", "workdir="))]
    dirs = [p for value in paths for p in value.split(":")]
    # <store>/snapshots/<id>/fs: the directory most of them are two levels under
    base = collections.Counter(os.path.dirname(os.path.dirname(p)) for p in dirs).most_common(1)[0][0]
    os.chdir(base)
    out = []
    for option in options:
        key, _, value = option.partition("=")
        if key in ("lowerdir", "upperdir", "workdir"):
            value = ":".join(os.path.relpath(p, base) if p.startswith(base + "/") else p for p in value.split(":"))
            option = f"{key}={value}"
        out.append(option)
    data = ",".join(out)
    if len(data) >= _PAGE:
        raise SandboxError(f"root filesystem: {len(paths[0].split(':'))} layers do not fit in one overlay mount")
    return data


def _loopback_up() -> None:
    fd = linux.inet_socket()
    try:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(fd, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(fd, _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))
    finally:
        os.close(fd)


def _read_etc(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(4 << 20).decode("utf-8", "replace")
    except OSError:
        return ""


def _split_env(env: tuple[str, ...]) -> list[tuple[str, str]]:
    pairs = []
    for item in env:
        key, sep, value = item.partition("=")
        if sep and key:
            pairs.append((key, value))
    return pairs


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.strerror or exc}: {exc.filename}" if exc.strerror else str(exc)
    return str(exc) or type(exc).__name__


def _report(fd: int, message: str, kind: bytes = b"error") -> None:
    with contextlib.suppress(OSError):
        os.write(fd, kind + b"\0" + message.replace("\n", " ").encode("utf-8", "replace") + b"\n")
