"""NamespaceSandbox on real namespaces, OverlayFS mounts and cgroups: isolation, results, limits, clean-up.

Every test runs busybox commands in containers checked out of one store
(tests/builder/conftest.py) and looks at the host as it is afterwards: the
mount table (compared before and after every test), `pybuild-*` cgroups
(none may remain), the checkout's upper directory and the lower snapshot.
Needs root; skips without it.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from builder.cgroups import Limits, sweep_stale
from builder.errors import SandboxError
from builder.namespace_sandbox import NamespaceSandbox
from builder.sandbox import DEFAULT_PATH, Bind, ExecRequest, ExecResult
from store.images import Store
from tests.builder.conftest import (
    NEEDS_ROOT,
    cgroups_left,
    children,
    committed_snapshot_dirs,
    mountinfo,
    processes_with,
    pybuild_cgroups,
    snapshot_dirs,
    tree,
)
from tests.support import REPO

pytestmark = NEEDS_ROOT

MiB = 1 << 20
DOCKER_DEFAULT_CAPS = 0x00000000A80425FB


@dataclass
class Ran:
    """One finished run: its result, its output, and what its upper directory held before removal."""

    result: ExecResult
    chunks: list[tuple[float, int, bytes]] = field(default_factory=list)  # (monotonic time, fd, data)
    upper: dict[str, tuple[object, ...]] = field(default_factory=dict)
    returned: float = 0.0  # monotonic time run() returned

    @property
    def out(self) -> str:
        return b"".join(d for _, fd, d in self.chunks if fd == 1).decode()

    @property
    def err(self) -> str:
        return b"".join(d for _, fd, d in self.chunks if fd == 2).decode()


Runner = Callable[..., Ran]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NamespaceSandbox]:
    state = tmp_path_factory.mktemp("sandbox-state")
    with NamespaceSandbox(state_root=state) as sandbox:
        yield sandbox
    assert sandbox_dirs(state) == [], "close() left state behind"


@pytest.fixture(autouse=True)
def host_unchanged(store: Store) -> Iterator[None]:
    """Every test: the same host mount table after it, no pybuild-* cgroup and no checkout left."""
    before, cgroups = mountinfo(), pybuild_cgroups()
    assert snapshot_dirs(store) == committed_snapshot_dirs(store)
    yield
    assert mountinfo() == before
    assert cgroups_left(cgroups) == []
    assert snapshot_dirs(store) == committed_snapshot_dirs(store), "a checkout was left in the store"


@pytest.fixture
def run(store: Store, sandbox: NamespaceSandbox) -> Runner:
    """run(argv, image="busybox", **ExecRequest fields) -> Ran, on a fresh checkout removed afterwards."""

    def run(argv: tuple[str, ...] | list[str], image: str = "busybox", **fields: object) -> Ran:
        checkout = store.checkout(image)
        try:
            ran = Ran(ExecResult(-1))

            def on_output(fd: int, data: bytes) -> None:
                ran.chunks.append((time.monotonic(), fd, data))

            request = ExecRequest(argv=tuple(argv), rootfs=checkout.mounts, **fields)  # type: ignore[arg-type]
            ran.result = sandbox.run(request, on_output=on_output)
            ran.returned = time.monotonic()
            ran.upper = tree(checkout.upper_dir)
            return ran
        finally:
            checkout.remove()

    return run


def sh(script: str) -> tuple[str, ...]:
    return ("sh", "-c", script)


# ---------------------------------------------------------------------------- namespaces


def test_the_command_is_pid_1_and_alone(run: Runner) -> None:
    ran = run(sh("ps; exit 0"))
    assert ran.result.status == 0, ran.err
    rows = [line.split(None, 2) for line in ran.out.splitlines()[1:]]  # PID, USER, COMMAND
    assert rows[0][0] == "1" and rows[0][2] == "sh -c ps; exit 0", ran.out
    assert len(rows) == 2 and "ps" in rows[1][2], f"processes other than PID 1 and ps:\n{ran.out}"
    alone = run(("ps",))
    assert [line.split()[0] for line in alone.out.splitlines()[1:]] == ["1"]


def test_hostname_and_etc_files(run: Runner) -> None:
    ran = run(sh("hostname; cat /etc/hostname; cat /etc/hosts; echo HOSTNAME=$HOSTNAME"), hostname="box-42")
    assert ran.result.status == 0, ran.err
    lines = ran.out.splitlines()
    assert lines[:2] == ["box-42", "box-42"]
    assert re.search(r"^127\.0\.1\.1\s+box-42$", ran.out, re.MULTILINE), ran.out
    assert re.search(r"^127\.0\.0\.1\s+localhost", ran.out, re.MULTILINE), ran.out
    assert "HOSTNAME=box-42" in lines
    assert socket.gethostname() != "box-42"


def test_network_none_has_only_loopback_and_it_is_up(run: Runner) -> None:
    ran = run(sh("cat /proc/net/dev; echo flags=$(cat /sys/class/net/lo/flags); echo --; "
                 "if command -v ip >/dev/null; then ip link show lo; fi"), network="none")  # fmt: skip
    assert ran.result.status == 0, ran.err
    assert _interfaces(ran.out.partition("flags=")[0]) == ["lo"]
    flags = int(re.search(r"^flags=(0x[0-9a-f]+)$", ran.out, re.MULTILINE).group(1), 16)  # type: ignore[union-attr]
    assert flags & 0x1, "lo is not up"
    if "LOOPBACK" in ran.out:  # busybox has the ip applet
        assert re.search(r"lo: <[^>]*\bUP\b", ran.out), ran.out


def test_network_host_sees_the_hosts_interfaces(run: Runner) -> None:
    with open("/proc/net/dev") as f:
        host = _interfaces(f.read())
    ran = run(("cat", "/proc/net/dev"), network="host")
    assert ran.result.status == 0, ran.err
    assert sorted(_interfaces(ran.out)) == sorted(host)


def _interfaces(proc_net_dev: str) -> list[str]:
    return [line.split(":")[0].strip() for line in proc_net_dev.splitlines() if ":" in line and "|" not in line]


def test_uid_map_as_root_is_the_identity(run: Runner) -> None:
    ran = run(("cat", "/proc/self/uid_map", "/proc/self/gid_map"))
    assert [line.split() for line in ran.out.splitlines()] == [["0", "0", "4294967295"]] * 2


# ---------------------------------------------------------------------------- the root filesystem


def test_writes_land_in_the_upper_directory_only(store: Store, sandbox: NamespaceSandbox) -> None:
    checkout = store.checkout("busybox")
    try:
        lower = store.snapshots.upper_dir(checkout.parent)  # type: ignore[arg-type]
        before = tree(lower, times=True)
        script = "echo data > /newfile; mkdir -p /usr/local/thing; echo x > /usr/local/thing/f; rm /bin/vi; " \
                 "chmod 700 /tmp; echo more >> /etc/passwd"  # fmt: skip
        result = sandbox.run(ExecRequest(argv=sh(script), rootfs=checkout.mounts))
        assert result.status == 0
        upper = tree(checkout.upper_dir)
        assert upper["newfile"][0][0] == "file"
        assert upper["usr/local/thing/f"][0][0] == "file"
        assert upper["bin/vi"][0][:2] == ("other", 0o020000), "rm leaves an OverlayFS whiteout (0:0 char device)"
        assert upper["tmp"][1] == 0o700
        assert set(upper) == {"newfile", "usr", "usr/local", "usr/local/thing", "usr/local/thing/f", "bin",
                              "bin/vi", "tmp", "etc", "etc/passwd"}  # fmt: skip
        assert tree(lower, times=True) == before, "the committed snapshot below changed"
    finally:
        checkout.remove()


def test_host_mount_table_is_untouched_during_a_run(store: Store, sandbox: NamespaceSandbox) -> None:
    before = mountinfo()
    checkout = store.checkout("busybox")
    stdin_r, stdin_w = os.pipe()
    ready = threading.Event()
    results: list[ExecResult] = []

    def on_output(fd: int, data: bytes) -> None:
        if b"ready" in data:
            ready.set()

    def target() -> None:
        request = ExecRequest(argv=sh("echo ready; read line; echo $line"), rootfs=checkout.mounts, stdin=stdin_r,
                              binds=(Bind("/tmp", "/mnt/hosttmp", readonly=True),))  # fmt: skip
        results.append(sandbox.run(request, on_output=on_output))

    thread = threading.Thread(target=target)
    thread.start()
    try:
        assert ready.wait(10), "the container never said ready"
        during = mountinfo()
        assert during == before, "a mount of the container is visible on the host"
    finally:
        os.write(stdin_w, b"bye\n")
        os.close(stdin_w)
        thread.join(10)
        os.close(stdin_r)
        checkout.remove()
    assert results and results[0].status == 0
    assert mountinfo() == before


def test_mount_stubs_are_removed_but_writes_to_etc_stay(run: Runner) -> None:
    assert run(("true",)).upper == {}, "stubs of /etc/hosts, /etc/hostname, /etc/resolv.conf remain"
    ran = run(sh("echo x > /etc/written; cat /etc/hosts >/dev/null"))
    assert set(ran.upper) == {"etc", "etc/written"}


def test_mount_stubs_in_an_image_without_etc_proc_dev_sys(run: Runner) -> None:
    ran = run(sh("ls -d /proc/1 /dev/null /sys/class /etc/hosts && cat /etc/hostname"), image="bare", hostname="bare")
    assert ran.result.status == 0, ran.err
    assert ran.out.splitlines()[-1] == "bare"
    assert ran.upper == {}, f"stubs remain in the upper directory: {sorted(ran.upper)}"
    ran = run(sh("echo x > /etc/written"), image="bare")
    assert set(ran.upper) == {"etc", "etc/written"}


def test_etc_hosts_written_by_one_container_is_not_seen_by_the_next(run: Runner) -> None:
    first = run(sh("echo '10.9.9.9 leaked' >> /etc/hosts; echo leaked > /etc/hostname"), hostname="shared")
    assert first.result.status == 0, first.err
    second = run(sh("cat /etc/hosts /etc/hostname"), hostname="shared")
    assert "leaked" not in second.out


def test_a_failed_set_up_raises_and_leaves_the_host_clean(store: Store, sandbox: NamespaceSandbox) -> None:
    checkout = store.checkout("busybox")
    try:
        with pytest.raises(SandboxError, match="No such file or directory"):
            sandbox.run(ExecRequest(argv=("true",), rootfs=checkout.mounts, binds=(Bind("/no/such/dir", "/x"),)))
        assert tree(checkout.upper_dir) == {}
    finally:
        checkout.remove()


def test_a_failed_set_up_leaves_no_stubs(store: Store, sandbox: NamespaceSandbox, tmp_path: Path) -> None:
    checkout = store.checkout("busybox")
    try:
        with pytest.raises(SandboxError, match="symbolic link"):
            sandbox.run(ExecRequest(argv=("true",), rootfs=checkout.mounts, binds=(Bind(str(tmp_path), "/bin/sh"),)))
        left = tree(checkout.upper_dir)
    finally:
        checkout.remove()
    assert left == {}, f"stubs left after a failed set-up: {sorted(left)}"


# ---------------------------------------------------------------------------- env, cwd, user


def test_default_environment(run: Runner) -> None:
    ran = run(("env",), env=("FOO=bar baz", "NOVALUE"))
    env = dict(line.partition("=")[::2] for line in ran.out.splitlines())
    assert env["PATH"] == DEFAULT_PATH
    assert env["FOO"] == "bar baz"
    assert env["HOME"] == "/root"
    assert env["HOSTNAME"] == "pybuild"
    assert "NOVALUE" not in env
    assert run(("sh", "-c", "echo $PATH"), env=("PATH=/bin",)).out == "/bin\n"


def test_user_by_name_and_by_number(run: Runner) -> None:
    by_name = run(sh("id; echo HOME=$HOME"), user="nobody")
    assert by_name.out.splitlines() == ["uid=65534(nobody) gid=65534(nobody) groups=65534(nobody)", "HOME=/nonexistent"]
    by_number = run(("id",), user="1234:5678")
    assert by_number.out.strip() == "uid=1234 gid=5678 groups=5678"
    uid_only = run(("id", "-u"), user="4321")
    assert uid_only.out.strip() == "4321"


def test_unknown_user_is_an_error_in_the_result(run: Runner) -> None:
    ran = run(("true",), user="bob")
    assert ran.result.status == 125
    assert ran.result.error is not None and "bob" in ran.result.error
    assert ran.result.describe() == ran.result.error
    group = run(("true",), user="root:nogroup")
    assert group.result.status != 0 and "nogroup" in (group.result.error or "")


def test_missing_cwd_is_created(run: Runner) -> None:
    ran = run(("pwd",), cwd="/work/deep/dir", user="nobody")
    assert ran.result.status == 0, ran.result
    assert ran.out == "/work/deep/dir\n"
    assert ran.upper["work/deep/dir"][0] == ("dir",)
    assert ran.upper["work/deep/dir"][2:] == (65534, 65534), "the working directory belongs to the user"


# ---------------------------------------------------------------------------- binds


def test_binds_read_write_and_read_only(run: Runner, tmp_path: Path) -> None:
    rw, ro = tmp_path / "rw", tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    (ro / "given").write_text("from the host\n")
    config = tmp_path / "app.conf"
    config.write_text("key=value\n")
    binds = (Bind(str(rw), "/mnt/data"), Bind(str(ro), "/srv/ro/deep", readonly=True),
             Bind(str(config), "/etc/app.conf", readonly=True))  # fmt: skip
    ran = run(sh("echo written > /mnt/data/out && cat /srv/ro/deep/given /etc/app.conf"), binds=binds)
    assert ran.result.status == 0, ran.err
    assert ran.out == "from the host\nkey=value\n"
    assert (rw / "out").read_text() == "written\n"
    assert ran.upper == {}, f"bind mount points remain in the upper directory: {sorted(ran.upper)}"

    refused = run(sh("echo nope > /srv/ro/deep/new"), binds=binds)
    assert refused.result.status != 0
    assert "Read-only file system" in refused.err
    assert sorted(os.listdir(ro)) == ["given"]


def test_read_only_bind_is_read_only_below_too(run: Runner, tmp_path: Path) -> None:
    source = tmp_path / "ro"
    (source / "sub").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "pybuild-test", str(source / "sub")], check=True)
    try:
        ran = run(sh("echo no > /ro/top; echo no > /ro/sub/below"), binds=(Bind(str(source), "/ro", readonly=True),))
        written = os.listdir(source / "sub")
    finally:
        subprocess.run(["umount", str(source / "sub")], check=True)
    assert "can't create /ro/top: Read-only file system" in ran.err
    assert written == [], "the container wrote through a read-only volume"


def test_bind_stub_under_a_symlinked_directory_is_removed(run: Runner, tmp_path: Path) -> None:
    ran = run(("ls", "/var/run/sock"), image="configured", user="0", binds=(Bind(str(tmp_path), "/var/run/sock"),))
    assert ran.result.status == 0, ran.err
    assert ran.upper == {}, f"left in the upper directory: {sorted(ran.upper)}"


def test_bind_stub_two_levels_below_an_existing_directory_is_removed(run: Runner, tmp_path: Path) -> None:
    ran = run(("ls", "/usr/bin/extra"), binds=(Bind(str(tmp_path), "/usr/bin/extra"),))
    assert ran.result.status == 0, ran.err
    assert ran.upper == {}, f"left in the upper directory: {sorted(ran.upper)}"


# ---------------------------------------------------------------------------- exec


def test_missing_command_is_127_with_an_error(run: Runner) -> None:
    ran = run(("no-such-command", "arg"))
    assert ran.result.status == 127
    assert ran.result.error is not None and "no-such-command" in ran.result.error
    not_executable = run(("/etc/passwd",))
    assert not_executable.result.status == 126
    assert "/etc/passwd" in (not_executable.result.error or "")


def test_only_stdio_is_open_in_the_container(run: Runner) -> None:
    leak = os.open("/dev/null", os.O_RDONLY)  # inheritable: a careless fork+exec would pass it on
    os.set_inheritable(leak, True)
    try:
        ran = run(sh("ls /proc/self/fd; echo --; ls -l /proc/1/fd; exit 0"))
    finally:
        os.close(leak)
    own, _, pid1 = ran.out.partition("--\n")
    assert sorted(own.split()) == ["0", "1", "2", "3"], f"ls sees more than stdio and its own directory fd:\n{ran.out}"
    fds = dict(re.findall(r" (\d+) -> (.*)$", pid1, re.MULTILINE))
    assert sorted(fds) == ["0", "1", "2"], pid1
    assert fds["0"] == "/dev/null" and fds["1"].startswith("pipe:") and fds["2"].startswith("pipe:"), pid1


def test_the_command_starts_with_default_signal_actions(run: Runner) -> None:
    # Python ignores SIGPIPE; a caller may ignore SIGINT (nohup, a background job): none of it is inherited.
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        ran = run(("grep", "-E", "^Sig(Ign|Blk)", "/proc/self/status"))  # not through sh: ash ignores SIGQUIT itself
    finally:
        signal.signal(signal.SIGINT, before)
    assert ran.out.split() == ["SigBlk:", "0000000000000000", "SigIgn:", "0000000000000000"], ran.out


def test_the_command_gets_dockers_umask(run: Runner) -> None:
    before = os.umask(0o077)
    try:
        ran = run(sh("umask"))
    finally:
        os.umask(before)
    assert ran.out.strip() == "0022"


@pytest.mark.parametrize("cwd", ["/proc/self/fd/3", "/proc/1/cwd", "/dev/fd/3"])
def test_a_working_directory_through_proc_never_reaches_the_host(run: Runner, cwd: str) -> None:
    # CVE-2024-21626: a WORKDIR naming a descriptor the runtime still held led to the host's filesystem.
    host_dir = os.open("/", os.O_RDONLY | os.O_DIRECTORY)  # a host directory this process holds
    try:
        ran = run(sh("pwd -P; ls /.. | head -3"), cwd=cwd)
    finally:
        os.close(host_dir)
    if ran.result.status == 125:  # refused, or nothing there once the builder's descriptors are closed
        assert ran.result.error is not None and cwd in ran.result.error, ran.result
    else:  # /proc/1/cwd is the container's own root: fine, as long as it is
        assert ran.result.ok and ran.out.splitlines()[0] == "/", ran.out


def test_capabilities_and_no_new_privs(run: Runner) -> None:
    def status(ran: Ran) -> dict[str, str]:
        return dict(line.split(":\t", 1) for line in ran.out.splitlines() if ":\t" in line)

    root = status(run(("cat", "/proc/self/status")))
    assert int(root["CapEff"], 16) == DOCKER_DEFAULT_CAPS
    assert int(root["CapPrm"], 16) == DOCKER_DEFAULT_CAPS
    assert int(root["CapBnd"], 16) == DOCKER_DEFAULT_CAPS
    assert root["NoNewPrivs"] == "1"
    nobody = status(run(("cat", "/proc/self/status"), user="nobody"))
    assert int(nobody["CapEff"], 16) == 0 and int(nobody["CapPrm"], 16) == 0
    assert nobody["NoNewPrivs"] == "1"
    assert root["Seccomp"] == nobody["Seccomp"] == "2"  # a filter (builder.seccomp)


def test_nested_user_namespaces_and_mounts_are_refused(run: Runner) -> None:
    ran = run(sh("unshare -U true; echo $?; unshare -m true; echo $?"))
    assert ran.out.split() == ["1", "1"]
    assert ran.err.count("Operation not permitted") == 2, ran.err


def test_host_block_devices_cannot_be_opened(run: Runner, tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(b"PYBUILD-HOST-SECRET".ljust(1 << 20, b"\0"))
    loop = subprocess.run(["losetup", "--find", "--show", str(image)], capture_output=True, text=True, check=True)
    device = loop.stdout.strip()
    try:
        rdev = os.stat(device).st_rdev
        ran = run(sh(f"mknod /tmp/disk b {os.major(rdev)} {os.minor(rdev)} && head -c 19 /tmp/disk"))
    finally:
        subprocess.run(["losetup", "--detach", device], check=True)
    assert "PYBUILD-HOST-SECRET" not in ran.out, "the container read a host block device"
    assert ran.result.status != 0


def test_proc_is_masked_and_read_only(run: Runner) -> None:
    host_name = socket.gethostname()
    ran = run(sh("for f in /proc/kcore /proc/keys /proc/timer_list; do echo $f=$(cat $f 2>/dev/null | wc -c); done; "
                 "echo x > /proc/sys/kernel/hostname; echo status=$?"))  # fmt: skip
    lines = ran.out.splitlines()
    assert lines[:3] == ["/proc/kcore=0", "/proc/keys=0", "/proc/timer_list=0"]
    assert lines[3] == "status=1"
    assert "Read-only file system" in ran.err
    assert socket.gethostname() == host_name
    if os.path.isdir("/proc/acpi"):  # a masked directory: empty and read-only
        acpi = run(sh("ls -A /proc/acpi | wc -l; touch /proc/acpi/x"))
        assert acpi.out.split() == ["0"] and "Read-only file system" in acpi.err, acpi


# ---------------------------------------------------------------------------- how it ends


def test_exit_status_is_propagated(run: Runner) -> None:
    ran = run(sh("exit 3"))
    assert (ran.result.status, ran.result.signal, ran.result.ok) == (3, None, False)
    assert ran.result.describe() == "exit status 3"
    assert run(("true",)).result.ok


def test_killed_by_a_signal(store: Store, sandbox: NamespaceSandbox) -> None:
    # PID 1 of a namespace ignores signals it has no handler for, but SIGKILL from outside still kills it.
    marker = f"PYBUILD_TEST_MARKER={os.getpid()}-{time.monotonic_ns()}"
    checkout = store.checkout("busybox")
    results: list[ExecResult] = []
    request = ExecRequest(argv=("sleep", "30"), rootfs=checkout.mounts, env=(marker,))
    thread = threading.Thread(target=lambda: results.append(sandbox.run(request)))
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not (pids := processes_with(marker.encode())) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(pids) == 1, pids
        os.kill(pids[0], signal.SIGKILL)
        thread.join(10)
    finally:
        checkout.remove()
    (result,) = results
    assert (result.status, result.signal) == (128 + signal.SIGKILL, signal.SIGKILL)
    assert result.describe() == "killed by SIGKILL"
    assert result.duration < 10


def test_timeout_kills_the_container(run: Runner) -> None:
    started = time.monotonic()
    ran = run(sh("sleep 100 & sleep 100"), timeout=0.5)
    assert time.monotonic() - started < 2
    assert ran.result.timed_out
    assert (ran.result.status, ran.result.signal) == (137, signal.SIGKILL)
    assert "timed out" in ran.result.describe()
    assert run(("true",), timeout=5).result.timed_out is False


def test_output_is_streamed_as_it_comes(run: Runner) -> None:
    ran = run(sh("echo first; sleep 1; echo second; echo err >&2"))
    assert ran.out == "first\nsecond\n" and ran.err == "err\n"
    first = next(t for t, fd, data in ran.chunks if b"first" in data)
    assert ran.returned - first > 0.7, "the first line arrived only when the command ended"


@dataclass
class Killed:
    state: Path  # the killed sandbox's state root
    leftover: str  # its state directory's name
    cgroups: list[Path]  # its cgroup nodes, now without processes


@contextlib.contextmanager
def killed_sandbox(store: Store, store_root: Path, tmp_path: Path) -> Iterator[Killed]:
    """A helper process runs `sleep 1000` with limits in a sandbox and is killed with SIGKILL; cleaned up after."""
    state = tmp_path / "state"
    marker = f"pybuild-test-{os.getpid()}-{time.monotonic_ns()}"
    helper = tmp_path / "helper.py"
    helper.write_text(textwrap.dedent(f"""
        import sys
        from store.images import Store
        from builder.namespace_sandbox import NamespaceSandbox
        from builder.cgroups import Limits
        from builder.sandbox import ExecRequest
        store = Store({str(store_root)!r})
        sandbox = NamespaceSandbox(state_root={str(state)!r})
        checkout = store.checkout("busybox")
        print(checkout.key, flush=True)
        def out(fd, data):
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
        sandbox.run(ExecRequest(argv=("sh", "-c", "echo started; exec sleep 1000 # {marker}"),
                                rootfs=checkout.mounts, env=("MARKER={marker}",), limits=Limits(pids=50)),
                    on_output=out)
    """))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    before = pybuild_cgroups()
    proc = subprocess.Popen([sys.executable, str(helper)], stdout=subprocess.PIPE, env=env)
    key = None
    try:
        assert proc.stdout is not None
        assert select.select([proc.stdout], [], [], 20)[0], "the helper said nothing"
        key = proc.stdout.readline().decode().strip()
        assert proc.stdout.readline() == b"started\n"
        deadline = time.monotonic() + 5  # sh may still be in its exec of sleep, its /proc files empty
        while not processes_with(marker.encode()) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(processes_with(marker.encode())) == 1
        (leftover,) = sandbox_dirs(state)
        nodes = [p for p in pybuild_cgroups() if p not in before]
        assert nodes and len({p.name for p in nodes}) == 1, f"the run had limits: one cgroup, not {nodes}"
        proc.kill()
        proc.wait(10)
        deadline = time.monotonic() + 5
        while processes_with(marker.encode()) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert processes_with(marker.encode()) == [], "the container outlived its parent"
        # An exiting process leaves /proc/PID/environ before it leaves its cgroup: wait for that too.
        while any(_procs(node) for node in nodes) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not any(_procs(node) for node in nodes), "the container's processes are still in its cgroup"
        yield Killed(state, leftover, nodes)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if key:
            store.snapshots.remove(key)
        store.metadata.reap_leases()
        sweep_stale()  # whatever the test left


def sandbox_dirs(state: Path) -> list[str]:
    """The sandboxes' directories in a state root (not its marker files)."""
    return [e.name for e in os.scandir(state) if e.is_dir(follow_symlinks=False)]


def _procs(node: Path) -> list[str]:
    try:
        return (node / "cgroup.procs").read_text().split()
    except FileNotFoundError:
        return []


def test_sigkill_of_the_parent_kills_the_container_and_the_next_sandbox_sweeps(
    store: Store, store_root: Path, tmp_path: Path
) -> None:
    with killed_sandbox(store, store_root, tmp_path) as killed:
        with NamespaceSandbox(state_root=killed.state) as sandbox:
            assert sandbox.swept == [killed.leftover]
            assert [node for node in killed.cgroups if node.exists()] == [], "the dead sandbox's cgroup was not swept"
        assert sandbox_dirs(killed.state) == []


def test_a_cgroup_sweep_missed_once_is_retried_by_the_next_sandbox(
    store: Store, store_root: Path, tmp_path: Path
) -> None:
    with killed_sandbox(store, store_root, tmp_path) as killed:
        # Stand in for a process of the dead container that has not left its cgroup yet.
        squatter = subprocess.Popen(["sleep", "30"])
        try:
            for node in killed.cgroups:
                (node / "cgroup.procs").write_text(str(squatter.pid))
            with NamespaceSandbox(state_root=killed.state) as sandbox:
                assert sandbox.swept == [killed.leftover]
            assert all(node.exists() for node in killed.cgroups), "a cgroup with a process in it was removed"
        finally:
            squatter.kill()
            squatter.wait()
        deadline = time.monotonic() + 5
        while any(_procs(node) for node in killed.cgroups) and time.monotonic() < deadline:
            time.sleep(0.02)
        with NamespaceSandbox(state_root=killed.state) as sandbox:
            pass
        assert [node for node in killed.cgroups if node.exists()] == [], "the stale cgroup is never swept"


# ---------------------------------------------------------------------------- limits


def test_memory_limit_oom_kills(run: Runner) -> None:
    ran = run(("tail", "/dev/zero"), limits=Limits(memory=64 * MiB), timeout=30)
    assert ran.result.oom_killed, ran.result
    assert (ran.result.status, ran.result.signal, ran.result.timed_out) == (137, signal.SIGKILL, False)
    assert ran.result.describe() == "killed: memory limit 64 MiB exceeded"
    assert 32 * MiB < ran.result.max_rss <= 64 * MiB, ran.result


def test_memory_limit_oom_kill_of_a_child_is_reported(run: Runner) -> None:
    ran = run(sh("tail /dev/zero; exit $?"), limits=Limits(memory=64 * MiB), timeout=30)
    assert ran.result.status == 137
    assert ran.result.oom_killed
    assert ran.result.describe() == "killed: memory limit 64 MiB exceeded"


def test_pids_limit_stops_a_fork_bomb(run: Runner) -> None:
    marker = f"PYBUILD_TEST_MARKER={os.getpid()}-{time.monotonic_ns()}"
    started = time.monotonic()
    ran = run(sh("for i in $(seq 100); do sleep 5 & done; wait"), limits=Limits(pids=20), timeout=10, env=(marker,))
    assert not ran.result.timed_out and time.monotonic() - started < 5, ran.result
    assert ran.result.status != 0
    assert "can't fork" in ran.err or "Resource temporarily unavailable" in ran.err, ran.err
    assert processes_with(marker.encode()) == [], "some of the container's sleeps survived it"
    assert run(("true",)).result.ok, "no container runs any more"


def test_cpu_limit_half_a_cpu(run: Runner) -> None:
    ran = run(sh("while :; do :; done"), limits=Limits(cpus=0.5), timeout=2)
    assert ran.result.timed_out
    share = ran.result.cpu_time / ran.result.duration
    assert 0.35 <= share <= 0.65, f"{ran.result.cpu_time:.2f}s of CPU in {ran.result.duration:.2f}s"


def test_cpu_time_without_a_cgroup_counts_what_pid_1_waited_for(run: Runner) -> None:
    # Without limits there is no cgroup (on cgroup v1 making one costs a kernel grace period): the
    # figures are wait4's, PID 1's and its waited-for children's (see ExecResult).
    ran = run(sh("(i=0; while [ $i -lt 200000 ]; do i=$((i + 1)); done); exit 0"))
    assert ran.result.ok and ran.result.duration > 0.1
    assert ran.result.cpu_time >= 0.7 * ran.result.duration, f"{ran.result.cpu_time:.3f}s of CPU in {ran.result.duration:.3f}s"


def test_cpu_time_counts_every_process_with_a_cgroup(run: Runner) -> None:
    ran = run(sh("(while :; do :; done) & sleep 0.6; exit 0"), limits=Limits(pids=100))
    assert ran.result.ok
    assert ran.result.cpu_time >= 0.3, f"cpu_time {ran.result.cpu_time:.3f}s for 0.6s of a busy loop"


# ---------------------------------------------------------------------------- many runs


def test_many_runs_leave_nothing_behind(store: Store, tmp_path: Path) -> None:
    state = tmp_path / "state"
    before = mountinfo()
    before_children = children()
    before_cgroups = pybuild_cgroups()
    committed = committed_snapshot_dirs(store)
    assert snapshot_dirs(store) == committed
    started = time.monotonic()
    counts = {"true": 0, "background": 0, "timeout": 0}
    with NamespaceSandbox(state_root=state) as sandbox:
        for i in range(200):
            if i % 20 == 7:
                kind, argv, timeout = "timeout", ("sleep", "10"), 0.2
            elif i % 3 == 1:
                kind, argv, timeout = "background", sh("sleep 1 & exit 0"), None
            else:
                kind, argv, timeout = "true", ("true",), None
            limits = Limits(pids=64) if i % 10 == 3 else None  # some with a cgroup
            checkout = store.checkout("busybox")
            try:
                request = ExecRequest(argv=argv, rootfs=checkout.mounts, timeout=timeout, limits=limits)
                result = sandbox.run(request)
                assert result.timed_out if kind == "timeout" else result.ok, (i, kind, result)
                assert tree(checkout.upper_dir) == {}, (i, kind)
            finally:
                checkout.remove()
            counts[kind] += 1
        assert mountinfo() == before
    elapsed = time.monotonic() - started
    assert min(counts.values()) >= 10, counts
    assert mountinfo() == before
    assert children() == before_children
    assert cgroups_left(before_cgroups) == []
    assert sandbox_dirs(state) == []
    assert snapshot_dirs(store) == committed
    assert elapsed < 30, f"200 runs took {elapsed:.1f}s"


# ---------------------------------------------------------------------------- forking ahead


def test_runs_forked_ahead_are_as_isolated_and_leave_nothing(store: Store, tmp_path: Path) -> None:
    """Each run's PID 1 is forked once the run before has ended (in the background); a change of network
    mode forks afresh."""
    before = children()
    with NamespaceSandbox(state_root=tmp_path / "state") as sandbox:
        outputs = []
        for network in ("none", "none", "host", "host", "none"):
            rootfs = store.checkout("busybox")
            try:
                out: list[bytes] = []
                script = sh("echo $$; tail -n +3 /proc/net/dev | cut -d: -f1")
                request = ExecRequest(argv=script, rootfs=rootfs.mounts, network=network, hostname=f"box-{network}")
                result = sandbox.run(request, on_output=lambda fd, data, out=out: out.append(data))
            finally:
                rootfs.remove()
            assert result.ok, result
            pid, *interfaces = b"".join(out).decode().split()
            outputs.append((network, pid, interfaces))
            deadline = time.monotonic() + 5
            while len(children()) != len(before) + 1 and time.monotonic() < deadline:
                time.sleep(0.005)
            assert len(children()) == len(before) + 1, "one PID 1 waits for the next run"
        for network, pid, interfaces in outputs:
            assert pid == "1"
            assert (interfaces == ["lo"]) == (network == "none"), (network, interfaces)
    assert children() == before, "close() left the waiting PID 1 behind"


def test_a_run_from_another_thread_does_not_leave_a_doomed_pid_1(store: Store, tmp_path: Path) -> None:
    # PR_SET_PDEATHSIG fires when the forking *thread* ends: a PID 1 forked ahead by a worker thread
    # would be killed, mid-run, when that thread ends. Forking ahead happens in the sandbox's own thread.
    with NamespaceSandbox(state_root=tmp_path / "state") as sandbox:
        results = []
        done = threading.Event()

        def run_once(argv: tuple[str, ...]) -> None:
            rootfs = store.checkout("busybox")
            try:
                results.append(sandbox.run(ExecRequest(argv=argv, rootfs=rootfs.mounts)))
            finally:
                rootfs.remove()

        def worker() -> None:
            run_once(("true",))
            done.set()
            time.sleep(0.3)  # ends while the main thread's run is under way

        thread = threading.Thread(target=worker)
        thread.start()
        done.wait(30)
        run_once(("sleep", "0.6"))
        thread.join()
    assert [r.status for r in results] == [0, 0], results


def test_a_fork_ahead_that_fails_leaves_the_next_run_to_fork_its_own(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from builder import namespace_sandbox

    def failing_fork(cls: type, network: str, pidns: int, where: str) -> None:
        raise RuntimeError("no fork ahead today")

    monkeypatch.setattr(namespace_sandbox._Warm, "fork", classmethod(failing_fork))
    statuses: list[int] = []

    def two_runs() -> None:
        with NamespaceSandbox(state_root=tmp_path / "state") as sandbox:
            for _ in range(2):
                rootfs = store.checkout("busybox")
                try:
                    statuses.append(sandbox.run(ExecRequest(argv=("true",), rootfs=rootfs.mounts)).status)
                finally:
                    rootfs.remove()

    runner = threading.Thread(target=two_runs, daemon=True)
    runner.start()
    runner.join(60)
    assert not runner.is_alive(), "the second run waits for ever for a PID 1 that was never forked"
    assert statuses == [0, 0]


def test_no_forking_ahead_when_asked(store: Store, tmp_path: Path) -> None:
    before = children()
    with NamespaceSandbox(state_root=tmp_path / "state", prefork=False) as sandbox:
        rootfs = store.checkout("busybox")
        try:
            assert sandbox.run(ExecRequest(argv=("true",), rootfs=rootfs.mounts)).ok
        finally:
            rootfs.remove()
        assert children() == before


def test_user_resolves_against_the_passwd_a_run_before_changed(store: Store, tmp_path: Path) -> None:
    # The builder reads /etc/passwd through the layers (upper first) as OverlayFS shows it.
    with NamespaceSandbox(state_root=tmp_path / "state") as sandbox:
        rootfs = store.checkout("busybox")
        try:
            add = "echo 'app:x:1234:2345::/home/app:/bin/sh' >> /etc/passwd"
            assert sandbox.run(ExecRequest(argv=sh(add), rootfs=rootfs.mounts)).ok
            out: list[bytes] = []
            result = sandbox.run(
                ExecRequest(argv=sh("id -u; id -g; echo $HOME"), rootfs=rootfs.mounts, user="app"),
                on_output=lambda fd, data: out.append(data),
            )
            assert result.ok, result
            assert b"".join(out).split() == [b"1234", b"2345", b"/home/app"]
            os.unlink(rootfs.upper_dir / "etc" / "passwd")
            os.symlink("/etc/passwd.real", rootfs.upper_dir / "etc" / "passwd")  # a link: resolved inside
            (rootfs.upper_dir / "etc" / "passwd.real").write_text("root:x:0:0::/root:/bin/sh\nlinked:x:77:77::/:/bin/sh\n")
            out.clear()
            result = sandbox.run(
                ExecRequest(argv=sh("id -u"), rootfs=rootfs.mounts, user="linked"),
                on_output=lambda fd, data: out.append(data),
            )
            assert result.ok and b"".join(out).split() == [b"77"], (result, out)
        finally:
            rootfs.remove()


def held_mount_namespaces() -> list[str]:
    """The mount namespaces this process holds open (the sandbox holds a container's while it runs)."""
    out = []
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{name}")
            if target.startswith("mnt:"):
                out.append(target)
    return out


def test_finished_containers_mounts_are_let_go_of(store: Store, tmp_path: Path) -> None:
    # The sandbox keeps a container's mount namespace while it runs, so that its teardown happens
    # after the run returns; a thread then drops it.
    def none_held_soon() -> bool:
        deadline = time.monotonic() + 5
        while held_mount_namespaces() and time.monotonic() < deadline:
            time.sleep(0.01)
        return held_mount_namespaces() == []

    assert none_held_soon(), "an earlier test's sandbox still holds one"  # the module's sandbox lets go too
    with NamespaceSandbox(state_root=tmp_path / "state") as sandbox:
        for _ in range(5):
            rootfs = store.checkout("busybox")
            try:
                assert sandbox.run(ExecRequest(argv=("true",), rootfs=rootfs.mounts)).ok
            finally:
                rootfs.remove()
        seen: list[list[str]] = []
        rootfs = store.checkout("busybox")
        try:
            request = ExecRequest(argv=sh("echo ready; sleep 0.2"), rootfs=rootfs.mounts)
            assert sandbox.run(request, on_output=lambda fd, data: seen.append(held_mount_namespaces())).ok
        finally:
            rootfs.remove()
        assert seen and len(seen[0]) == 1, "the running container's mount namespace is held"
        assert none_held_soon()
    assert held_mount_namespaces() == []
