"""Sandboxes: running one command in a container, and what goes in and comes out.

Every RUN step of a build and every `pybuild run` is one `Sandbox.run` of an
`ExecRequest`:

- `rootfs`: the mounts that make the container's `/`, as a snapshotter
  describes them (store.snapshots.Mount): an OverlayFS mount of the parent
  snapshots with a fresh upper directory, where every write lands.
- `argv`, `env` (`KEY=value`), `cwd`, `user` (`name`, `uid`, `name:group`,
  `uid:gid`, resolved in the image's /etc/passwd and /etc/group), `hostname`.
- `network`: "none" (a network namespace of its own with only `lo`) or
  "host" (the host's; builds use it so RUN reaches package mirrors).
- `binds`: host paths mounted into the container (volumes), read-only or not.
- `limits`: memory (and swap), CPU quota, pids (builder.cgroups.Limits).
- `stdin`, `stdout`, `stderr`: file descriptors to hand the command; when
  `stdout`/`stderr` are None, output goes to the `on_output` callback of
  `run` as it comes (`on_output(1 or 2, bytes)`). `tty`: the command gets
  a pseudo-terminal of the container's own as its controlling terminal and
  output, and the caller its master side to relay.
- `timeout`: seconds; the whole container is killed when it runs out.

`run` returns an `ExecResult` once every process of the container is dead
and its cgroup removed: the upper directory is then a plain change set for
the differ (store.layer.write_layer). Its mounts, which no process can reach
any more, go with its namespace right after, in the background; `close()`
drops whatever is left. Mount points the
sandbox had to create (`/proc`, `/etc/hosts`, a volume's target) are removed
from the upper directory again when they are still empty, so they never
reach a layer. Failures to set the container up raise SandboxError; what the
command does, including being killed, is in the result.

    sandbox = NamespaceSandbox()
    rootfs = store.checkout("busybox")
    result = sandbox.run(ExecRequest(argv=("sh", "-c", "echo hi > /greeting"), rootfs=rootfs.mounts))
    assert result.status == 0    # rootfs.upper_dir / "greeting" now exists
    rootfs.remove()

NamespaceSandbox (builder.namespace_sandbox) is the implementation: Linux
namespaces, OverlayFS and cgroups, as root or as an unprivileged user.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Literal, Protocol

from grammar.record import record

if TYPE_CHECKING:
    from collections.abc import Callable

    from store.snapshots import Mount

    from .cgroups import Limits

__all__ = ["Bind", "ExecRequest", "ExecResult", "Network", "Sandbox"]

Network = Literal["none", "host"]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@record
class Bind:
    """A host path mounted at `target` in the container."""

    source: str
    target: str
    readonly: bool = False


@record
class ExecRequest:
    argv: tuple[str, ...]
    rootfs: tuple[Mount, ...]
    env: tuple[str, ...] = ()
    cwd: str = "/"
    user: str = ""
    hostname: str = "pybuild"
    network: Network = "none"
    binds: tuple[Bind, ...] = ()
    limits: Limits | None = None  # builder.cgroups.Limits
    stdin: int | None = None
    stdout: int | None = None
    stderr: int | None = None
    tty: bool = False
    timeout: float | None = None


@record
class ExecResult:
    status: int  # the exit status, or 128 + the signal that killed the command (as a shell has it)
    signal: int | None = None
    oom_killed: bool = False
    timed_out: bool = False
    duration: float = 0.0  # seconds of wall time
    # With limits (a cgroup): user + system seconds of every process of the container, and its peak
    # memory. Without: of PID 1 and the processes it waited for, and the largest one's peak.
    cpu_time: float = 0.0
    max_rss: int = 0  # bytes
    memory_limit: int | None = None
    timeout: float | None = None
    warnings: tuple[str, ...] = ()
    error: str | None = None  # why the command could not be started (no such file, unknown user)

    @property
    def ok(self) -> bool:
        return self.status == 0

    def describe(self) -> str:
        """What happened, for a person: 'exit status 3', 'killed: memory limit 256 MiB exceeded'."""
        if self.error is not None:
            return self.error
        if self.oom_killed:
            limit = f" {_size(self.memory_limit)}" if self.memory_limit else ""
            return f"killed: memory limit{limit} exceeded"
        if self.timed_out:
            return f"killed: timed out after {self.timeout:g}s"
        if self.signal is not None:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = f"signal {self.signal}"
            return f"killed by {name}"
        return f"exit status {self.status}"


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} bytes"


class Sandbox(Protocol):
    def run(
        self,
        request: ExecRequest,
        *,
        on_output: Callable[[int, bytes], None] | None = None,
        on_pty: Callable[[int], None] | None = None,
    ) -> ExecResult: ...
