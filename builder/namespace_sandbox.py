"""NamespaceSandbox: builder.sandbox's interface on Linux namespaces, OverlayFS and cgroups.

How one run goes (`run`):

1. Each NamespaceSandbox has a directory under the state root, locked
   while it lives, with two empty mount points (`root`, `etc`) that every
   run uses in its own mount namespace. A run makes the cgroup when limits
   are asked for, and the contents of its /etc/hosts, hostname, resolv.conf.
2. As root, it sets its own pid-namespace-for-children to a new namespace,
   forks (the child is PID 1 there) and sets it back: one fork. With
   `prefork` (the default), that PID 1 was forked during the previous run
   and has its namespaces and the mounts every container gets ready
   (`_Warm`, `_stage`); the run hands it the rest on a socket. Unprivileged,
   a first child makes a user namespace, the parent maps ids into it
   (newuidmap/newgidmap over /etc/subuid, else the caller's single id), and
   that child forks PID 1 into the other new namespaces.
3. PID 1 (`_Container.start`, Python until exec) closes the builder's
   descriptors, joins the cgroup, makes the mount, UTS, IPC, cgroup (and
   network) namespaces, writes its /etc files on a tmpfs of its own, mounts
   the root, /proc and /sys, pivot_roots, mounts /dev and the binds, drops
   to the Docker default capabilities and the user, sets no_new_privs,
   resets signal actions and execs the command. Set-up errors, and the
   mount points it had to create, reach the parent through a close-on-exec
   pipe.
4. The parent streams output, enforces the timeout, waits for PID 1: when it
   exits the kernel kills every other process of the namespace. The parent
   holds the container's mount namespace meanwhile, so that tearing its
   mounts down happens after the run returns, in a thread (`_Releaser`):
   nothing is left to use them. Then it removes mount stubs from the upper
   directory, and the cgroup.

A parent killed with SIGKILL takes PID 1 with it (PR_SET_PDEATHSIG); its
directory and cgroups are swept by the next NamespaceSandbox (their lock is
free). Mounts never outlive their namespace, so none can be left on the host.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import fcntl
import gc
import os
import posixpath
import select
import shutil
import signal
import stat
import struct
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from store.overlay import merged_entry

from . import _linux as linux
from . import seccomp
from .errors import SandboxError
from .mountpoints import remove_stubs, with_stub_layer
from .sandbox import DEFAULT_PATH, ExecRequest, ExecResult
from .users import Credentials, UserError, resolve_user

if TYPE_CHECKING:
    import socket
    from collections.abc import Callable
    from typing import NoReturn

    from store.snapshots import Mount

    from .cgroups import Cgroup

__all__ = ["NamespaceSandbox", "default_state_root"]

# Docker's default capability set.
_DEFAULT_CAPS = sum(1 << c for c in (0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31))
_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
_MASKED = ("/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sysrq-trigger", "/proc/latency_stats",
           "/proc/sched_debug", "/proc/acpi", "/proc/scsi")  # fmt: skip
_READONLY = ("/proc/sys", "/proc/bus", "/proc/fs", "/proc/irq")
_STUB_FILES = ("/etc/hosts", "/etc/hostname", "/etc/resolv.conf")
_ETC_FILES = ("hosts", "hostname", "resolv.conf")
_HOST_NAME_MAX = 64
_SECCOMP = seccomp.filter_program() if seccomp.supported() else None
_CGROUPS = "cgroups"  # in a sandbox's directory: the names of the cgroups it made
_CGROUPS_PENDING = ".cgroups-pending"  # in the state root: dead sandboxes' cgroups still to remove
_PAGE = 4096
_NOEXEC_FLAGS = linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC


def default_state_root() -> Path:
    if os.geteuid() == 0:
        return Path("/run/pybuild/sandbox")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.access(runtime, os.W_OK):
        return Path(runtime) / "pybuild" / "sandbox"
    return Path(f"/tmp/pybuild-{os.getuid()}/sandbox")


class NamespaceSandbox:
    """See the module docstring and builder.sandbox."""

    def __init__(self, state_root: str | os.PathLike[str] | None = None, *, prefork: bool = True) -> None:
        """`prefork`: fork each run's PID 1 ahead, while the run before it runs (see `_Warm`); worth it
        for a sandbox that runs many commands (a build), not for one (`pybuild run`)."""
        self.state_root = Path(state_root) if state_root is not None else default_state_root()
        self.rootless = os.geteuid() != 0
        os.makedirs(self.state_root, mode=0o700, exist_ok=True)
        self.swept = self.sweep()
        # This sandbox's directory: the root mount point (every run mounts its root
        # there, each in its own mount namespace) and the /etc files, made once.
        self._dir = self.state_root / os.urandom(6).hex()
        os.mkdir(self._dir, 0o700)
        self._lock = os.open(self._dir / "lock", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        os.mkdir(self._dir / "root", 0o755)
        os.mkdir(self._dir / "stage", 0o755)
        os.mkdir(self._dir / "stubs", 0o755)
        self._pidns = None if self.rootless else os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        self._prefork_wanted = prefork and not self.rootless
        self._warm: _Warm | None = None
        self._releaser = _Releaser()
        self._stub_layers: dict[str, str | None] = {}  # lowerdir -> its stub layer
        self._etc_texts: dict[tuple[str, int, int, int], str] = {}  # the image's passwd and group, read once
        self._lower_credentials: dict[tuple[str, str], Credentials | None] = {}  # (lowerdir, USER) ->
        self._warm_lock = threading.Lock()
        self.warnings: tuple[str, ...] = ()
        if _SECCOMP is None:
            self.warnings += (f"no seccomp filter for {os.uname().machine}: containers may make every system call",)
        if self.rootless and not subordinate_ids_available():
            self.warnings = (
                (
                    "no range for this user in /etc/subuid and /etc/subgid: containers get a single id (root), "
                    "so USER and chown to other ids fail"
                ),
            )

    def close(self) -> None:
        """Remove this sandbox's state directory; runs must have ended."""
        self._releaser.drain()
        with self._warm_lock:
            warm, self._warm = self._warm, None
        if warm is not None:
            warm.discard()
        if self._pidns is not None:
            os.close(self._pidns)
            self._pidns = None
        if self._lock is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            os.close(self._lock)
            self._lock = None

    def __enter__(self) -> NamespaceSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def sweep(self) -> list[str]:
        """Remove the state directories and cgroups of dead sandboxes; returns the directory names."""
        removed: list[str] = []
        dead_cgroups: list[str] = []
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.state_root):
                if not entry.is_dir(follow_symlinks=False):
                    continue
                lock = os.path.join(entry.path, "lock")
                try:
                    fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    fd = None  # cut short between mkdir and lock: old enough means dead
                    if time.time() - entry.stat(follow_symlinks=False).st_mtime < 60:
                        continue
                if fd is not None:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # a live sandbox
                    finally:
                        os.close(fd)
                dead_cgroups += _read_names(os.path.join(entry.path, _CGROUPS))
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(entry.name)
        self._sweep_cgroups(dead_cgroups)
        return removed

    def _sweep_cgroups(self, names: list[str]) -> None:
        """Remove dead sandboxes' cgroups; those still busy (a process leaving) are tried again at a later start."""
        pending = self.state_root / _CGROUPS_PENDING
        names += _read_names(pending)
        if not names:
            return
        from .cgroups import remove_stale

        left = []
        for name in dict.fromkeys(names):
            try:
                if not remove_stale(name):
                    left.append(name)
            except (OSError, ValueError):
                continue
        if left:
            temporary = pending.with_name(f"{pending.name}.{os.urandom(4).hex()}")
            temporary.write_text("".join(f"{name}\n" for name in left))
            os.replace(temporary, pending)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(pending)

    # ---- one run ---------------------------------------------------------

    def run(
        self,
        request: ExecRequest,
        *,
        on_output: Callable[[int, bytes], None] | None = None,
        on_pty: Callable[[int], None] | None = None,
        forward_signals: tuple[int, ...] = (),
    ) -> ExecResult:
        """Run `request`; `forward_signals` are relayed to the command while it runs (`pybuild run` does).

        With `request.tty`, the container opens a pseudo-terminal of its own
        /dev/pts as its standard input, output and error, and `on_pty` gets
        the master side (an fd it then owns) to relay.
        """
        if not request.argv:
            raise SandboxError("nothing to run: the command is empty")
        if self._lock is None:
            raise SandboxError("sandbox: closed")
        hostname = request.hostname or "pybuild"
        if len(hostname.encode()) > _HOST_NAME_MAX or "/" in hostname or "\0" in hostname:
            raise SandboxError(f"hostname {hostname!r}: not a valid host name (at most {_HOST_NAME_MAX} bytes)")
        cgroup = None
        warnings = list(self.warnings)
        try:
            if request.limits is not None and not request.limits.empty():
                from .cgroups import Cgroup

                name = f"pybuild-{os.urandom(6).hex()}"
                with open(self._dir / _CGROUPS, "a") as names:  # for the sweep, should this process die
                    names.write(name + "\n")
                cgroup = Cgroup.create(name, request.limits)
                warnings.extend(cgroup.warnings)
            joins = cgroup.join_fds() if cgroup else ()
            etc = _etc_files(hostname, request.network)
            rootfs = with_stub_layer(request.rootfs, str(self._dir / "stubs"), self._stub_layers)
            if rootfs != request.rootfs:
                request = dataclasses.replace(request, rootfs=rootfs)
            container = _Container(request, str(self._dir), etc, joins, self.rootless)
            container.creds = self._credentials(request)
            return self._run(container, cgroup, on_output, on_pty, forward_signals, warnings)
        finally:
            if cgroup is not None:
                cgroup.destroy()

    def _run(
        self,
        container: _Container,
        cgroup: Cgroup | None,
        on_output: Callable[[int, bytes], None] | None,
        on_pty: Callable[[int], None] | None,
        forward_signals: tuple[int, ...],
        warnings: list[str],
    ) -> ExecResult:
        request = container.request
        report_r, report_w = os.pipe2(os.O_CLOEXEC)
        pty_socket = None
        if request.tty:  # the container sends its pty's master side over a socket
            import socket

            pty_socket, container.pty_socket = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pipes: dict[int, int] = {}  # read end -> 1 or 2
        child_ends = []
        stdio = [request.stdin, request.stdout, request.stderr]
        if stdio[0] is None:
            stdio[0] = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            child_ends.append(stdio[0])
        for index in (1, 2):
            if stdio[index] is None:
                r, w = os.pipe2(os.O_CLOEXEC)
                pipes[r] = index
                stdio[index] = w
                child_ends.append(w)
        container.stdio = tuple(stdio)  # type: ignore[assignment]
        started = time.monotonic()
        forward = _SignalForwarder(forward_signals)
        life_r = life_w = -1  # PID 1 sees EOF on life_r once the parent is gone
        try:
            warm = self._take_warm(request.network)
            if warm is not None and warm.hand_over(container, report_w):
                pid, life_w = warm.pid, warm.life_w
            else:
                life_r, life_w = os.pipe2(os.O_CLOEXEC)
                pid = self._fork(container, report_w, life_r, life_w)
        except BaseException:
            forward.restore()
            for fd in (report_r, report_w, life_r, life_w, *pipes, *child_ends):
                if fd >= 0:
                    os.close(fd)
            raise
        finally:
            if cgroup is not None:
                cgroup.close_fds()
        for fd in (report_w, life_r, *child_ends):
            if fd >= 0:
                os.close(fd)
        if container.pty_socket is not None:
            container.pty_socket.close()
        self._prefork(request.network)  # the next run's PID 1, while this one runs
        try:
            status, rusage, timed_out, report = _supervise(
                pid, report_r, pipes, on_output, pty_socket, on_pty, request.timeout, started, forward,
                None if self.rootless else self._releaser.hold,
            )
        finally:
            self._releaser.release()
            if pty_socket is not None:
                pty_socket.close()
            os.close(life_w)
            for fd in pipes:
                os.close(fd)
            os.close(report_r)
        duration = time.monotonic() - started
        stubs, error, exec_error = _parse_report(report)
        remove_stubs(request.rootfs, stubs)
        if error is not None:
            raise SandboxError(error)
        oom = cgroup.oom_killed() if cgroup is not None else False
        stats = cgroup.stats() if cgroup is not None else None
        cpu = rusage.ru_utime + rusage.ru_stime
        max_rss = rusage.ru_maxrss * 1024
        if stats is not None:
            cpu = stats.cpu_usage_ns / 1e9 if stats.cpu_usage_ns is not None else cpu
            max_rss = stats.memory_peak if stats.memory_peak is not None else max_rss
        signo = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        code = 128 + signo if signo is not None else os.waitstatus_to_exitcode(status)
        return ExecResult(
            status=code,
            signal=signo,
            oom_killed=oom and (signo == signal.SIGKILL or code != 0),  # PID 1, or a process it waited for
            timed_out=timed_out,
            duration=duration,
            cpu_time=cpu,
            max_rss=max_rss,
            memory_limit=request.limits.memory if request.limits is not None else None,
            timeout=request.timeout,
            warnings=tuple(warnings),
            error=exec_error,
        )

    def _credentials(self, request: ExecRequest) -> Credentials | None:
        """USER resolved from /etc/passwd and /etc/group as the root's layers have them, before the fork
        (the PID 1 forked ahead then has less to do); None leaves it to PID 1, inside the root."""
        (mount,) = request.rootfs if len(request.rootfs) == 1 else (None,)
        upper = mount.option("upperdir") if mount is not None and mount.type == "overlay" else None
        if mount is not None and upper is not None and not os.path.lexists(os.path.join(upper, "etc")):
            # /etc as the lower directories (committed snapshots, unchanging) have it: resolved once
            lowerdir = mount.option("lowerdir") or ""
            key = (lowerdir, request.user)
            if key not in self._lower_credentials:
                self._lower_credentials[key] = self._resolve(lowerdir.split(":"), request.user)
            return self._lower_credentials[key]
        return self._resolve(_layers(request.rootfs), request.user)

    def _resolve(self, layers: list[str] | None, user: str) -> Credentials | None:
        etc = merged_entry(layers, "etc") if layers else None
        if etc is None or not stat.S_ISDIR(etc[1].st_mode):
            return None
        texts = []
        for name in ("etc/passwd", "etc/group"):
            found = merged_entry(layers, name)
            if found is None:
                texts.append("")
                continue
            path, st = found
            if not stat.S_ISREG(st.st_mode):
                return None  # a link: followed inside the root only
            key = (path, st.st_ino, st.st_mtime_ns, st.st_size)
            text = self._etc_texts.get(key)
            if text is None:
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                except OSError:
                    return None
                with os.fdopen(fd, "rb") as f:
                    text = self._etc_texts[key] = f.read(4 << 20).decode("utf-8", "replace")
            texts.append(text)
        try:
            return resolve_user(user, *texts)
        except UserError:
            return None  # PID 1 says so, as it would have

    def _take_warm(self, network: str) -> _Warm | None:
        with self._warm_lock:
            warm, self._warm = self._warm, None
        if warm is not None and warm.network != network:
            warm.discard()
            return None
        return warm

    def _prefork(self, network: str) -> None:
        # Only from the main thread: PR_SET_PDEATHSIG fires when the forking *thread* ends,
        # and a waiting PID 1 must outlive the run that forked it.
        if not self._prefork_wanted or self._lock is None or threading.current_thread() is not threading.main_thread():
            return
        with self._warm_lock:
            if self._warm is None:
                assert self._pidns is not None
                self._warm = _Warm.fork(network, self._pidns, str(self._dir))

    def _fork(self, container: _Container, report_w: int, life_r: int, life_w: int) -> int:
        if self.rootless:
            return _fork_rootless(container, report_w, life_r, life_w)
        assert self._pidns is not None
        linux.unshare(linux.CLONE_NEWPID)
        try:
            pid = os.fork()
        except BaseException:
            linux.setns(self._pidns, linux.CLONE_NEWPID)
            raise
        if pid == 0:
            container.start(report_w, life_r, life_w, namespaces=_NAMESPACES)
        linux.setns(self._pidns, linux.CLONE_NEWPID)
        return pid


_NAMESPACES = linux.CLONE_NEWNS | linux.CLONE_NEWUTS | linux.CLONE_NEWIPC | linux.CLONE_NEWCGROUP


def _fork_rootless(container: _Container, report_w: int, life_r: int, life_w: int) -> int:
    """Unprivileged: a first child makes the user namespace, gets its ids mapped, then forks PID 1."""
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    mapped_r, mapped_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(ready_r)
            os.close(mapped_w)
            linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
            linux.unshare(linux.CLONE_NEWUSER)
            os.write(ready_w, b"u")
            if os.read(mapped_r, 1) != b"m":
                os._exit(1)
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)
            linux.unshare(linux.CLONE_NEWPID)
            inner = os.fork()
            if inner == 0:
                container.start(report_w, life_r, life_w, namespaces=_NAMESPACES)
            for fd in container.stdio:
                with contextlib.suppress(OSError):
                    os.close(fd)
            _, status = os.waitpid(inner, 0)
            if os.WIFSIGNALED(status):
                signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
                os.kill(os.getpid(), os.WTERMSIG(status))
            code = os.waitstatus_to_exitcode(status)
        except BaseException as exc:  # noqa: BLE001 - report and leave, whatever it was
            with contextlib.suppress(OSError):
                os.write(report_w, b"error\0" + f"user namespace: {exc}".encode() + b"\n")
        os._exit(code)
    os.close(ready_w)
    os.close(mapped_r)
    try:
        if os.read(ready_r, 1) != b"u":
            raise SandboxError("user namespace: the sandbox process died before its ids were mapped")
        _map_ids(pid)
        os.write(mapped_w, b"m")
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    finally:
        os.close(ready_r)
        os.close(mapped_w)
    return pid


def _map_ids(pid: int) -> None:
    """Map root in the user namespace of `pid` to the caller, and a subordinate range beside it when allowed."""
    uid, gid = os.getuid(), os.getgid()
    subuid, subgid = _subordinate("/etc/subuid", uid), _subordinate("/etc/subgid", uid)  # both by user
    if subuid and subgid and shutil.which("newuidmap") and shutil.which("newgidmap"):
        import subprocess

        for tool, own, (start, count) in (("newuidmap", uid, subuid), ("newgidmap", gid, subgid)):
            result = subprocess.run([tool, str(pid), "0", str(own), "1", "1", str(start), str(count)],
                                    capture_output=True, text=True, check=False)  # fmt: skip
            if result.returncode != 0:
                raise SandboxError(f"{tool}: {result.stderr.strip() or f'exit status {result.returncode}'}")
        return
    with open(f"/proc/{pid}/uid_map", "w") as f:
        f.write(f"0 {uid} 1\n")
    with open(f"/proc/{pid}/setgroups", "w") as f:
        f.write("deny\n")
    with open(f"/proc/{pid}/gid_map", "w") as f:
        f.write(f"0 {gid} 1\n")


def _subordinate(path: str, own: int) -> tuple[int, int] | None:
    """The first range of `path` (/etc/subuid or /etc/subgid, both keyed by user) for user id `own`."""
    try:
        import pwd

        name = pwd.getpwuid(own).pw_name
    except (KeyError, ImportError):
        name = None
    try:
        with open(path) as f:
            for line in f:
                fields = line.strip().split(":")
                if len(fields) == 3 and fields[0] in (name, str(own)) and fields[2].isdigit() and int(fields[2]) > 0:
                    return int(fields[1]), int(fields[2])
    except (OSError, ValueError):
        pass
    return None


def subordinate_ids_available() -> bool:
    """Whether this user gets a full id range (else a single id: files the command chowns keep the caller's)."""
    return bool(_subordinate("/etc/subuid", os.getuid()) and _subordinate("/etc/subgid", os.getuid()))


def _read_names(path: str | Path) -> list[str]:
    try:
        with open(path) as f:
            return f.read().split()
    except FileNotFoundError:
        return []


def _etc_files(hostname: str, network: str) -> tuple[bytes, bytes, bytes]:
    """The container's /etc/hosts, /etc/hostname and /etc/resolv.conf."""
    if network == "host":
        hosts = _read_host("/etc/hosts") or b"127.0.0.1\tlocalhost\n"
        resolv = _read_host("/etc/resolv.conf")
    else:
        hosts = b"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        resolv = b""
    hosts += f"127.0.1.1\t{hostname}\n".encode()
    return hosts, hostname.encode() + b"\n", resolv


def _read_host(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(1 << 20)
    except OSError:
        return b""


class _Warm:
    """A PID 1 forked ahead of its run (as root): namespaces made but the cgroup one, waiting for the rest.

    Forking and making namespaces are the dearest part of a run; a sandbox
    that runs many commands does them for the next run while the current
    one runs. The run hands over what it is (pickled) and its descriptors
    (stdio, report pipe, cgroup join fds) on a socket; a sandbox closed
    with one waiting discards it. It is single-use, and forked for one
    network mode: a run wanting the other gets a fresh fork.
    """

    def __init__(self, pid: int, control: socket.socket, life_w: int, network: str) -> None:
        self.pid, self.control, self.life_w, self.network = pid, control, life_w, network

    @classmethod
    def fork(cls, network: str, pidns: int, where: str) -> _Warm:
        import pickle  # noqa: F401 - imported here so that the child finds it loaded
        import socket

        control, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        life_r, life_w = os.pipe2(os.O_CLOEXEC)
        linux.unshare(linux.CLONE_NEWPID)
        try:
            pid = os.fork()
        except BaseException:
            linux.setns(pidns, linux.CLONE_NEWPID)
            for fd in (life_r, life_w):
                os.close(fd)
            control.close()
            child.close()
            raise
        if pid == 0:
            _warm_child(child.fileno(), life_r, life_w, network, where)
        linux.setns(pidns, linux.CLONE_NEWPID)
        child.close()
        os.close(life_r)
        return cls(pid, control, life_w, network)

    def hand_over(self, container: _Container, report_w: int) -> bool:
        """Send the run to the waiting PID 1; False (and discarded) when it is gone."""
        import pickle
        import socket

        fds = [report_w, *container.stdio, *container.cgroup_fds]
        if container.pty_socket is not None:
            fds.append(container.pty_socket.fileno())
        spec = (container.request, container.creds, container.etc, len(container.cgroup_fds), len(fds))
        try:
            socket.send_fds(self.control, [pickle.dumps(spec)], fds)
        except OSError:
            self.discard()
            return False
        self.control.close()
        return True

    def discard(self) -> None:
        self.control.close()  # it sees the end of the socket, and leaves
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
        os.close(self.life_w)


def _warm_child(control: int, life_r: int, life_w: int, network: str, where: str) -> NoReturn:
    gc.disable()  # a collection would write to every object: copy-on-write of the whole heap, for nothing
    report_w = -1
    try:
        os.close(life_w)
        linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
        if select.select([life_r], [], [], 0)[0]:
            os._exit(1)  # the parent died before PDEATHSIG was set
        _close_all_but({control, life_r})
        linux.unshare(_NAMESPACES & ~linux.CLONE_NEWCGROUP | (linux.CLONE_NEWNET if network == "none" else 0))
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
        container = _Container(request, where, etc, tuple(fds[4 : 4 + cgroups]), rootless=False)
        container.creds = creds
        container.stdio = (fds[1], fds[2], fds[3])
        if count > 4 + cgroups:
            container.pty_socket = socket.socket(fileno=fds[4 + cgroups])
        container.resume(report_w, life_r)
    except BaseException as exc:  # noqa: BLE001 - nothing may escape a forked child
        if report_w >= 0:
            _report(report_w, _describe(exc))
    os._exit(127)


class _Container:
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
        _mount_rootfs(request.rootfs, self.root)
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
        if _SECCOMP is not None:  # last: it refuses some of what the set-up above needed
            linux.seccomp_filter(_SECCOMP)
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


_TIOCSCTTY = 0x540E
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1


class _ExecFailed(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _default_signals() -> None:
    """Every signal to its default action and none blocked: the command must not inherit that Python
    ignores SIGPIPE, nor what the builder's caller ignored (nohup, a background job) or blocked."""
    with open("/proc/self/status", "rb") as f:  # the container's /proc: PID 1's own, the kernel's view
        ignored = int(next(line for line in f if line.startswith(b"SigIgn:")).split()[1], 16)
    signo = 1
    while ignored:  # exec resets handled signals, not ignored ones
        if ignored & 1:
            signal.signal(signo, signal.SIG_DFL)
        ignored >>= 1
        signo += 1
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


def _mount_rootfs(mounts: tuple[Mount, ...], target: str) -> None:
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


def _layers(rootfs: tuple[Mount, ...]) -> list[str] | None:
    """The directories whose merged view the root is, top first; None when it is not a single mount."""
    if len(rootfs) != 1:
        return None
    (mount,) = rootfs
    if mount.type == "bind":
        return [mount.source]
    if mount.type != "overlay":
        return None
    upper = mount.option("upperdir")
    return [*([upper] if upper else []), *(mount.option("lowerdir") or "").split(":")]


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


def _parse_report(report: bytes) -> tuple[list[str], str | None, str | None]:
    """(mount stubs made, a set-up error, an exec error) from PID 1's report."""
    stubs: list[str] = []
    error = exec_error = None
    for line in report.split(b"\n"):
        kind, _, rest = line.partition(b"\0")
        if kind == b"stubs" and rest:
            stubs = rest.decode().split("\0")
        elif kind == b"error":
            error = rest.decode("utf-8", "replace")
        elif kind == b"exec":
            exec_error = rest.decode("utf-8", "replace")
    return stubs, error, exec_error


def _supervise(
    pid: int,
    report_r: int,
    pipes: dict[int, int],
    on_output: Callable[[int, bytes], None] | None,
    pty_socket: socket.socket | None,
    on_pty: Callable[[int], None] | None,
    timeout: float | None,
    started: float,
    forward: _SignalForwarder,
    hold: Callable[[int], None] | None = None,
) -> tuple[int, os.struct_rusage, bool, bytes]:
    """Relay output and wait for PID 1; kill it when the timeout runs out. (status, rusage, timed out, report).

    `hold`, when given, gets an fd of PID 1's mount namespace as soon as its set-up is reported done.
    """
    pidfd = os.pidfd_open(pid)
    poller = select.poll()
    for fd in (pidfd, report_r, *pipes):
        poller.register(fd, select.POLLIN)
    if pty_socket is not None:
        poller.register(pty_socket.fileno(), select.POLLIN)
    report = bytearray()
    open_fds = {report_r, *pipes}
    timed_out = exited = False
    deadline = started + timeout if timeout is not None else None
    forward.attach(pidfd)
    try:
        while open_fds or not exited:
            wait = None
            if deadline is not None and not timed_out:
                wait = max(0, int((deadline - time.monotonic()) * 1000) + 1)
            events = poller.poll(wait)
            if deadline is not None and not timed_out and time.monotonic() >= deadline:
                timed_out = True
                _kill(pidfd)
            for fd, _ in events:
                if fd == pidfd:
                    exited = True
                    poller.unregister(pidfd)
                    continue
                if pty_socket is not None and fd == pty_socket.fileno():
                    _receive_pty(pty_socket, on_pty)
                    poller.unregister(fd)
                    continue
                data = os.read(fd, 65536)
                if not data:
                    poller.unregister(fd)
                    open_fds.discard(fd)
                elif fd == report_r:
                    if hold is not None and not report and data.startswith(b"stubs"):
                        with contextlib.suppress(OSError):  # it may be gone already
                            hold(os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC))
                    report += data
                elif on_output is not None:
                    on_output(pipes[fd], data)
    except BaseException:
        _kill(pidfd)  # Ctrl-C, or a callback that raised: the container goes too
        raise
    finally:
        forward.restore()
        try:
            _, status, rusage = os.wait4(pid, 0)
        finally:
            os.close(pidfd)
    return status, rusage, timed_out, bytes(report)


def _receive_pty(sock: socket.socket, on_pty: Callable[[int], None] | None) -> None:
    import socket

    _, fds, _, _ = socket.recv_fds(sock, 16, 1)
    for fd in fds:
        if on_pty is not None:
            on_pty(fd)
        else:
            os.close(fd)


def _kill(pidfd: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)


class _Releaser:
    """Drops the last reference to finished containers' mount namespaces in a thread of its own.

    When PID 1 exits the kernel tears its mount namespace down (the overlay
    root, /proc, /sys, /dev...) before it reports the exit. Holding an fd of
    that namespace while the container runs, and closing it once the run has
    returned, moves that work off the run's clock. No process is left to use
    those mounts, and the upper directory has no writer.
    """

    def __init__(self) -> None:
        self._held: list[int] = []  # of running containers
        self._done: list[int] = []  # of finished ones: to close
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def hold(self, fd: int) -> None:
        with self._wake:
            self._held.append(fd)

    def release(self) -> None:
        """The held namespaces' containers have ended: close their fds in the background."""
        with self._wake:
            if not self._held:
                return
            self._done += self._held
            self._held = []
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="pybuild-ns-release", daemon=True)
                self._thread.start()
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._done:
                    self._wake.wait()
                fds, self._done = self._done, []
            for fd in fds:
                os.close(fd)

    def drain(self) -> None:
        """Close everything now (the sandbox is closing)."""
        with self._wake:
            fds, self._held, self._done = self._held + self._done, [], []
        for fd in fds:
            os.close(fd)


class _SignalForwarder:
    """While a container runs (in the main thread), the given signals go to its PID 1 instead of to us.

    Installed before the fork, so that none falls between the fork and the
    wait: a signal that comes before `attach` is passed on then. PID 1
    ignores the signals it has no handler for, so a third SIGINT kills the
    container, as a third Ctrl-C stops `docker run`.
    """

    def __init__(self, signals: tuple[int, ...]) -> None:
        self._saved: dict[int, object] = {}
        self._pidfd: int | None = None
        self._pending: list[int] = []
        self._interrupts = 0
        if signals and threading.current_thread() is threading.main_thread():
            for signo in signals:
                self._saved[signo] = signal.signal(signo, self._forward)

    def attach(self, pidfd: int) -> None:
        self._pidfd = pidfd
        while self._pending:
            self._forward(self._pending.pop(0), None)

    def _forward(self, signo: int, frame: object) -> None:
        if self._pidfd is None:
            self._pending.append(signo)
            return
        self._interrupts += signo == signal.SIGINT
        with contextlib.suppress(ProcessLookupError, OSError):
            signal.pidfd_send_signal(self._pidfd, signal.SIGKILL if self._interrupts >= 3 else signo)

    def restore(self) -> None:
        for signo, handler in self._saved.items():
            signal.signal(signo, handler)  # type: ignore[arg-type]
        self._saved.clear()
