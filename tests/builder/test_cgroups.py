"""builder.cgroups on real cgroups: limits written and enforced, processes killed, nodes removed.

Tests that create cgroups need root and skip without it. Where this host's
cgroup v2 layout cannot give limits at all (pybuild runs in a non-root v2
cgroup that does not enable the controllers for children, and its processes
cannot be moved into pybuild-init), they skip and quote the error; under
CI=true that is a failure, as for other missing prerequisites. Processes
join the way the sandbox joins: fork, write b"0" to every join fd, exec
(Popen's preexec_fn runs between fork and exec).

The v2 evacuation runs for real in a scratch tree: `fake_own` makes
`<this process's v2 cgroup>/pybuild-test-*/own`, offering one controller the
host has on v2 (hugetlb on a hybrid host, where memory, cpu and pids are v1),
as the own cgroup of a pybuild that a layout from `detect_layout(mountinfo,
proc_cgroup)` says runs there; sleepers stand in for the session's processes.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builder import cgroups
from builder.cgroups import (
    INIT_NAME,
    Cgroup,
    CgroupError,
    Hierarchy,
    InternalProcessConflict,
    InvalidLimit,
    Layout,
    Limits,
    Stats,
    _kill,
    _Node,
    _pids,
    _remove_tree,
    _set_memory_v1,
    _tree,
    detect_layout,
    parse_size,
    remove_stale,
    sweep_stale,
)
from tests.support import REPO

MiB = 1 << 20


def _name() -> str:
    return f"pybuild-test-{secrets.token_hex(6)}"


def _cannot(error: CgroupError) -> None:
    reason = f"this host cannot give pybuild cgroup limits: {error}"
    if os.environ.get("CI") == "true":
        pytest.fail(reason + " (required under CI=true)")
    pytest.skip(reason)


@pytest.fixture
def make():
    """Cgroup.create, with every cgroup destroyed (and checked gone) after the test."""
    if os.geteuid() != 0:
        pytest.skip("needs root: these tests create cgroups beside the test process's own")
    made: list[Cgroup] = []

    def create(limits: Limits, name: str | None = None) -> Cgroup:
        try:
            cgroup = Cgroup.create(name or _name(), limits)
        except InternalProcessConflict as error:
            _cannot(error)
        made.append(cgroup)
        return cgroup

    yield create
    for cgroup in made:
        cgroup.destroy()
        assert not [p for p in cgroup.paths.values() if p.exists()]


def spawn(cgroup: Cgroup, code: str, **kwargs: object) -> subprocess.Popen[bytes]:
    """`python3 -c code`, joined to `cgroup` between fork and exec."""
    fds = cgroup.join_fds()

    def join() -> None:
        for fd in fds:
            os.write(fd, b"0")

    try:
        return subprocess.Popen([sys.executable, "-c", code], preexec_fn=join, **kwargs)  # noqa: PLW1509
    finally:
        cgroup.close_fds()


def read(cgroup: Cgroup, controller: str, v1: str, v2: str) -> str:
    """A control file of the node carrying `controller`, by its v1 or v2 name, whichever this host has."""
    path = cgroup.paths[controller]
    return ((path / v2) if (path / v2).exists() else (path / v1)).read_text().strip()


def procs(*paths: Path) -> set[int]:
    return {int(p) for path in set(paths) for p in (path / "cgroup.procs").read_text().split()}


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# ---------------------------------------------------------------------------
# Values


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1024", 1024),
        ("0", 0),
        ("100b", 100),
        ("512k", 512 << 10),
        ("256m", 256 * MiB),
        ("256M", 256 * MiB),
        ("64mb", 64 * MiB),
        ("1g", 1 << 30),
        ("2GiB", 2 << 30),
        ("1.5g", 3 << 29),
        ("1t", 1 << 40),
        ("8ki", 8 << 10),
        (" 10m ", 10 * MiB),
        ("10 m", 10 * MiB),
        ("1.5", 1),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "m", "abc", "1x", "-1", "1.2.3", ".5g", "1 0m", "1ib", "1e3", "9999999p"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(InvalidLimit) as caught:
        parse_size(text)
    message = str(caught.value)
    assert "\n" not in message and repr(text) in message
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("kwargs", "phrase"),
    [
        ({"memory": 0}, "memory limit"),
        ({"memory": -5}, "memory limit"),
        ({"memory": True}, "memory limit"),
        ({"memory_swap": 64 * MiB}, "needs a memory limit"),
        ({"memory": 64 * MiB, "memory_swap": 32 * MiB}, "at least the memory limit"),
        ({"memory": 64 * MiB, "memory_swap": -2}, "at least the memory limit"),
        ({"cpus": 0}, "cpus"),
        ({"cpus": 0.001}, "cpus"),
        ({"cpus": float("nan")}, "cpus"),
        ({"pids": 0}, "pids"),
    ],
)
def test_limits_refuse_nonsense(kwargs: dict[str, object], phrase: str) -> None:
    with pytest.raises(InvalidLimit, match=phrase):
        Limits(**kwargs)


def test_limits_empty() -> None:
    assert Limits().empty()
    assert not Limits(pids=1).empty()
    assert not Limits(memory=MiB, memory_swap=-1).empty()


@pytest.mark.parametrize("name", ["", "a/b", "..", ".hidden", "cgroup.procs", "x\n"])
def test_create_refuses_unsafe_names(name: str) -> None:
    with pytest.raises(ValueError, match="cgroup name"):
        Cgroup.create(name, Limits(pids=1))


def test_empty_limits_create_nothing() -> None:
    """Limits() needs no cgroup: nothing is made, nothing to join, nothing to count; root or not."""
    name = _name()
    cgroup = Cgroup.create(name, Limits())
    assert dict(cgroup.paths) == {} and cgroup.warnings == ()
    assert cgroup.join_fds() == ()
    assert cgroup.stats() == Stats(cpu_usage_ns=None, memory_peak=None)
    assert not cgroup.oom_killed()
    assert not [h.own / name for h in detect_layout().hierarchies if h.own and (h.own / name).exists()]
    cgroup.destroy()
    cgroup.destroy()


# ---------------------------------------------------------------------------
# Layout


def test_layout_of_this_process() -> None:
    """Every own cgroup found is a real directory listing this process."""
    layout = detect_layout()
    assert layout.mode in ("v1", "v2", "hybrid")
    reachable = [h for h in layout.hierarchies if h.own is not None]
    assert reachable
    for hierarchy in reachable:
        assert os.getpid() in {int(p) for p in (hierarchy.own / "cgroup.procs").read_text().split()}, hierarchy


HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
HYBRID_CGROUP = "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/d50b\n2:cpuacct:/\n1:cpu:/\n0::/\n"


def test_layout_hybrid() -> None:
    layout = detect_layout(HYBRID, HYBRID_CGROUP)
    assert layout.mode == "hybrid"
    memory = layout.find("memory")
    assert memory and memory.version == 1 and memory.own == Path("/sys/fs/cgroup/memory/process_api/d50b")
    assert layout.find("cpu").own == Path("/sys/fs/cgroup/cpu")
    assert layout.find("cpuacct").own == Path("/sys/fs/cgroup/cpuacct")
    assert layout.unified.own == Path("/sys/fs/cgroup/unified")
    assert all("name=systemd" not in h.controllers for h in layout.hierarchies)
    assert len(layout.hierarchies) == 5


def test_layout_pure_v2() -> None:
    mountinfo = (
        "35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2"
        " rw,nsdelegate,memory_recursiveprot\n"
    )
    layout = detect_layout(mountinfo, "0::/user.slice/user-0.slice/session-1.scope\n")
    assert layout.mode == "v2"
    assert layout.unified.own == Path("/sys/fs/cgroup/user.slice/user-0.slice/session-1.scope")


def test_layout_maps_through_the_mount_root() -> None:
    """A container sees the host's /docker/<id> mounted as its /sys/fs/cgroup/memory."""
    mountinfo = "40 30 0:32 /docker/abc /sys/fs/cgroup/memory ro,nosuid - cgroup cgroup rw,memory\n"
    assert detect_layout(mountinfo, "4:memory:/docker/abc\n").find("memory").own == Path("/sys/fs/cgroup/memory")
    nested = detect_layout(mountinfo, "4:memory:/docker/abc/build/1\n").find("memory")
    assert nested.own == Path("/sys/fs/cgroup/memory/build/1")
    elsewhere = detect_layout(mountinfo, "4:memory:/docker/abcdef\n").find("memory")
    assert elsewhere.own is None and "not inside any mount" in elsewhere.problem


def test_layout_cgroup_outside_the_namespace() -> None:
    mountinfo = "35 24 0:30 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    unified = detect_layout(mountinfo, "0::/../../user.slice/x\n").unified
    assert unified.own is None and "outside this cgroup namespace" in unified.problem


def test_layout_co_mounted_and_escaped() -> None:
    mountinfo = (
        "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
        "33 31 0:40 / /sys/fs/cgroup/net\\040cls rw - cgroup cgroup rw,net_cls\n"
        "34 31 0:41 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n"
        "35 31 0:42 / /sys/fs/cgroup/pids rw - tmpfs tmpfs rw\n"  # hides the pids mount below it
    )
    layout = detect_layout(mountinfo, "2:cpu,cpuacct:/b\n3:net_cls:/\n4:pids:/\n")
    assert layout.find("cpu") is layout.find("cpuacct")
    assert layout.find("cpu").own == Path("/sys/fs/cgroup/cpu,cpuacct/b")
    assert layout.find("net_cls").own == Path("/sys/fs/cgroup/net cls")
    assert layout.find("pids").own is None and layout.mode == "v1"


# ---------------------------------------------------------------------------
# Limits written


@pytest.mark.parametrize(
    ("memory_swap", "v1_memsw", "v2_swap"),
    [(None, 64 * MiB, "0"), (128 * MiB, 128 * MiB, str(64 * MiB)), (-1, None, "max")],
)
def test_memory_limit_written(make, memory_swap: int | None, v1_memsw: int | None, v2_swap: str) -> None:
    cgroup = make(Limits(memory=64 * MiB, memory_swap=memory_swap))
    assert cgroup.warnings == ()
    path = cgroup.paths["memory"]
    assert int(read(cgroup, "memory", "memory.limit_in_bytes", "memory.max")) == 64 * MiB
    if (path / "memory.max").exists():
        assert (path / "memory.swap.max").read_text().strip() == v2_swap
    elif (path / "memory.memsw.limit_in_bytes").exists():
        memsw = int((path / "memory.memsw.limit_in_bytes").read_text())
        assert memsw == v1_memsw if v1_memsw else memsw > 1 << 62  # -1 reads back as the maximum
    elif memory_swap is None:
        assert (path / "memory.swappiness").read_text().strip() == "0"


@pytest.mark.parametrize(("cpus", "quota"), [(0.5, 50000), (1.5, 150000)])
def test_cpu_limit_written(make, cpus: float, quota: int) -> None:
    cgroup = make(Limits(cpus=cpus))
    assert cgroup.warnings == ()
    path = cgroup.paths["cpu"]
    if (path / "cpu.max").exists():
        assert (path / "cpu.max").read_text().split() == [str(quota), "100000"]
    else:
        assert int((path / "cpu.cfs_quota_us").read_text()) == quota
        assert int((path / "cpu.cfs_period_us").read_text()) == 100000


def test_pids_limit_written(make) -> None:
    cgroup = make(Limits(pids=42))
    assert cgroup.warnings == ()
    assert (cgroup.paths["pids"] / "pids.max").read_text().strip() == "42"


def test_v1_memory_limits_grow_and_shrink_in_order(make) -> None:
    """memsw >= limit at every step: growing writes memsw first, shrinking the limit first."""
    cgroup = make(Limits(memory=64 * MiB))
    path = cgroup.paths["memory"]
    if not (path / "memory.memsw.limit_in_bytes").exists():
        pytest.skip("needs cgroup v1 with swap accounting (memory.memsw.limit_in_bytes)")
    for size in (256 * MiB, 32 * MiB):
        warnings: list[str] = []
        _set_memory_v1(path, size, None, warnings)
        assert warnings == []
        assert int((path / "memory.limit_in_bytes").read_text()) == size
        assert int((path / "memory.memsw.limit_in_bytes").read_text()) == size


def test_unprivileged_caller_gets_warnings_not_errors() -> None:
    """As nobody (no cgroup delegated), create returns one warning per limit and the run goes on unlimited."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the test drops to uid 65534 in a forked child")
    name = _name()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            cgroup = Cgroup.create(name, Limits(memory=64 * MiB, cpus=1.0, pids=10))
            report = {"warnings": cgroup.warnings, "paths": len(cgroup.paths), "fds": len(cgroup.join_fds())}
            cgroup.destroy()
            os.write(w, json.dumps(report).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as pipe:
        data = pipe.read()
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    report = json.loads(data)
    assert report["paths"] == 0 and report["fds"] == 0
    labels = sorted(line.split(" limit not applied: ")[0] for line in report["warnings"])
    assert labels == ["cpu", "memory", "pids"]
    assert all("\n" not in line and line.endswith("running without it") for line in report["warnings"])
    assert not [h.own / name for h in detect_layout().hierarchies if h.own and (h.own / name).exists()]


# ---------------------------------------------------------------------------
# Limits enforced


def test_memory_limit_kills_and_reports_oom(make) -> None:
    cgroup = make(Limits(memory=64 * MiB))
    assert not cgroup.oom_killed()
    hog = "chunks = []\nfor _ in range(512):\n    chunks.append(b'x' * (1 << 20))\nprint('survived')"
    proc = spawn(cgroup, hog, stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == -signal.SIGKILL and b"survived" not in out
    assert cgroup.oom_killed()
    peak = cgroup.stats().memory_peak
    assert peak is None or 32 * MiB < peak <= 64 * MiB


def test_pids_limit_stops_fork(make) -> None:
    limit = 16
    cgroup = make(Limits(pids=limit))
    forker = (
        "import os, sys, time\n"
        "pids = []\n"
        "while len(pids) < 200:\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError as error:\n"
        "        print(error.errno, *pids, flush=True)\n"
        "        break\n"
        "    if pid == 0:\n"
        "        os.closerange(0, 64)\n"
        "        time.sleep(60)\n"
        "        os._exit(0)\n"
        "    pids.append(pid)\n"
        "sys.stdout.close()\n"
        "time.sleep(60)\n"
    )
    proc = spawn(cgroup, forker, stdout=subprocess.PIPE)
    try:
        code, *children = (int(x) for x in proc.stdout.readline().split())
        assert code == errno.EAGAIN
        assert len(children) == limit - 1  # the forker itself is the limit's first task
        assert int((cgroup.paths["pids"] / "pids.current").read_text()) == limit
        assert subprocess.run(["true"], check=False).returncode == 0  # outside the cgroup, fork still works
    finally:
        cgroup.destroy()
    assert proc.wait(timeout=5) == -signal.SIGKILL
    assert not [pid for pid in children if running(pid)]


def test_stats_count_work(make) -> None:
    cgroup = make(Limits(cpus=1.0))
    proc = spawn(cgroup, "x = sum(range(3_000_000)); b = b'x' * (8 << 20)")
    assert proc.wait(timeout=10) == 0
    stats = cgroup.stats()
    assert stats.cpu_usage_ns is not None and stats.cpu_usage_ns > 1_000_000
    if cgroup.paths.get("memory"):  # v1 accounting joins memory too; v2 only when limiting it
        assert stats.memory_peak is None or stats.memory_peak >= 8 * MiB
    assert not cgroup.oom_killed()


# ---------------------------------------------------------------------------
# Teardown


def test_destroy_kills_and_removes(make) -> None:
    cgroup = make(Limits(pids=50, memory=128 * MiB))
    proc = spawn(cgroup, "import os, time\nos.fork()\nos.fork()\ntime.sleep(60)")
    wait_for(lambda: len(procs(*cgroup.paths.values())) == 4)
    inside = procs(*cgroup.paths.values())
    paths = set(cgroup.paths.values())
    cgroup.destroy()
    assert not [p for p in paths if p.exists()]
    assert proc.wait(timeout=5) == -signal.SIGKILL
    wait_for(lambda: not [pid for pid in inside if running(pid)])
    cgroup.destroy()  # again: nothing left, no error
    assert cgroup.stats().cpu_usage_ns is not None  # read before removal, still answered
    assert not cgroup.oom_killed()
    with pytest.raises(CgroupError, match="destroyed"):
        cgroup.join_fds()


def test_destroy_tolerates_directories_already_gone(make) -> None:
    cgroup = make(Limits(pids=5))
    for path in set(cgroup.paths.values()):
        path.rmdir()
    cgroup.destroy()
    assert not [p for p in cgroup.paths.values() if p.exists()]


def test_name_in_use_is_an_error(make) -> None:
    first = make(Limits(pids=5))
    with pytest.raises(CgroupError, match="exists already"):
        Cgroup.create(first.name, Limits(pids=5))
    assert all(p.exists() for p in first.paths.values())  # the failed create left the first one alone


LEAVE_BEHIND = """\
import os, signal, subprocess, sys
from builder.cgroups import Cgroup, Limits
cgroup = Cgroup.create(sys.argv[1], Limits(pids=10))
pid = 0
if sys.argv[2] == "live":
    fds = cgroup.join_fds()
    pid = subprocess.Popen(["sleep", "60"], preexec_fn=lambda: [os.write(fd, b"0") for fd in fds],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid
print(pid, *sorted({str(p) for p in cgroup.paths.values()}), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def leave_behind(name: str, kind: str) -> tuple[int, list[str]]:
    """A builder that creates a cgroup and dies by SIGKILL; its leftovers are children of our own cgroups."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", LEAVE_BEHIND, name, kind],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=20,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    pid, *paths = result.stdout.split()
    return int(pid), paths


def test_sweep_stale(make) -> None:
    token = f"pybuild-test-{secrets.token_hex(4)}-"
    _, stale = leave_behind(token + "stale", "empty")
    sleeper, busy = leave_behind(token + "busy", "live")
    try:
        live = make(Limits(pids=5), name=token + "live")  # a running build: its lock keeps it
        assert stale and busy
        assert sorted(sweep_stale(prefix=token)) == stale
        assert not [p for p in stale if os.path.exists(p)]
        assert all(os.path.exists(p) for p in busy)
        assert all(p.exists() for p in live.paths.values())
        assert sweep_stale(prefix=token) == []
    finally:
        os.kill(sleeper, signal.SIGKILL)
    removed: list[str] = []
    wait_for(lambda: bool(removed.extend(sweep_stale(prefix=token)) or removed))
    assert sorted(removed) == busy


def test_remove_stale_by_name(make) -> None:
    token = f"pybuild-test-{secrets.token_hex(4)}-"
    _, stale = leave_behind(token + "stale", "empty")
    sleeper, busy = leave_behind(token + "busy", "live")
    try:
        live = make(Limits(pids=5), name=token + "live")
        assert remove_stale(token + "stale") is True and not [p for p in stale if os.path.exists(p)]
        assert remove_stale(token + "busy") is False and all(os.path.exists(p) for p in busy)
        assert remove_stale(token + "live") is False and all(p.exists() for p in live.paths.values())
        assert remove_stale(token + "never-made") is True
    finally:
        os.kill(sleeper, signal.SIGKILL)
    wait_for(lambda: remove_stale(token + "busy"))
    assert not [p for p in busy if os.path.exists(p)]
    with pytest.raises(ValueError):
        remove_stale("pybuild-init")


def test_sweep_stale_needs_a_prefix() -> None:
    with pytest.raises(ValueError, match="prefix"):
        sweep_stale(prefix="")


def test_v2_node_joined_counted_and_killed() -> None:
    """The v2 code path on a real cgroup2 tree, even on a hybrid host where it carries no limit controller."""
    if os.geteuid() != 0:
        pytest.skip("needs root: creates a cgroup")
    unified = detect_layout().unified
    if unified is None or unified.own is None:
        pytest.skip("no cgroup v2 hierarchy with a visible own cgroup on this host")
    path = unified.own / _name()
    try:
        path.mkdir()
    except PermissionError as error:
        pytest.skip(f"own cgroup v2 not writable: {error}")
    lock = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(lock, fcntl.LOCK_EX)
    cgroup = Cgroup(path.name, Limits(), (_Node(path, 2, frozenset(), lock),), ())
    try:
        proc = spawn(cgroup, "import os, time\nx = sum(range(1_000_000))\nos.fork()\ntime.sleep(60)")
        wait_for(lambda: len(procs(path)) == 2 and cgroup.stats().cpu_usage_ns > 1_000_000)
        cgroup.destroy()
        assert not path.exists()
        assert proc.wait(timeout=5) == -signal.SIGKILL
        assert cgroup.stats().cpu_usage_ns > 1_000_000
    finally:
        if path.exists():
            _kill(path, 2, time.monotonic() + 2)
            path.rmdir()


@pytest.fixture
def v2_cgroup():
    """A fresh child of this process's own v2 cgroup, to check the v2 rules wherever a v2 tree exists."""
    if os.geteuid() != 0:
        pytest.skip("needs root: creates a cgroup")
    unified = detect_layout().unified
    if unified is None or unified.own is None:
        pytest.skip("no cgroup v2 hierarchy with a visible own cgroup on this host")
    path = unified.own / _name()
    path.mkdir()
    yield path
    _kill(path, 2, time.monotonic() + 2)
    _remove_tree(path, time.monotonic() + 2)
    assert not path.exists()


def _v2_layout(own: Path, controllers: set[str]) -> Layout:
    """The layout pybuild would see if it ran in `own` and `own` offered `controllers`."""
    return Layout((Hierarchy(2, frozenset(controllers), "/" + own.name, own.parent, own),))


def test_v2_controller_not_offered_is_a_warning(v2_cgroup: Path) -> None:
    """A limit whose controller the own cgroup does not offer is a warning; its processes are not moved for it."""
    if "pids" in (v2_cgroup / "cgroup.controllers").read_text().split():
        pytest.skip("this host's v2 tree offers pids to a new cgroup: nothing to refuse")
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        (v2_cgroup / "cgroup.procs").write_text(str(sleeper.pid))
        cgroup = Cgroup.create(_name(), Limits(pids=5), layout=_v2_layout(v2_cgroup, {"pids"}))
        assert dict(cgroup.paths) == {} and cgroup.join_fds() == () and cgroup.evacuated is None
        assert len(cgroup.warnings) == 1
        assert cgroup.warnings[0].startswith("pids limit not applied: ") and "cgroup.controllers" in cgroup.warnings[0]
        assert not [p for p in v2_cgroup.iterdir() if p.is_dir()]  # no pybuild-init either
        assert procs(v2_cgroup) == {sleeper.pid}
        cgroup.destroy()
    finally:
        sleeper.kill()
        sleeper.wait()


# ---------------------------------------------------------------------------
# Evacuation (cgroup v2)


def test_layout_base_beside_pybuild_init() -> None:
    """Once pybuild runs in <own>/pybuild-init, nodes go to <own>; a namespace root named so is used itself."""
    mountinfo = "35 24 0:30 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    scope = "/user.slice/user-0.slice/session-1.scope"
    before = detect_layout(mountinfo, f"0::{scope}\n").unified
    assert before.base == before.own == Path("/sys/fs/cgroup" + scope)
    after = detect_layout(mountinfo, f"0::{scope}/{INIT_NAME}\n").unified
    assert after.own == Path(f"/sys/fs/cgroup{scope}/{INIT_NAME}") and after.base == before.own
    container = f"35 24 0:30 /{INIT_NAME} /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"  # cgroupns root
    inside = detect_layout(container, f"0::/{INIT_NAME}\n").unified
    assert inside.own == inside.base == Path("/sys/fs/cgroup")
    v1 = detect_layout("32 31 0:29 / /c rw - cgroup cgroup rw,pids\n", f"4:pids:/{INIT_NAME}\n").find("pids")
    assert v1.base == v1.own == Path(f"/c/{INIT_NAME}")


def test_pybuild_init_is_not_a_run_name() -> None:
    with pytest.raises(ValueError, match="reserved"):
        Cgroup.create(INIT_NAME, Limits(pids=1))


_SPARE = ("hugetlb", "misc", "rdma", "pids")  # controllers a scratch tree can take without disturbing much


@pytest.fixture
def fake_own():
    """(own, controller): a scratch `<base>/pybuild-test-*/own` v2 cgroup offering `controller`, not enabled.

    `<base>` is this process's v2 cgroup (or, after an evacuation, the one it
    started in), whose `cgroup.subtree_control` gets `controller` if it lacks
    it, and loses it again afterwards. Whatever runs in the scratch tree at
    the end is killed, and the tree removed.
    """
    if os.geteuid() != 0:
        pytest.skip("needs root: creates cgroups and moves processes between them")
    unified = detect_layout().unified
    if unified is None or unified.base is None:
        pytest.skip("no cgroup v2 hierarchy with a visible own cgroup on this host")
    top = unified.base
    offered = (top / "cgroup.controllers").read_text().split()
    if not offered:
        pytest.skip(f"{top} offers no cgroup v2 controller to children: nothing to enable")
    controller = next((c for c in _SPARE if c in offered), min(offered))
    enabled_by_us = False
    if controller not in (top / "cgroup.subtree_control").read_text().split():
        try:
            (top / "cgroup.subtree_control").write_text(f"+{controller}")
        except OSError as error:
            pytest.skip(f"cannot enable {controller} in {top} for a scratch tree: {error.strerror}")
        enabled_by_us = True
    scratch = top / _name()
    try:
        scratch.mkdir()
        (scratch / "cgroup.subtree_control").write_text(f"+{controller}")
        own = scratch / "own"
        own.mkdir()
        assert controller in (own / "cgroup.controllers").read_text().split()
        assert (own / "cgroup.subtree_control").read_text().split() == []
        yield own, controller
    finally:
        assert os.getpid() not in {pid for d in _tree(scratch) for pid in _pids(d)}
        if scratch.exists():
            _kill(scratch, 2, time.monotonic() + 2)
            _remove_tree(scratch, time.monotonic() + 2)
        if enabled_by_us:
            try:
                (top / "cgroup.subtree_control").write_text(f"-{controller}")
            except OSError:
                pass  # something else took it up meanwhile; leave it on
    assert not scratch.exists()


def sleepers(where: Path, count: int) -> list[subprocess.Popen[bytes]]:
    """`count` sleeping processes in the cgroup `where`."""
    made = [subprocess.Popen(["sleep", "60"]) for _ in range(count)]
    for proc in made:
        (where / "cgroup.procs").write_text(str(proc.pid))
    return made


def reap(made: list[subprocess.Popen[bytes]]) -> None:
    for proc in made:
        proc.kill()
        proc.wait()


def subtree_control(path: Path) -> list[str]:
    return (path / "cgroup.subtree_control").read_text().split()


def as_mounted(top: Path) -> str:
    """A mountinfo with one cgroup2 mount showing the cgroup `top` as its root, as a container's cgroupns sees it."""
    point = str(top).replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011").replace("\n", "\\012")
    return f"99 1 0:99 / {point} rw,relatime - cgroup2 cgroup2 rw\n"


def test_v2_evacuation(fake_own: tuple[Path, str]) -> None:
    """Processes of the own cgroup move into pybuild-init, the controller is enabled, nodes go beside it."""
    own, controller = fake_own
    mountinfo = as_mounted(own.parent.parent)
    layout = detect_layout(mountinfo, f"0::/{own.parent.name}/own\n")
    unified = layout.unified
    assert unified.own == unified.base == own and controller in unified.controllers
    init = own / INIT_NAME
    others = sleepers(own, 2)
    made: list[Cgroup] = []
    try:
        assert procs(own) == {p.pid for p in others}
        first = Cgroup._build(_name(), Limits(), {unified: {controller}}, [])
        made.append(first)
        assert first.evacuated == init and first.warnings == ()
        assert procs(init) == {p.pid for p in others} and procs(own) == set()
        assert subtree_control(own) == [controller]
        assert dict(first.paths) == {controller: own / first.name}
        assert controller in (own / first.name / "cgroup.controllers").read_text().split()
        joined = spawn(first, "import time\ntime.sleep(60)")
        wait_for(lambda: procs(own / first.name) == {joined.pid})

        # The layout pybuild sees afterwards: it runs in pybuild-init; nodes still go to own.
        after = detect_layout(mountinfo, f"0::/{own.parent.name}/own/{INIT_NAME}\n").unified
        assert after.own == init and after.base == own and controller in after.controllers
        second = Cgroup._build(_name(), Limits(), {after: {controller}}, [])
        made.append(second)
        assert second.evacuated is None and dict(second.paths) == {controller: own / second.name}
        third = Cgroup._build(_name(), Limits(), {unified: {controller}}, [])  # a layout read before: same
        made.append(third)
        assert third.evacuated is None and dict(third.paths) == {controller: own / third.name}
        assert not [p for p in init.iterdir() if p.is_dir()]
        assert procs(init) == {p.pid for p in others} and procs(own) == set()

        # A leftover beside them is swept; live nodes are not, nor pybuild-init, even once empty.
        stale = own / _name()
        stale.mkdir()
        reap(others)
        wait_for(lambda: procs(init) == set())
        assert sweep_stale(layout=Layout((after,))) == [str(stale)]
        assert sweep_stale(layout=layout) == []
        assert sweep_stale(prefix=INIT_NAME, layout=Layout((after,))) == []
        assert init.is_dir() and all(p.is_dir() for c in made for p in c.paths.values())

        for cgroup in made:
            cgroup.destroy()
        assert joined.wait(timeout=5) == -signal.SIGKILL
        assert [p.name for p in own.iterdir() if p.is_dir()] == [INIT_NAME]
    finally:
        for cgroup in made:
            cgroup.destroy()
        reap(others)


def test_v2_evacuation_skips_processes_that_exited(fake_own: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A process listed in own that is gone when moved (ESRCH) is skipped; the others move."""
    own, controller = fake_own
    gone = subprocess.Popen(["true"])
    gone.wait()
    real_pids = cgroups._pids
    monkeypatch.setattr(cgroups, "_pids", lambda path: [*real_pids(path), gone.pid] if path == own else real_pids(path))
    others = sleepers(own, 1)
    try:
        layout = detect_layout(as_mounted(own.parent.parent), f"0::/{own.parent.name}/own\n")
        cgroup = Cgroup._build(_name(), Limits(), {layout.unified: {controller}}, [])
        assert cgroup.evacuated == own / INIT_NAME and procs(own / INIT_NAME) == {others[0].pid}
        assert subtree_control(own) == [controller]
        cgroup.destroy()
    finally:
        reap(others)


FORKER = "while :; do sleep 0.01; done"  # a new process in its cgroup every 10 ms


def test_v2_evacuation_moves_the_caller(fake_own: tuple[Path, str]) -> None:
    """A pybuild that really runs in own: it moves itself, a sleeper and a busy forker, then builds beside itself."""
    own, controller = fake_own
    init = own / INIT_NAME
    others = sleepers(own, 1)
    others.append(subprocess.Popen(["sh", "-c", FORKER]))
    (own / "cgroup.procs").write_text(str(others[-1].pid))
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            os.close(r)
            (own / "cgroup.procs").write_text("0")
            report: dict[str, object] = {}
            try:
                before = detect_layout().unified
                first = Cgroup._build(_name(), Limits(), {before: {controller}}, [])
                after = detect_layout().unified
                second = Cgroup._build(_name(), Limits(), {after: {controller}}, [])
                report = {
                    "own": [str(before.own), str(after.own)],
                    "base": str(after.base),
                    "evacuated": [str(first.evacuated), str(second.evacuated)],
                    "nodes": [str(first.paths[controller]), str(second.paths[controller])],
                    "self": Path("/proc/self/cgroup").read_text(),
                }
                first.destroy()
                second.destroy()
                code = 0
            except Exception as error:  # noqa: BLE001 - whatever fails, the parent reports it
                report = {"error": repr(error)}
            os.write(w, json.dumps(report).encode())
        finally:
            os._exit(code)
    os.close(w)
    try:
        with os.fdopen(r, "rb") as pipe:
            report = json.loads(pipe.read())
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0, report
        assert report["own"] == [str(own), str(init)] and report["base"] == str(own)
        assert report["evacuated"] == [str(init), "None"]
        assert [Path(p).parent for p in report["nodes"]] == [own, own]
        assert report["self"].endswith(f"/own/{INIT_NAME}\n")
        assert procs(own) == set() and {p.pid for p in others} <= procs(init)
        assert subtree_control(own) == [controller]
        assert [p.name for p in own.iterdir() if p.is_dir()] == [INIT_NAME]
    finally:
        reap(others)


@pytest.mark.parametrize("reuse", [False, True], ids=["fresh", "reused"])
def test_v2_evacuation_undone_when_a_process_cannot_move(
    fake_own: tuple[Path, str], monkeypatch: pytest.MonkeyPatch, reuse: bool
) -> None:
    """One process the kernel will not move: the others go back, a pybuild-init made for it goes, one line."""
    own, controller = fake_own
    init = own / INIT_NAME
    resident = []
    if reuse:  # an earlier evacuation's pybuild-init, with its process
        init.mkdir()
        resident = sleepers(init, 1)
    others = sleepers(own, 3)
    try:
        stuck = int((own / "cgroup.procs").read_text().split()[-1])  # the last listed: the others move first
        real_move = cgroups._move

        def move(fd: int, pid: int) -> None:
            if pid == stuck:
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
            real_move(fd, pid)

        monkeypatch.setattr(cgroups, "_move", move)
        layout = detect_layout(as_mounted(own.parent.parent), f"0::/{own.parent.name}/own\n")
        with pytest.raises(InternalProcessConflict) as caught:
            Cgroup._build(_name(), Limits(), {layout.unified: {controller}}, [])
        message = str(caught.value)
        assert "\n" not in message and str(own) in message and f"process {stuck} " in message
        assert procs(own) == {p.pid for p in others}
        assert subtree_control(own) == []
        if reuse:
            assert procs(init) == {p.pid for p in resident}
            assert [p.name for p in own.iterdir() if p.is_dir()] == [INIT_NAME]
        else:
            assert not [p for p in own.iterdir() if p.is_dir()]
    finally:
        reap(others + resident)
