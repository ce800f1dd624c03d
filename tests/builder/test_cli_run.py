"""`pybuild run` as users run it: a real subprocess of the CLI, real containers, exit codes and stderr.

Images come from the session store of tests/builder/conftest.py (`busybox`,
`configured` with ENTRYPOINT/CMD/ENV/WORKDIR/USER). Needs root; skips without it.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.namespace_sandbox import default_state_root
from store.images import Store
from tests.builder.conftest import (
    NEEDS_ROOT,
    cgroups_left,
    committed_snapshot_dirs,
    pybuild_cgroups,
    snapshot_dirs,
)
from tests.support import REPO

pytestmark = NEEDS_ROOT

ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def command(store_root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "builder", "run", "--store", str(store_root), *args]


def pybuild_run(
    store_root: Path, *args: str, input: bytes | None = None, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        command(store_root, *args),
        input=input,
        stdin=subprocess.DEVNULL if input is None else None,
        capture_output=True,
        env=env or ENV,
        timeout=timeout,
        check=False,
    )
    out = subprocess.CompletedProcess(result.args, result.returncode, result.stdout.decode(), result.stderr.decode())
    assert "Traceback" not in out.stderr, out.stderr
    return out


@contextlib.contextmanager
def running(store_root: Path, script: str) -> Iterator[subprocess.Popen[bytes]]:
    """`pybuild run busybox sh -c SCRIPT` as a process, once SCRIPT has printed `ready`; killed if still there after."""
    proc = subprocess.Popen(command(store_root, "busybox", "sh", "-c", script), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)  # fmt: skip
    try:
        assert proc.stdout is not None
        assert select.select([proc.stdout], [], [], 30)[0], "the container never said ready"
        assert proc.stdout.readline() == b"ready\n"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.fixture(autouse=True)
def nothing_left_behind(store: Store) -> object:
    """Every test: no writable layer (--rm is the default), sandbox state dir or cgroup stays behind."""
    state = default_state_root()
    state_before = set(os.listdir(state)) if state.exists() else set()
    assert snapshot_dirs(store) == committed_snapshot_dirs(store)
    cgroups = pybuild_cgroups()
    yield
    assert snapshot_dirs(store) == committed_snapshot_dirs(store), "a container's snapshot was left in the store"
    assert (set(os.listdir(state)) if state.exists() else set()) <= state_before
    assert cgroups_left(cgroups) == []


def test_exit_status_is_propagated(store_root: Path) -> None:
    result = pybuild_run(store_root, "busybox", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert (result.returncode, result.stdout, result.stderr) == (7, "out\n", "err\n")
    assert pybuild_run(store_root, "busybox", "true").returncode == 0


def test_options_end_at_the_image(store_root: Path) -> None:
    result = pybuild_run(store_root, "busybox", "echo", "-u", "nobody", "--rm", "-w", "/x")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "-u nobody --rm -w /x\n", "options after the image belong to the command"


def test_image_entrypoint_and_cmd(store_root: Path) -> None:
    assert pybuild_run(store_root, "configured").stdout == "ep default-cmd\n"
    assert pybuild_run(store_root, "configured", "a", "b c").stdout == "ep a b c\n", "arguments replace CMD"
    overridden = pybuild_run(store_root, "--entrypoint", "echo", "configured", "just", "this")
    assert overridden.stdout == "just this\n", "--entrypoint replaces ENTRYPOINT and drops CMD"


def test_image_env_workdir_and_user(store_root: Path) -> None:
    script = 'echo "$GREETING|$OVERRIDE|$PATH"; pwd; id -u; hello'
    result = pybuild_run(store_root, "--entrypoint", "sh", "configured", "-c", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "hello world|image|/app:/usr/sbin:/usr/bin:/sbin:/bin",
        "/app",
        "65534",
        "hello from /app/hello as 65534 in /app",
    ]
    assert pybuild_run(store_root, "--entrypoint", "hello", "configured").stdout.startswith("hello from /app/hello")


def test_no_command_at_all_is_a_usage_error(store_root: Path) -> None:
    result = pybuild_run(store_root, "busybox")
    assert result.returncode == 2
    assert "no ENTRYPOINT or CMD" in result.stderr and len(result.stderr.splitlines()) == 1


def test_env_options(store_root: Path) -> None:
    env = {**ENV, "FROM_CALLER": "caller value"}
    env.pop("NOT_IN_CALLER", None)
    result = pybuild_run(store_root, "-e", "OVERRIDE=cli", "-e", "FROM_CALLER", "-e", "NOT_IN_CALLER", "-e", "X=a=b",
                         "--entrypoint", "env", "configured", env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    values = dict(line.partition("=")[::2] for line in result.stdout.splitlines())
    assert values["OVERRIDE"] == "cli"
    assert values["FROM_CALLER"] == "caller value"
    assert values["X"] == "a=b"
    assert values["GREETING"] == "hello world"
    assert "NOT_IN_CALLER" not in values


def test_workdir_user_and_hostname(store_root: Path) -> None:
    result = pybuild_run(store_root, "-w", "/made/here", "-u", "1000:1001", "--hostname", "cli-host",
                         "busybox", "sh", "-c", "pwd; id; hostname; grep cli-host /etc/hosts")  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:3] == ["/made/here", "uid=1000 gid=1001 groups=1001", "cli-host"]
    assert re.match(r"127\.0\.1\.1\s+cli-host$", lines[3])
    as_root = pybuild_run(store_root, "-u", "root", "-w", "/tmp", "--entrypoint", "sh", "configured", "-c", "id -u; pwd")
    assert as_root.stdout == "0\n/tmp\n", "-u and -w override the image's USER and WORKDIR"
    unknown = pybuild_run(store_root, "-u", "bob", "busybox", "true")
    assert unknown.returncode == 125
    assert "unable to find user bob" in unknown.stderr


def test_volumes(store_root: Path, tmp_path: Path) -> None:
    rw, ro = tmp_path / "rw", tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    (ro / "given").write_text("from the host\n")
    result = pybuild_run(store_root, "-v", f"{rw}:/data", "-v", f"{ro}:/ro:ro", "busybox", "sh", "-c",
                         "echo written > /data/out && cat /ro/given && echo no > /ro/new")  # fmt: skip
    assert result.returncode != 0
    assert result.stdout == "from the host\n"
    assert "Read-only file system" in result.stderr
    assert (rw / "out").read_text() == "written\n"
    assert sorted(os.listdir(ro)) == ["given"]
    explicit_rw = pybuild_run(store_root, "-v", f"{rw}:/data:rw", "busybox", "sh", "-c", "echo again >> /data/out")
    assert explicit_rw.returncode == 0, explicit_rw.stderr
    assert (rw / "out").read_text() == "written\nagain\n"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nocolon", "expected HOST:CONTAINER"),
        ("relative:/data", "must be absolute"),
        ("/no/such/host/dir:/data", "does not exist"),
        ("/tmp:/data:rx", "mode must be ro or rw"),
        ("/tmp:data", "container path must be absolute"),
    ],
)
def test_bad_volume_is_a_usage_error(store_root: Path, spec: str, message: str) -> None:
    result = pybuild_run(store_root, "-v", spec, "busybox", "true")
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr


def test_network_none_and_host(store_root: Path) -> None:
    with open("/proc/net/dev") as f:
        host = sorted(line.split(":")[0].strip() for line in f if ":" in line and "|" not in line)
    default = pybuild_run(store_root, "busybox", "cat", "/proc/net/dev")
    assert [line.split(":")[0].strip() for line in default.stdout.splitlines() if ":" in line] == ["lo"]
    shared = pybuild_run(store_root, "--network", "host", "busybox", "cat", "/proc/net/dev")
    assert sorted(line.split(":")[0].strip() for line in shared.stdout.splitlines() if ":" in line) == host


def test_network_bridge_is_refused_clearly(store_root: Path) -> None:
    result = pybuild_run(store_root, "--network", "bridge", "busybox", "true")
    assert result.returncode == 2
    assert "--network bridge" in result.stderr and "none and host" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_memory_limit_oom(store_root: Path) -> None:
    result = pybuild_run(store_root, "--memory", "64m", "busybox", "tail", "/dev/zero")
    assert result.returncode == 137
    assert "killed: memory limit 64 MiB exceeded" in result.stderr


def test_timeout(store_root: Path) -> None:
    started = time.monotonic()
    result = pybuild_run(store_root, "--timeout", "0.5", "busybox", "sleep", "10")
    assert time.monotonic() - started < 5
    assert result.returncode == 137
    assert "timed out after 0.5s" in result.stderr


def test_unknown_image_is_one_line(store_root: Path) -> None:
    result = pybuild_run(store_root, "no-such-image", "true")
    assert result.returncode != 0
    assert len(result.stderr.splitlines()) == 1 and "no-such-image" in result.stderr, result.stderr


def test_sigterm_is_forwarded_to_the_container(store_root: Path) -> None:
    script = 'trap "echo got-term; exit 5" TERM; echo ready; while :; do sleep 0.1; done'
    with running(store_root, script) as proc:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 5, err
    assert out == b"got-term\n"


def _ignore_glibcs_own_signals() -> None:
    """What a Rust or Go parent (hyperfine, a CI agent) may leave: signals 32 and 33 ignored.

    glibc's sigaction refuses them, so this asks the kernel directly (struct k_sigaction: handler,
    flags, restorer, mask)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    action = (ctypes.c_ulong * 4)(1, 0, 0, 0)  # SIG_IGN
    for signo in (32, 33):
        if libc.syscall(13, signo, ctypes.byref(action), None, 8) != 0:  # rt_sigaction on x86_64
            os._exit(99)


def test_a_caller_that_ignores_glibcs_reserved_signals(store_root: Path) -> None:
    result = subprocess.run(command(store_root, "busybox", "echo", "hello"), stdin=subprocess.DEVNULL,
                            capture_output=True, env=ENV, preexec_fn=_ignore_glibcs_own_signals, timeout=60,
                            check=False)  # fmt: skip
    assert (result.returncode, result.stdout, result.stderr) == (0, b"hello\n", b"")


def test_a_third_interrupt_kills_a_container_that_ignores_them(store_root: Path) -> None:
    # PID 1 without a SIGINT handler ignores it: the first two are passed on, the third kills.
    with running(store_root, "echo ready; exec sleep 1000") as proc:
        for _ in range(2):
            proc.send_signal(signal.SIGINT)
            time.sleep(0.2)
            assert proc.poll() is None, "two interrupts are the container's to ignore"
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=10)
    assert proc.returncode == 128 + signal.SIGKILL


def test_stdin_only_with_interactive(store_root: Path) -> None:
    passed = pybuild_run(store_root, "-i", "busybox", "cat", input=b"hi\n")
    assert (passed.returncode, passed.stdout) == (0, "hi\n")
    closed = pybuild_run(store_root, "busybox", "sh", "-c", "cat; readlink /proc/self/fd/0", input=b"hi\n")
    assert (closed.returncode, closed.stdout) == (0, "/dev/null\n")


def test_tty_without_a_terminal_on_our_side(store_root: Path) -> None:
    result = pybuild_run(store_root, "-t", "busybox", "sh", "-c", "tty; echo TERM=$TERM")
    assert result.returncode == 0, result.stderr
    assert result.stdout.replace("\r\n", "\n") == "/dev/pts/0\nTERM=xterm\n"


def test_interactive_tty_on_a_terminal(store_root: Path) -> None:
    master, slave = os.openpty()
    proc = subprocess.Popen(command(store_root, "-it", "busybox", "sh", "-c", 'tty; read line; echo "got:$line"'),
                            stdin=slave, stdout=slave, stderr=slave, env=ENV, start_new_session=True)  # fmt: skip
    os.close(slave)
    output = b""
    try:
        output += _read_until(master, b"/dev/pts/0", 30)
        os.write(master, b"typed\r")
        output += _read_until(master, b"got:typed", 10)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert b"/dev/pts/0" in output and b"got:typed" in output


def _read_until(fd: int, wanted: bytes, timeout: float) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while wanted not in data:
        left = deadline - time.monotonic()
        assert left > 0 and select.select([fd], [], [], left)[0], f"no {wanted!r} in {data!r}"
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the other side is closed
            break
        if not chunk:
            break
        data += chunk
    assert wanted in data, data
    return data


def test_keep_leaves_the_writable_layer(store: Store, store_root: Path) -> None:
    before = snapshot_dirs(store)
    result = pybuild_run(store_root, "--keep", "busybox", "sh", "-c", "echo kept > /kept")
    assert result.returncode == 0, result.stderr
    (kept,) = snapshot_dirs(store) - before
    try:
        assert str(store.snapshots.root / kept / "fs") in result.stderr
        assert (store.snapshots.root / kept / "fs" / "kept").read_text() == "kept\n"
    finally:
        for info in list(store.snapshots.walk()):
            if store.snapshots.upper_dir(info.name).parent.name == kept:
                store.snapshots.remove(info.name)
    assert not (store.snapshots.root / kept).exists()
    assert pybuild_run(store_root, "--rm", "--keep", "busybox", "true").returncode == 2


def test_a_killed_pybuild_run_leaves_nothing_the_next_one_keeps(store: Store, store_root: Path) -> None:
    with running(store_root, "echo ready; exec sleep 1000") as proc:
        assert snapshot_dirs(store) != committed_snapshot_dirs(store)  # its writable layer
        proc.kill()
        proc.communicate(timeout=10)
    assert snapshot_dirs(store) != committed_snapshot_dirs(store), "the SIGKILLed run could not clean up"
    assert pybuild_run(store_root, "busybox", "true").returncode == 0
    assert snapshot_dirs(store) == committed_snapshot_dirs(store), "the next run did not sweep the dead one's layer"
    # ...and its sandbox directory: nothing_left_behind checks the state root.
