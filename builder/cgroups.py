"""Resource limits for one sandboxed process tree: memory, CPU and process count, through cgroups.

A build step runs in a namespace sandbox; this module gives that sandbox a
cgroup of its own, so that `--memory 512m --cpus 1.5 --pids-limit 256` hold
for everything the step starts, and so that whatever the step leaves running
can be found and killed afterwards. It works on the three layouts Linux hosts
have: cgroup v1, cgroup v2, and the hybrid of both.

Vocabulary
    controller   the kernel part that enforces one resource: `memory`, `cpu`,
                 `pids`; on v1 also `cpuacct`, which only counts CPU time
    hierarchy    one mounted tree of cgroups. v1 has a tree per controller, or
                 per group of co-mounted controllers (`cpu,cpuacct`); v2 has a
                 single unified tree. Each controller is bound to exactly one
                 hierarchy, so on a *hybrid* host (v1 trees for memory, cpu,
                 pids... beside a v2 tree at /sys/fs/cgroup/unified that
                 carries whatever is left, often nothing or only hugetlb) a
                 controller is either v1 or v2, never both.
    own cgroup   the cgroup this process is in, per hierarchy. Found, never
                 assumed: /proc/self/cgroup names it relative to the process's
                 cgroup namespace, and the mount's root field in
                 /proc/self/mountinfo says which cgroup the mount point shows
                 (a container may see the host's `/docker/<id>` mounted as
                 its /sys/fs/cgroup/memory). See `detect_layout`.
    node         one directory this module creates: `<own cgroup>/<name>` in
                 one hierarchy (on v2 beside `pybuild-init` once pybuild runs
                 in it; see Evacuation). v2 needs one node; v1 one per
                 hierarchy used.
    join         a process moves itself into a node by writing "0" (meaning
                 "the writer") to the node's `cgroup.procs`.
    limits       `Limits`: the values asked for, in docker's terms.

Lifecycle

    create    `Cgroup.create(name, limits)` makes the nodes as children of the
              own cgroup(s) and writes the limits. Limits that cannot be had
              here (no such controller, a cgroup not delegated to this user,
              a read-only cgroupfs) are not errors: each becomes one line in `.warnings`, for the
              caller to show, and the build runs without that limit.
    join      `join_fds()` opens each node's `cgroup.procs` for writing. The
              sandbox forks; the child writes b"0" to every fd, then unshares
              its namespaces (the cgroup namespace after joining, so that the
              child sees its node as "/") and execs. The parent calls `close_fds()`.
    observe   after the step: `oom_killed()` and `stats()`.
    destroy   `destroy()` kills what is still running in the nodes and removes
              them. It is idempotent, and `oom_killed()`/`stats()` keep
              answering with the values read just before removal.

While a `Cgroup` lives it holds an exclusive flock on each node directory.
A builder killed with SIGKILL cannot destroy its nodes, but its locks die
with it: `sweep_stale()` removes `pybuild-*` nodes that nobody locks and no
process is in, and leaves alone those of running builds (and pybuild-init).

Rules this module keeps
    - It creates cgroups only as children of the cgroup the calling process
      started in (per hierarchy on v1), and removes what it creates; the one
      exception is `pybuild-init`, below.
    - cgroup v2 allows enabling controllers for children (`+memory` in
      `cgroup.subtree_control`) only in a cgroup without processes of its
      own, the root excepted ("no internal processes"). If the own cgroup
      already enables what is needed, it is used. Only controllers the own
      cgroup's `cgroup.controllers` offers are enabled; a limit whose
      controller is not offered is a warning. Where the kernel refuses with
      EBUSY because the own cgroup has processes, see "Evacuation".
    - `Limits()` (nothing set) needs no cgroup: `create` then makes nothing,
      `join_fds()` is empty, `stats()` has only None and `destroy()` has
      nothing to do. The sandbox runs exactly as without this module.
    - With any limit set, on v1 the `memory` and `cpuacct` hierarchies are
      joined too when they are writable, so that `stats()` can count; no
      warning if they are not. On v2 `cpu.stat` counts in every cgroup.

Evacuation (cgroup v2)
    On a v2-only host pybuild usually starts in a cgroup with processes (a
    session scope, a service, a CI job, a container's cgroupns root), where
    the kernel refuses to enable controllers for children (EBUSY). Then, as
    rootlesskit's `--evacuate-cgroup2` and docker-in-docker do, `create`
    makes the leaf `<own>/pybuild-init`, moves every process of `<own>` into
    it (pybuild too; in rounds, as processes may appear; one that exits
    meanwhile is skipped), enables the controllers and makes `<own>/<name>`
    as usual; `Cgroup.evacuated` is then that pybuild-init directory. If a
    process cannot be moved, those moved go back and `create` raises
    `InternalProcessConflict`. Afterwards /proc/self/cgroup names
    `<own>/pybuild-init`; when the own cgroup is named so, nodes are made
    beside it, in its parent (`Hierarchy.base`): still children of the cgroup
    pybuild started in, never nested in pybuild-init. pybuild-init is kept
    and reused, never removed (not by `destroy`, not by `sweep_stale`, even
    empty): pybuild and the session live in it, the parent can no longer
    take processes back, and an empty one may be about to receive another
    pybuild's evacuation. No run may be named pybuild-init.

Limits, as docker means them
    memory       bytes. v1 `memory.limit_in_bytes`; v2 `memory.max`.
    memory_swap  memory plus swap, in bytes, as `docker --memory-swap`:
                 None means equal to `memory` (no swap at all), -1 unlimited
                 swap. v1 `memory.memsw.limit_in_bytes` where the kernel
                 accounts swap, else `memory.swappiness` 0 to approximate "no
                 swap"; v2 `memory.swap.max` = memory_swap - memory.
    cpus         CPUs' worth of time: 0.5 is 50 ms in every 100 ms period.
                 v1 `cpu.cfs_period_us`/`cpu.cfs_quota_us`; v2 `cpu.max`.
    pids         tasks (processes and threads) at most: `pids.max`. Past it,
                 fork and clone fail with EAGAIN; nothing is killed.

Example

    >>> limits = Limits(memory=parse_size("512m"), cpus=1.5, pids=256)
    >>> with Cgroup.create("pybuild-" + run_id, limits) as cgroup:
    ...     for line in cgroup.warnings:
    ...         console.warn(line)
    ...     fds = cgroup.join_fds()
    ...     pid = os.fork()
    ...     if pid == 0:                      # the step's process
    ...         for fd in fds:
    ...             os.write(fd, b"0")         # join, before exec
    ...         os.execv("/bin/sh", ["sh", "-c", "make"])
    ...     cgroup.close_fds()
    ...     status = os.waitpid(pid, 0)[1]
    ...     if cgroup.oom_killed():
    ...         raise StepFailed("killed: out of memory (limit 512 MiB)")
    ...     cgroup.stats()
    Stats(cpu_usage_ns=48213345678, memory_peak=301989888)

Errors (CgroupError is builder.errors's, a SandboxError; re-exported here)

    CgroupError                        a cgroup operation failed; one line for the user
    ├── InvalidLimit (ValueError)      a size or limit that makes no sense ("12x", cpus=0)
    └── InternalProcessConflict        v2 cannot enable a controller where pybuild runs, nor
                                       move the processes there into pybuild-init
"""

from __future__ import annotations

import errno
import fcntl
import math
import os
import re
import signal
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType

from .errors import CgroupError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from types import TracebackType
    from typing import Self

__all__ = [
    "Cgroup",
    "CgroupError",
    "Hierarchy",
    "InternalProcessConflict",
    "InvalidLimit",
    "Layout",
    "Limits",
    "Stats",
    "detect_layout",
    "parse_size",
    "remove_stale",
    "sweep_stale",
]

PERIOD_US = 100_000  # the CFS period pybuild sets; docker's default too
MIN_QUOTA_US = 1_000  # the kernel refuses quotas below 1 ms
KILL_TIMEOUT = 2.0  # seconds destroy() waits for killed processes to leave
MAX_BYTES = 2**63 - 1
INIT_NAME = "pybuild-init"  # the v2 leaf the own cgroup's processes are moved into (see Evacuation)
EVACUATION_ROUNDS = 8  # times the processes of the own cgroup are listed and moved before giving up


class InvalidLimit(CgroupError, ValueError):
    """A size that does not parse, or limits that contradict each other."""


class InternalProcessConflict(CgroupError):
    """cgroup v2 forbids enabling the controllers in the own cgroup while processes live in it, and they cannot be moved."""


# ---------------------------------------------------------------------------
# Values


@dataclass(frozen=True, slots=True)
class Limits:
    """What to limit; None leaves a resource unlimited. See the module docstring for the exact meaning."""

    memory: int | None = None  # bytes; memory+swap = memory (no swap) unless memory_swap is given
    memory_swap: int | None = None  # bytes of memory+swap as docker --memory-swap; -1: unlimited swap
    cpus: float | None = None  # 0.5 -> quota 50000 us per period 100000 us
    pids: int | None = None

    def __post_init__(self) -> None:
        if self.memory is not None and (not _is_int(self.memory) or self.memory <= 0):
            raise InvalidLimit(f"memory limit must be a positive number of bytes, not {self.memory!r}")
        if self.memory_swap is not None:
            if self.memory is None:
                raise InvalidLimit("a memory-swap limit needs a memory limit too")
            if not _is_int(self.memory_swap):
                raise InvalidLimit(f"memory-swap must be a number of bytes or -1, not {self.memory_swap!r}")
            if self.memory_swap != -1 and self.memory_swap < self.memory:
                raise InvalidLimit(
                    f"memory-swap {self.memory_swap!r} is less than memory {self.memory}: it counts memory plus"
                    " swap, so it is at least the memory limit (or -1 for unlimited swap)"
                )
        if self.cpus is not None and (
            isinstance(self.cpus, bool) or not isinstance(self.cpus, (int, float)) or not math.isfinite(self.cpus)
            or round(self.cpus * PERIOD_US) < MIN_QUOTA_US
        ):
            raise InvalidLimit(f"cpus must be a number of at least 0.01, not {self.cpus!r}")
        if self.pids is not None and (not _is_int(self.pids) or self.pids < 1):
            raise InvalidLimit(f"pids limit must be at least 1, not {self.pids!r}")

    def empty(self) -> bool:
        """True when nothing is limited: no cgroup is needed."""
        return self.memory is None and self.cpus is None and self.pids is None


@dataclass(frozen=True, slots=True)
class Stats:
    """What a run cgroup used; None where this host cannot tell."""

    cpu_usage_ns: int | None  # CPU time of all its processes (v1 cpuacct.usage, v2 cpu.stat usage_usec)
    memory_peak: int | None  # bytes at most (v1 memory.max_usage_in_bytes, v2 memory.peak)


@dataclass(frozen=True, slots=True)
class Hierarchy:
    """One cgroup hierarchy as this process sees it, and where its own cgroup is in it."""

    version: int  # 1 or 2
    controllers: frozenset[str]  # v1: bound to this tree; v2: listed in the base's cgroup.controllers
    cgroup: str  # the own cgroup as /proc/self/cgroup names it: "/", "/user.slice/...", "/../x"
    mountpoint: Path | None  # a mount of this hierarchy, None if none is mounted
    own: Path | None  # the own cgroup's directory; None when no mount shows it (see problem)
    problem: str | None = None  # why own is None, as a phrase for warnings

    @property
    def base(self) -> Path | None:
        """The directory nodes are made in: the own cgroup, or on v2 its parent when it is `pybuild-init`.

        After an evacuation this process lives in `<started in>/pybuild-init`;
        nodes go beside it, into the cgroup it started in, never inside it.
        """
        own = self.own
        if own is not None and self.version == 2 and own.name == INIT_NAME and own != self.mountpoint:
            return own.parent
        return own


@dataclass(frozen=True, slots=True)
class Layout:
    """The cgroup hierarchies of this process: which controller lives where."""

    hierarchies: tuple[Hierarchy, ...]

    @property
    def mode(self) -> str:
        """One of v1, v2, hybrid (v1 controller trees beside a v2 mount) or none."""
        v1 = any(h.version == 1 and h.mountpoint for h in self.hierarchies)
        v2 = any(h.version == 2 and h.mountpoint for h in self.hierarchies)
        return {(True, True): "hybrid", (True, False): "v1", (False, True): "v2"}.get((v1, v2), "none")

    def find(self, controller: str) -> Hierarchy | None:
        """The hierarchy that carries `controller`, or None."""
        return next((h for h in self.hierarchies if controller in h.controllers), None)

    @property
    def unified(self) -> Hierarchy | None:
        """The v2 hierarchy, if this process has one."""
        return next((h for h in self.hierarchies if h.version == 2), None)


# ---------------------------------------------------------------------------
# Sizes


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(?:([kmgtp])(?:i?b|i)?|b)?", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_size(text: str) -> int:
    """Bytes in a docker-style size: "1024", "512k", "256m", "1.5g", "2GiB", "64mb", "8ki" (binary units).

    Case does not matter; fractions of a byte are dropped. Raises InvalidLimit
    on anything else. `-1` (unlimited swap) is not a size: callers of
    `--memory-swap` handle it before calling this.
    """
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise InvalidLimit(
            f"invalid size {text!r}: expected a number with an optional unit b, k, m, g, t or p (512m, 1.5g)"
        )
    value = int(Decimal(match[1]) * _UNITS[(match[2] or "").lower()])
    if value > MAX_BYTES:
        raise InvalidLimit(f"size {text!r} is too large")
    return value


# ---------------------------------------------------------------------------
# Layout


@dataclass(frozen=True, slots=True)
class _Mount:
    root: str
    mountpoint: Path
    fstype: str
    options: frozenset[str]


def detect_layout(mountinfo: str | None = None, proc_cgroup: str | None = None) -> Layout:
    """The hierarchies of this process, from /proc/self/mountinfo and /proc/self/cgroup.

    Either text may be passed instead of reading /proc (for tests). Named v1
    hierarchies without controllers (`name=systemd`) are left out.
    """
    try:
        if mountinfo is None:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        if proc_cgroup is None:
            proc_cgroup = Path("/proc/self/cgroup").read_text()
    except OSError:  # no /proc, or a kernel without cgroups
        return Layout(())
    mounts = _cgroup_mounts(mountinfo)
    hierarchies = []
    for line in proc_cgroup.splitlines():
        number, _, rest = line.partition(":")
        names, _, path = rest.partition(":")
        if number == "0" and not names:
            candidates = [m for m in mounts if m.fstype == "cgroup2"]
            version, controllers = 2, frozenset()
        else:
            controllers = frozenset(n for n in names.split(",") if n and not n.startswith("name="))
            if not controllers:
                continue
            candidates = [m for m in mounts if m.fstype == "cgroup" and controllers <= m.options]
            version = 1
        mountpoint, own, problem = _locate(path, candidates)
        hierarchy = Hierarchy(version, controllers, path, mountpoint, own, problem)
        if version == 2 and hierarchy.base is not None:
            try:  # what the cgroup nodes are made in offers them
                controllers = frozenset((hierarchy.base / "cgroup.controllers").read_text().split())
                hierarchy = Hierarchy(version, controllers, path, mountpoint, own, problem)
            except OSError:
                pass
        hierarchies.append(hierarchy)
    return Layout(tuple(hierarchies))


def _cgroup_mounts(mountinfo: str) -> list[_Mount]:
    by_mountpoint: dict[str, _Mount] = {}  # a later mount on the same point hides the earlier one
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        try:
            dash = fields.index("-", 6)
        except ValueError:
            continue
        if len(fields) < dash + 4:
            continue
        mountpoint = _unescape(fields[4])
        options = frozenset(fields[dash + 3].split(","))
        by_mountpoint[mountpoint] = _Mount(_unescape(fields[3]), Path(mountpoint), fields[dash + 1], options)
    return [m for m in by_mountpoint.values() if m.fstype in ("cgroup", "cgroup2")]


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (\\040)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def _locate(path: str, mounts: list[_Mount]) -> tuple[Path | None, Path | None, str | None]:
    """Map a /proc/self/cgroup path to a directory: mountpoint + (path relative to the mount's root)."""
    if not mounts:
        return None, None, "its hierarchy is not mounted here"
    if ".." in path.split("/"):
        # The cgroup is outside this process's cgroup namespace; no mount can show it.
        return mounts[0].mountpoint, None, f"the own cgroup {path} is outside this cgroup namespace"
    for mount in mounts:
        if ".." in mount.root.split("/"):
            continue
        root = mount.root.rstrip("/")
        if path == mount.root or path.startswith(root + "/"):
            return mount.mountpoint, mount.mountpoint / path[len(root) :].lstrip("/"), None
    roots = ", ".join(sorted({m.root for m in mounts}))
    return mounts[0].mountpoint, None, f"the own cgroup {path} is not inside any mount of its hierarchy (roots {roots})"


# ---------------------------------------------------------------------------
# The run cgroup


@dataclass(eq=False, slots=True)
class _Node:
    """One created directory, its hierarchy's version and the controllers used through it."""

    path: Path
    version: int
    controllers: frozenset[str]
    lock: int  # an fd of the directory, flocked while the Cgroup lives


class Cgroup:
    """The cgroup(s) of one sandboxed run: create, join from the child, observe, destroy."""

    def __init__(
        self,
        name: str,
        limits: Limits,
        nodes: tuple[_Node, ...],
        warnings: tuple[str, ...],
        evacuated: Path | None = None,
    ) -> None:
        """Use `Cgroup.create`."""
        self.name = name
        self.limits = limits
        self.warnings = warnings  # one line each: a limit that is not applied, and why
        # the pybuild-init cgroup this create moved the own cgroup's processes (pybuild's too) into, else None
        self.evacuated = evacuated
        # controller -> its node's directory, e.g. {"memory": Path(".../memory/<own>/pybuild-1")}
        self.paths: Mapping[str, Path] = MappingProxyType({c: n.path for n in nodes for c in n.controllers})
        self._nodes = list(nodes)  # nodes still to remove
        self._all = nodes
        self._join: tuple[int, ...] | None = None
        self._final: tuple[bool, Stats] | None = None  # read by destroy() before removal

    @classmethod
    def create(cls, name: str, limits: Limits, *, layout: Layout | None = None) -> Cgroup:
        """Make the nodes `<own cgroup>/<name>` and write the limits; see the module docstring.

        `name` is one path component, by convention `pybuild-<run id>`, so
        that `sweep_stale` finds it. Raises CgroupError when a node exists
        already or the kernel refuses a value, InternalProcessConflict as
        described above; a limit this host cannot apply is a warning instead.
        On v2 this may move the processes of the own cgroup, this one's too,
        into `pybuild-init` (see Evacuation; `.evacuated` says so).
        """
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,200}", name) or name.startswith("cgroup."):
            raise ValueError(f"cgroup name {name!r}: use letters, digits and ._- (for example pybuild-<run id>)")
        if name == INIT_NAME:
            raise ValueError(f"cgroup name {name!r} is reserved: pybuild's processes are moved there on cgroup v2")
        if limits.empty():
            return cls(name, limits, (), ())
        layout = layout or detect_layout()
        warnings: list[str] = []
        plan: dict[Hierarchy, set[str]] = {}  # hierarchy -> controllers whose limits it must carry
        for controller in _needed(limits):
            hierarchy = layout.find(controller)
            if hierarchy is None or hierarchy.own is None:
                unified = layout.unified
                why = hierarchy.problem if hierarchy else f"no cgroup hierarchy here offers the {controller} controller"
                if hierarchy is None and unified is not None and unified.problem:
                    why += f" (cgroup v2: {unified.problem})"
                warnings.append(_not_applied(controller, why))
                continue
            plan.setdefault(hierarchy, set()).add(controller)
        for controller in ("memory", "cpuacct"):  # v1 accounting for stats(); best effort
            hierarchy = layout.find(controller)
            if hierarchy and hierarchy.version == 1 and hierarchy.own is not None:
                plan.setdefault(hierarchy, set())
        return cls._build(name, limits, plan, warnings)

    @classmethod
    def _build(cls, name: str, limits: Limits, plan: Mapping[Hierarchy, set[str]], warnings: list[str]) -> Cgroup:
        """Make a node per planned hierarchy, enabling (v2) and limiting the controllers planned for it.

        `create` plans memory, cpu and pids; the tests plan whatever
        controller their v2 tree offers, to run the v2 mechanics for real.
        """
        nodes: list[_Node] = []
        evacuated = None
        try:
            for hierarchy, wanted in plan.items():
                node, moved_to = _make_node(hierarchy, name, wanted, warnings)
                evacuated = evacuated or moved_to
                if node is not None:
                    nodes.append(node)
                    _apply(node, wanted, limits, warnings)
        except BaseException:
            Cgroup(name, limits, tuple(nodes), ())._remove_quietly()
            raise
        return cls(name, limits, tuple(nodes), tuple(warnings), evacuated)

    def join_fds(self) -> tuple[int, ...]:
        """Open (once) and return a write fd of each node's `cgroup.procs`; close-on-exec.

        A forked child joins by writing b"0" to each, before exec. The fds
        stay open in the parent until `close_fds()`.
        """
        if self._final is not None:
            raise CgroupError(f"cgroup {self.name} is destroyed: nothing to join")
        if self._join is None:
            fds: list[int] = []
            try:
                for node in self._nodes:
                    fds.append(os.open(node.path / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC))
            except OSError as error:
                for fd in fds:
                    os.close(fd)
                raise CgroupError(f"cannot open {error.filename} for joining: {error.strerror}") from error
            self._join = tuple(fds)
        return self._join

    def close_fds(self) -> None:
        """Close the fds of `join_fds()` in this process; harmless to repeat."""
        fds, self._join = self._join or (), None
        for fd in fds:
            os.close(fd)

    def oom_killed(self) -> bool:
        """Whether the kernel's OOM killer killed a process of this run cgroup."""
        if self._final is not None:
            return self._final[0]
        return self._read_oom()

    def stats(self) -> Stats:
        """CPU time used and peak memory, where the host counts them."""
        if self._final is not None:
            return self._final[1]
        return self._read_stats()

    def destroy(self) -> None:
        """Kill whatever still runs in the nodes, then remove them. Idempotent.

        v2 writes `cgroup.kill`; v1 (and v2 before Linux 5.14) sends SIGKILL
        to every process listed until none is left, for at most KILL_TIMEOUT
        seconds. Directories already gone are fine; a node that cannot be
        removed raises CgroupError after the others are removed, and another
        call tries it again.
        """
        self.close_fds()
        deadline = time.monotonic() + KILL_TIMEOUT
        for node in self._nodes:
            _kill(node.path, node.version, deadline)
        if self._final is None:
            self._final = (self._read_oom(), self._read_stats())
        failures = []
        for node in list(self._nodes):
            try:
                _remove_tree(node.path, deadline)
            except OSError as error:
                failures.append(f"{node.path}: {error.strerror}")
                continue
            os.close(node.lock)
            self._nodes.remove(node)
        if failures:
            raise CgroupError(f"cannot remove cgroup {'; '.join(failures)}")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.destroy()

    def __repr__(self) -> str:
        moved = f", evacuated to {self.evacuated}" if self.evacuated else ""
        return f"Cgroup({self.name!r}, {', '.join(str(n.path) for n in self._all) or 'no nodes'}{moved})"

    def _remove_quietly(self) -> None:
        try:
            self.destroy()
        except CgroupError:
            pass

    def _read_oom(self) -> bool:
        for node in self._nodes:
            if "memory" not in node.controllers:
                continue
            if node.version == 2:
                return _read_keyed(node.path / "memory.events").get("oom_kill", 0) > 0
            control = _read_keyed(node.path / "memory.oom_control")
            if "oom_kill" in control:
                return control["oom_kill"] > 0
            return control.get("under_oom", 0) > 0  # before Linux 4.13: only an OOM in progress shows
        return False

    def _read_stats(self) -> Stats:
        cpu = peak = None
        for node in self._nodes:
            if node.version == 2:
                usage = _read_keyed(node.path / "cpu.stat").get("usage_usec")
                cpu = usage * 1000 if usage is not None else cpu
                peak = _read_int(node.path / "memory.peak") if "memory" in node.controllers else peak
            else:
                if "cpuacct" in node.controllers:
                    cpu = _read_int(node.path / "cpuacct.usage")
                if "memory" in node.controllers:
                    peak = _read_int(node.path / "memory.max_usage_in_bytes")
        return Stats(cpu_usage_ns=cpu, memory_peak=peak)


def sweep_stale(prefix: str = "pybuild-", *, layout: Layout | None = None) -> list[str]:
    """Remove nodes named `prefix*` that no live Cgroup holds and no process is in.

    They are what a builder killed with SIGKILL leaves behind. Returns the
    directories removed. A node of a running build (its flock is held) or
    with processes still in it is left alone. It looks where `create` makes
    nodes (`Hierarchy.base`: after an evacuation, beside pybuild-init) and
    never removes `pybuild-init`, even empty (see Evacuation).
    """
    if not prefix:
        raise ValueError("sweep_stale needs a prefix: it must not remove every child cgroup")
    layout = layout or detect_layout()
    removed = []
    for base in dict.fromkeys(h.base for h in layout.hierarchies if h.base is not None):
        try:
            entries = [
                e
                for e in os.scandir(base)
                if e.name.startswith(prefix) and e.name != INIT_NAME and e.is_dir(follow_symlinks=False)
            ]
        except OSError:
            continue
        for entry in entries:
            if _remove_if_stale(Path(entry.path)):
                removed.append(entry.path)
    return removed


def remove_stale(name: str, *, layout: Layout | None = None) -> bool:
    """Remove the nodes named exactly `name` (a dead builder's) unless a live Cgroup holds them or a
    process is in them; True when none is left, False when one has to be tried again later."""
    if not name.startswith("pybuild-") or name == INIT_NAME or "/" in name:
        raise ValueError(f"not a pybuild cgroup name: {name!r}")
    layout = layout or detect_layout()
    left = False
    for base in dict.fromkeys(h.base for h in layout.hierarchies if h.base is not None):
        path = Path(base) / name
        if os.path.isdir(path) and not _remove_if_stale(path):
            left = True
    return not left


# ---------------------------------------------------------------------------
# Mechanics


def _needed(limits: Limits) -> list[str]:
    needed = []
    if limits.memory is not None:
        needed.append("memory")
    if limits.cpus is not None:
        needed.append("cpu")
    if limits.pids is not None:
        needed.append("pids")
    return needed


def _not_applied(controller: str, why: str) -> str:
    """The warning for a limit this host cannot apply; `controller` names the limit too (memory, cpu, pids)."""
    return f"{controller} limit not applied: {why}; running without it"


def _make_node(
    hierarchy: Hierarchy, name: str, wanted: set[str], warnings: list[str]
) -> tuple[_Node | None, Path | None]:
    """mkdir and lock `<base>/<name>`; on v2 first make sure the base enables `wanted` for children.

    Returns the node, or None (with a warning per wanted controller) when
    this process may not create it; `wanted` loses the controllers v2
    cannot enable. Second: the pybuild-init cgroup when processes were
    moved there to enable them (v2), else None.
    """
    base = hierarchy.base
    assert base is not None
    evacuated = None
    if hierarchy.version == 2:
        evacuated = _enable_v2(base, wanted, warnings)
        if not wanted:
            return None, evacuated
    path = base / name
    try:
        path.mkdir()
    except FileExistsError:
        raise CgroupError(
            f"cgroup {path} exists already: another build uses the name {name}, or one left it behind"
            " (sweep_stale removes it once it is empty)"
        ) from None
    except OSError as error:
        if error.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT):
            raise CgroupError(f"cannot create cgroup {path}: {error.strerror}") from error
        warnings.extend(_not_applied(c, f"cannot create {path} ({error.strerror.lower()})") for c in sorted(wanted))
        return None, evacuated
    lock = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    fcntl.flock(lock, fcntl.LOCK_EX)
    # The node is fresh and this process is the only one that knows it is ours
    # until the lock is taken; a sweep in between could have removed it.
    if not path.is_dir() or path.stat().st_ino != os.fstat(lock).st_ino:
        os.close(lock)
        raise CgroupError(f"cgroup {path} was removed while it was being created")
    controllers = frozenset(wanted) if hierarchy.version == 2 else hierarchy.controllers
    return _Node(path, hierarchy.version, controllers, lock), evacuated


def _enable_v2(base: Path, wanted: set[str], warnings: list[str]) -> Path | None:
    """Have `base/cgroup.subtree_control` list `wanted`, or explain why not.

    Enables only what `base/cgroup.controllers` offers; the rest, and all
    when the file is not writable, become warnings and leave `wanted`. When
    the kernel refuses because `base` has processes, they are moved into
    `base/pybuild-init` first (see Evacuation), and that directory is
    returned; else None. Raises InternalProcessConflict when they cannot be
    moved, after moving back those that were.
    """
    control = base / "cgroup.subtree_control"
    missing = sorted(wanted - set(control.read_text().split()))
    if not missing:
        return None
    offered = set(_read_text(base / "cgroup.controllers").split())
    if absent := [c for c in missing if c not in offered]:
        why = f"{base} does not offer it to children (not in its cgroup.controllers)"
        warnings.extend(_not_applied(c, why) for c in absent)
        wanted.difference_update(absent)
        missing = [c for c in missing if c in offered]
        if not missing:
            return None
    if not os.access(control, os.W_OK):  # not delegated to this user
        why = f"cannot enable it in {control} (permission denied)"
        warnings.extend(_not_applied(c, why) for c in missing)
        wanted.difference_update(missing)
        return None
    what = f"the {', '.join(missing)} controller{'s' if len(missing) > 1 else ''}"
    evacuation = _Evacuation(base, what)
    enabled = False
    try:
        for rounds in range(EVACUATION_ROUNDS + 1):
            try:
                control.write_text(" ".join(f"+{c}" for c in missing))
                enabled = True
                return evacuation.init if evacuation.moved else None
            except OSError as error:
                if error.errno != errno.EBUSY:
                    if error.errno == errno.ENOENT:  # offered a moment ago: the parent took it back
                        why = f"{base} does not offer it to children (not in its cgroup.controllers)"
                    else:
                        why = f"cannot enable it in {control} ({error.strerror.lower()})"
                    warnings.extend(_not_applied(c, why) for c in missing)
                    wanted.difference_update(missing)
                    return None
            if rounds == EVACUATION_ROUNDS:
                raise evacuation.conflict(
                    f"processes keep appearing in it faster than pybuild moves them into {evacuation.init}"
                )
            evacuation.move_all()  # EBUSY: processes in base (or a cgroup v2 cannot do this in)
        return None  # not reached: the last round raises
    finally:
        if not enabled or not evacuation.moved:  # the latter: every process exited meanwhile
            evacuation.undo()


class _Evacuation:
    """Moving the processes of a v2 cgroup into its `pybuild-init` child, and back if that cannot be finished."""

    def __init__(self, base: Path, what: str) -> None:
        self.base = base
        self.init = base / INIT_NAME
        self.what = what  # "the memory, pids controllers", for messages
        self.ready = False  # pybuild-init exists
        self.made = False  # whether this process created pybuild-init
        self.moved: set[int] = set()
        self.there_before: set[int] = set()  # processes that were in pybuild-init already

    def conflict(self, why: str) -> InternalProcessConflict:
        return InternalProcessConflict(
            f"cannot enable {self.what} in {self.base}/cgroup.subtree_control for pybuild's cgroups: cgroup v2"
            f" allows that only in a cgroup without processes, and {why}; build without resource limits"
        )

    def move_all(self) -> None:
        """One round: move every process listed in base into pybuild-init; raise the conflict if one cannot go."""
        processes = _pids(self.base)
        if not processes:
            raise self.conflict("the kernel refuses though it lists none (a threaded cgroup?)")
        kind = _read_text(self.base / "cgroup.type").strip()
        if kind != "domain":
            raise self.conflict(f"it is a {kind or 'root'} cgroup: moving its processes into a child would not help")
        if 0 in processes:  # cgroup.procs shows processes of a pid namespace above ours as 0
            raise self.conflict("it holds processes of another pid namespace, which pybuild cannot move")
        if not self.ready:
            try:
                self.init.mkdir()
                self.made = True
            except FileExistsError:  # an earlier evacuation's: reuse it
                self.there_before = set(_pids(self.init))
            except OSError as error:
                raise self.conflict(
                    f"it holds {len(processes)} process{'es' if len(processes) > 1 else ''} that pybuild cannot"
                    f" move: cannot create {self.init} ({error.strerror.lower()})"
                ) from error
            self.ready = True
        try:
            fd = os.open(self.init / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
        except OSError as error:
            raise self.conflict(f"pybuild cannot open {self.init}/cgroup.procs ({error.strerror.lower()})") from error
        try:
            for pid in processes:
                try:
                    _move(fd, pid)
                except ProcessLookupError:  # exited meanwhile
                    continue
                except OSError as error:
                    raise self.conflict(
                        f"process {pid} cannot be moved from it into {self.init} ({error.strerror.lower()})"
                    ) from error
                self.moved.add(pid)
        finally:
            os.close(fd)

    def undo(self) -> None:
        """Best effort: move back what this evacuation moved (and their children), remove pybuild-init if made."""
        if not self.moved:
            if self.made:
                _rmdir_quietly(self.init)
            return
        try:
            fd = os.open(self.base / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            for _ in range(EVACUATION_ROUNDS):
                back = [pid for pid in _pids(self.init) if pid not in self.there_before]
                if not back:
                    break
                for pid in back:
                    try:
                        _move(fd, pid)
                    except OSError:
                        pass
        finally:
            os.close(fd)
        if self.made:
            _rmdir_quietly(self.init)


def _move(fd: int, pid: int) -> None:
    """Move process `pid` into the cgroup whose `cgroup.procs` is open as `fd`."""
    os.write(fd, b"%d" % pid)


def _rmdir_quietly(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def _apply(node: _Node, wanted: set[str], limits: Limits, warnings: list[str]) -> None:
    """Write the limits of the controllers in `wanted` into a fresh node."""
    if "memory" in wanted:
        assert limits.memory is not None
        if node.version == 2:
            _set_memory_v2(node.path, limits.memory, limits.memory_swap, warnings)
        else:
            _set_memory_v1(node.path, limits.memory, limits.memory_swap, warnings)
    if "cpu" in wanted:
        assert limits.cpus is not None
        quota = round(limits.cpus * PERIOD_US)
        if node.version == 2:
            _set(node.path, "cpu.max", f"{quota} {PERIOD_US}", "cpu", warnings)
        elif _set(node.path, "cpu.cfs_period_us", str(PERIOD_US), "cpu", warnings):
            _set(node.path, "cpu.cfs_quota_us", str(quota), "cpu", warnings)
    if "pids" in wanted:
        _set(node.path, "pids.max", str(limits.pids), "pids", warnings)


def _set_memory_v1(path: Path, memory: int, memory_swap: int | None, warnings: list[str]) -> None:
    """memory.limit_in_bytes and memory.memsw.limit_in_bytes, in an order the kernel accepts.

    The kernel keeps memsw >= limit at every step, so when the new limit is
    above the current memsw, memsw must grow first; otherwise limit goes first.
    """
    memsw_file = path / "memory.memsw.limit_in_bytes"
    if not memsw_file.exists():  # no swap accounting (swapaccount=0)
        if _set(path, "memory.limit_in_bytes", str(memory), "memory", warnings):
            if memory_swap is None:
                _set(path, "memory.swappiness", "0", "memory", warnings, what="swap")
            elif memory_swap != -1:
                warnings.append("memory-swap limit not applied: the kernel does not account swap; running without it")
        return
    memsw = memory if memory_swap is None else memory_swap
    order = [("memory.limit_in_bytes", memory), ("memory.memsw.limit_in_bytes", memsw)]
    if memsw != -1 and memory > _read_int(memsw_file, default=MAX_BYTES):
        order.reverse()
    for filename, value in order:
        if not _set(path, filename, str(value), "memory", warnings):
            return


def _set_memory_v2(path: Path, memory: int, memory_swap: int | None, warnings: list[str]) -> None:
    if not _set(path, "memory.max", str(memory), "memory", warnings):
        return
    swap = "0" if memory_swap is None else "max" if memory_swap == -1 else str(memory_swap - memory)
    if (path / "memory.swap.max").exists():
        _set(path, "memory.swap.max", swap, "memory", warnings, what="memory-swap")
    elif memory_swap not in (None, -1):
        warnings.append("memory-swap limit not applied: the kernel does not account swap; running without it")


def _set(path: Path, filename: str, value: str, controller: str, warnings: list[str], what: str = "") -> bool:
    """Write one control file. Not delegated or not there: a warning and False; refused: CgroupError."""
    try:
        (path / filename).write_text(value)
        return True
    except OSError as error:
        if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT):
            label = what or controller
            warnings.append(f"{label} limit not applied: cannot write {path / filename} ({error.strerror.lower()})")
            return False
        raise CgroupError(f"cannot set {filename} to {value} in {path}: {error.strerror}") from error


def _read_int(path: Path, default: int | None = None) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return default
    return int(text) if text.lstrip("-").isdigit() else default


def _read_keyed(path: Path) -> dict[str, int]:
    """A flat keyed file ("oom_kill 3" per line): memory.events, cpu.stat, memory.oom_control."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    pairs = (line.split() for line in lines)
    return {p[0]: int(p[1]) for p in pairs if len(p) == 2 and p[1].lstrip("-").isdigit()}


def _pids(path: Path) -> list[int]:
    try:
        return [int(line) for line in (path / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def _tree(path: Path) -> Iterator[Path]:
    """The node and the cgroups a step may have made inside it, deepest first."""
    for directory, _, _ in os.walk(path, topdown=False):
        yield Path(directory)


def _kill(path: Path, version: int, deadline: float) -> None:
    """SIGKILL everything in the node's subtree and wait, at most until `deadline`, for it to leave."""
    if version == 2 and (path / "cgroup.kill").exists():
        try:
            (path / "cgroup.kill").write_text("1")
        except FileNotFoundError:
            return
        while "populated 1" in _read_text(path / "cgroup.events") and time.monotonic() < deadline:
            time.sleep(0.005)
        return
    me = os.getpid()
    while True:
        # pid 0 is a process of another pid namespace; kill(0) would hit our own group.
        victims = [pid for d in _tree(path) for pid in _pids(d) if pid > 0 and pid != me]
        if not victims or time.monotonic() >= deadline:
            return
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.005)


def _remove_tree(path: Path, deadline: float) -> None:
    """rmdir the node and any cgroups inside it; EBUSY (tasks still exiting) is retried until `deadline`."""
    while True:
        try:
            for directory in _tree(path):
                os.rmdir(directory)
            return
        except OSError as error:
            # ENOENT: a cgroup inside went away on its own; walk again.
            if error.errno not in (errno.EBUSY, errno.ENOENT) or time.monotonic() >= deadline:
                raise
            time.sleep(0.005)


def _remove_if_stale(path: Path) -> bool:
    try:
        lock = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # a live Cgroup holds it
        if any(_pids(d) for d in _tree(path)):
            return False
        try:
            for directory in _tree(path):
                os.rmdir(directory)
        except OSError:
            return False
        return True
    finally:
        os.close(lock)


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
