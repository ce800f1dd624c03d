"""File operations of a build step (COPY, ADD, WORKDIR) on the step's real root filesystem.

A RUN step's command sees its root as an OverlayFS mount; so must COPY.
`in_mounted_root(rootfs, operation, source=...)` forks a child that gets a
private mount namespace, mounts the step's root (and, for `COPY --from`, the
source stage's root read-only) on directories of its own, and calls
`operation(root, source)` there. The kernel then does what OverlayFS does for
any writer: copy-up, whiteouts when a directory replaces a file, the merged
view for symlinks in the destination path. Nothing is emulated, and the
upper directory is a plain change set for the layer diff, as after a RUN.

Unprivileged, the child first makes a user namespace in which it is root
(its own id only: files of other owners cannot be made, as a rootless
RUN without a subordinate id range cannot make them either).

The mounts die with the child's mount namespace, so an interrupted build
leaves none behind. The child reports an error as one line on a pipe; it
is raised here as the `BuildError` subclass it was, else as a `BuildError`.

    in_mounted_root(checkout.mounts, lambda root, _: os.makedirs(f"{root}/app", exist_ok=True))
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import TYPE_CHECKING, Any

from .errors import BuildError, ContextError, SandboxError, with_environment_hint

if TYPE_CHECKING:
    from collections.abc import Callable

    from store.snapshots import Mount

__all__ = ["in_mounted_root"]

_KINDS = {"ContextError": ContextError, "SandboxError": SandboxError}


def in_mounted_root(
    rootfs: tuple[Mount, ...],
    operation: Callable[[str, str | None], None],
    *,
    source: tuple[Mount, ...] | None = None,
    state_root: str | None = None,
) -> None:
    """Run `operation(root, source_root)` in a child with `rootfs` (and `source`, read-only) mounted."""
    where = tempfile.mkdtemp(prefix="fileop-", dir=state_root)
    try:
        os.mkdir(os.path.join(where, "root"))
        os.mkdir(os.path.join(where, "source"))
        read, write = os.pipe2(os.O_CLOEXEC)
        from . import _linux as linux

        pid = linux.fork_ignoring_terminal_signals()
        if pid == 0:  # pragma: no cover - the child; its outcome is checked by the parent
            os.close(read)
            _child(where, rootfs, source, operation, write)
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            report = pipe.read(64 << 10)
        _, status = os.waitpid(pid, 0)
    finally:
        shutil.rmtree(where, ignore_errors=True)
    if report:
        kind, _, message = report.decode(errors="replace").partition("\n")
        raise _KINDS.get(kind, BuildError)(message)
    if status != 0:
        raise BuildError(f"file operation: the helper process ended with wait status {status}")


def _child(
    where: str,
    rootfs: tuple[Mount, ...],
    source: tuple[Mount, ...] | None,
    operation: Callable[[str, str | None], None],
    report: int,
) -> None:
    from . import _linux as linux
    from ._pid1 import mount_rootfs

    code = 0
    try:
        if os.geteuid() != 0:  # rootless: be root of a user namespace of our own id, enough to mount
            _own_user_namespace(linux)
        linux.unshare(linux.CLONE_NEWNS)
        linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
        root = os.path.join(where, "root")
        mount_rootfs(rootfs, root)
        source_root = None
        if source is not None:
            source_root = os.path.join(where, "source")
            mount_rootfs(source, source_root)
        operation(root, source_root)
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent as one line
        code = 1
        message = str(exc).replace("\n", " ") or type(exc).__name__
        kind = type(exc).__name__
        if isinstance(exc, OSError) and message.startswith(("unshare:", "mount:")):
            kind, message = "SandboxError", with_environment_hint(message)  # the machine, not the recipe
        try:
            os.write(report, f"{kind}\n{message}".encode()[: 64 << 10])
        except OSError:
            pass
    finally:
        os._exit(code)


def _own_user_namespace(linux: Any) -> None:
    uid, gid = os.geteuid(), os.getegid()
    linux.unshare(linux.CLONE_NEWUSER)
    for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)
