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
   (`_Warm`, builder._pid1); the run hands it the rest on a socket. Unprivileged,
   a first child makes a user namespace, the parent maps ids into it
   (newuidmap/newgidmap over /etc/subuid, else the caller's single id), and
   that child forks PID 1 into the other new namespaces.
3. PID 1 (`Container.start`, Python until exec; builder._pid1) closes the
   builder's descriptors, joins the cgroup, makes the mount, UTS, IPC,
   cgroup (and network) namespaces, stages what every container gets (/proc
   masked, /sys, /dev, the loopback) on a tmpfs of its own, mounts the root
   and moves the staged mounts under it, pivot_roots, binds its /etc files
   and the volumes, becomes the user with Docker's capabilities, sets
   no_new_privs and the seccomp filter, and execs the command. Set-up
   errors, and the mount points it had to create, reach the parent through
   a close-on-exec pipe.
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

import contextlib
import fcntl
import os
import select
import shutil
import signal
import stat
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from store.overlay import merged_entry

from . import _linux as linux
from ._pid1 import NAMESPACES, SECCOMP, Container, warm_child
from .errors import SandboxError, with_environment_hint
from .mountpoints import remove_stubs, with_stub_layer
from .sandbox import ExecRequest, ExecResult
from .users import Credentials, UserError, resolve_user

if TYPE_CHECKING:
    import socket
    from collections.abc import Callable

    from store.snapshots import Mount

    from .cgroups import Cgroup

__all__ = ["NamespaceSandbox", "default_state_root"]

_HOST_NAME_MAX = 64
_CGROUPS = "cgroups"  # in a sandbox's directory: the names of the cgroups it made
_CGROUPS_PENDING = ".cgroups-pending"  # in the state root: dead sandboxes' cgroups still to remove


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
        """`prefork`: fork each run's PID 1 ahead, once the run before it has ended (see `_Forker`); worth it
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
        self._forker = _Forker(self._pidns, str(self._dir)) if prefork and self._pidns is not None else None
        self._releaser = _Releaser()
        self._stub_layers: dict[str, str | None] = {}  # lowerdir -> its stub layer
        self._etc_texts: dict[tuple[str, int, int, int], str] = {}  # the image's passwd and group, read once
        self._lower_credentials: dict[tuple[str, str], Credentials | None] = {}  # (lowerdir, USER) ->
        self._running_lock = threading.Lock()
        self._running: set[int] = set()  # pidfds of the PID 1s of runs in progress, for cancel()
        self.warnings: tuple[str, ...] = ()
        if SECCOMP is None:
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
        if self._forker is not None:
            self._forker.close()
        if self._pidns is not None:
            os.close(self._pidns)
            self._pidns = None
        if self._lock is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            os.close(self._lock)
            self._lock = None

    def cancel(self) -> None:
        """Kill the containers of the runs in progress (from any thread): their runs return, killed."""
        with self._running_lock:
            for pidfd in self._running:
                _kill(pidfd)

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
                request = request._replace(rootfs=rootfs)
            container = Container(request, str(self._dir), etc, joins, self.rootless)
            container.creds = self._credentials(request)
            return self._run(container, cgroup, on_output, on_pty, forward_signals, warnings)
        finally:
            if cgroup is not None:
                cgroup.destroy()

    def _run(
        self,
        container: Container,
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
            warm = self._forker.take(request.network) if self._forker is not None else None
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
        running = os.pidfd_open(pid)
        with self._running_lock:
            self._running.add(running)
        if container.pty_socket is not None:
            container.pty_socket.close()
        try:
            status, rusage, timed_out, report = _supervise(
                pid, report_r, pipes, on_output, pty_socket, on_pty, request.timeout, started, forward,
                None if self.rootless else self._releaser.hold,
            )
        finally:
            with self._running_lock:
                self._running.discard(running)
            os.close(running)
            self._releaser.release()
            if pty_socket is not None:
                pty_socket.close()
            os.close(life_w)
            for fd in pipes:
                os.close(fd)
            os.close(report_r)
        duration = time.monotonic() - started
        if self._forker is not None:
            self._forker.request(request.network)  # the next run's PID 1, made while the caller goes on
        stubs, error, exec_error = _parse_report(report)
        remove_stubs(request.rootfs, stubs)
        if error is not None:
            raise SandboxError(with_environment_hint(error))
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

    def _fork(self, container: Container, report_w: int, life_r: int, life_w: int) -> int:
        if self.rootless:
            return _fork_rootless(container, report_w, life_r, life_w)
        assert self._pidns is not None
        linux.unshare(linux.CLONE_NEWPID)
        try:
            pid = linux.fork_ignoring_terminal_signals()
        except BaseException:
            linux.setns(self._pidns, linux.CLONE_NEWPID)
            raise
        if pid == 0:
            container.start(report_w, life_r, life_w, namespaces=NAMESPACES)
        linux.setns(self._pidns, linux.CLONE_NEWPID)
        return pid


def _fork_rootless(container: Container, report_w: int, life_r: int, life_w: int) -> int:
    """Unprivileged: a first child makes the user namespace, gets its ids mapped, then forks PID 1."""
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    mapped_r, mapped_w = os.pipe2(os.O_CLOEXEC)
    pid = linux.fork_ignoring_terminal_signals()
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
            inner = linux.fork_ignoring_terminal_signals()
            if inner == 0:
                container.start(report_w, life_r, life_w, namespaces=NAMESPACES)
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
    that runs many commands does them for the next run once the current one
    has ended (`_Forker`). The run hands over what it is (pickled) and its descriptors
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
            pid = linux.fork_ignoring_terminal_signals()
        except BaseException:
            linux.setns(pidns, linux.CLONE_NEWPID)
            for fd in (life_r, life_w):
                os.close(fd)
            control.close()
            child.close()
            raise
        if pid == 0:
            warm_child(child.fileno(), life_r, life_w, network, where)
        linux.setns(pidns, linux.CLONE_NEWPID)
        child.close()
        os.close(life_r)
        return cls(pid, control, life_w, network)

    def hand_over(self, container: Container, report_w: int) -> bool:
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


class _Forker:
    """Forks the next run's PID 1 (a `_Warm`) in a thread of its own, once the run before it has ended.

    The fork (a millisecond or more for a Python process) and the new PID 1's
    set-up then happen while the caller goes on (commits the step's layer,
    checks out the next root), off the next run's clock and without taking
    the CPU from a running command. The thread lives as long as the sandbox:
    a PID 1's PR_SET_PDEATHSIG fires when the thread that forked it ends.
    """

    def __init__(self, pidns: int, where: str) -> None:
        self._pidns, self._where = pidns, where
        self._wake = threading.Condition()
        self._wanted: str | None = None  # the network mode of the PID 1 to fork next
        self._warm: _Warm | None = None
        self._closed = False
        self._thread: threading.Thread | None = None

    def request(self, network: str) -> None:
        with self._wake:
            if self._closed or self._warm is not None or self._wanted is not None:
                return
            self._wanted = network
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="pybuild-prefork", daemon=True)
                self._thread.start()
            self._wake.notify_all()

    def take(self, network: str) -> _Warm | None:
        """The PID 1 forked ahead (waiting for its fork to finish), or None: the run forks its own."""
        with self._wake:
            while self._wanted is not None and not self._closed:
                self._wake.wait()
            warm, self._warm = self._warm, None
        if warm is not None and warm.network != network:
            warm.discard()
            return None
        return warm

    def _run(self) -> None:
        while True:
            with self._wake:
                while self._wanted is None and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                network = self._wanted
            try:
                warm: _Warm | None = _Warm.fork(network, self._pidns, self._where)
            except Exception:  # noqa: BLE001 -- the next run forks its own, and reports what fails
                warm = None  # (and a run waiting in take() must not wait for ever)
            with self._wake:
                self._warm, self._wanted = warm, None
                self._wake.notify_all()

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join()
        if self._warm is not None:
            self._warm.discard()
            self._warm = None


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
