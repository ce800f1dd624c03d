"""`pybuild run`: a container from a store image, as `docker run` starts one."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import TYPE_CHECKING

from ..argv import UsageError
from .images import open_store

if TYPE_CHECKING:
    from store.image import ContainerConfig

    from ..cgroups import Limits
    from ..console import Console
    from ..sandbox import Bind

__all__ = ["command_line", "run"]

# Docker relays every signal it can catch to the container; these are the ones that matter.
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def command_line(config: ContainerConfig, command: list[str], entrypoint: str | None) -> tuple[str, ...]:
    """ENTRYPOINT + CMD as Docker combines them: arguments replace CMD, --entrypoint replaces both."""
    if entrypoint is not None:
        head = [entrypoint] if entrypoint else []
        return (*head, *command)
    return (*(config.entrypoint or ()), *(command or config.cmd or ()))


def run(args: dict[str, object], console: Console) -> int:
    from ..namespace_sandbox import NamespaceSandbox
    from ..sandbox import ExecRequest

    if args["rm"] and args["keep"]:
        raise UsageError("--rm and --keep contradict each other")
    network = str(args["network"])
    if network not in ("none", "host"):
        raise UsageError(f"--network {network}: only none and host are supported (no bridged networking yet)")
    limits = _limits(args)
    timeout = _positive(args["timeout"], "--timeout", float) if args["timeout"] else None
    if args["workdir"] and not str(args["workdir"]).startswith("/"):
        raise UsageError(f"--workdir {args['workdir']}: the working directory must be an absolute path")
    binds = tuple(_volume(v) for v in args["volume"])  # type: ignore[attr-defined]
    store = open_store(args)
    image = store.image(str(args["image"]))
    config = image.config.config
    argv = command_line(config, list(args["command"] or []), args["entrypoint"])  # type: ignore[arg-type]
    if not argv:
        raise UsageError(f"image {args['image']} has no ENTRYPOINT or CMD: give a command to run")
    env = _environment(config.env, args["env"])  # type: ignore[arg-type]
    tty = bool(args["tty"])
    with NamespaceSandbox(prefork=False) as sandbox:  # one run: nothing to fork ahead for
        store.sweep_snapshots()  # what containers of killed `pybuild run`s left
        rootfs = store.checkout(image, prefix="run")
        try:
            with _stdio(bool(args["interactive"]), tty) as (stdin, stdout, stderr, forward, pty_attach):
                request = ExecRequest(
                    argv=argv,
                    rootfs=rootfs.mounts,
                    env=env,
                    cwd=str(args["workdir"] or config.working_dir or "/"),
                    user=str(args["user"] if args["user"] is not None else config.user),
                    hostname=str(args["hostname"] or rootfs.key.rsplit("-", 1)[-1][:12]),
                    network=network,  # type: ignore[arg-type]
                    binds=binds,
                    limits=limits,
                    stdin=stdin,
                    stdout=stdout,
                    stderr=stderr,
                    tty=tty,
                    timeout=timeout,
                )
                result = sandbox.run(request, forward_signals=forward, on_pty=pty_attach)
        finally:
            if args["keep"]:
                console.warn(f"kept the container's writable layer: {rootfs.upper_dir}")
                rootfs.lease.release()
            else:
                rootfs.remove()
    for warning in result.warnings:
        console.warn(warning)
    if result.error is not None:
        console.err.write(f"pybuild: error: {result.error}\n")
    if result.oom_killed or result.timed_out:
        console.warn(result.describe())
    return result.status


def _limits(args: dict[str, object]) -> Limits | None:
    if not any(args[k] for k in ("memory", "memory_swap", "cpus", "pids_limit")):
        return None  # and builder.cgroups stays unimported
    from ..cgroups import Limits, parse_size

    swap = args["memory_swap"]
    return Limits(
        memory=parse_size(str(args["memory"])) if args["memory"] else None,
        memory_swap=-1 if swap == "-1" else parse_size(str(swap)) if swap else None,
        cpus=_positive(args["cpus"], "--cpus", float) if args["cpus"] else None,
        pids=_positive(args["pids_limit"], "--pids-limit", int) if args["pids_limit"] else None,  # type: ignore[arg-type]
    )


def _positive(value: object, name: str, kind: type) -> float | int:
    try:
        number = kind(value)
    except ValueError:
        raise UsageError(f"{name} {value}: not a number") from None
    if number <= 0:
        raise UsageError(f"{name} {value}: must be positive")
    return number  # type: ignore[no-any-return]


def _volume(spec: str) -> Bind:
    from ..sandbox import Bind

    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise UsageError(f"--volume {spec}: expected HOST:CONTAINER[:ro|rw]")
    mode = parts[2] if len(parts) == 3 else "rw"
    if mode not in ("ro", "rw"):
        raise UsageError(f"--volume {spec}: mode must be ro or rw, not {mode!r}")
    host, target = parts[0], parts[1]
    if not os.path.isabs(host):
        raise UsageError(f"--volume {spec}: the host path must be absolute (named volumes are not supported)")
    if not os.path.exists(host):
        raise UsageError(f"--volume {spec}: {host} does not exist")
    if not target.startswith("/") or ".." in target.split("/"):
        raise UsageError(f"--volume {spec}: the container path must be absolute, without '..'")
    return Bind(os.path.realpath(host), os.path.normpath(target), readonly=mode == "ro")


def _environment(image_env: tuple[str, ...], options: list[str]) -> tuple[str, ...]:
    env = dict(item.partition("=")[::2] for item in image_env)
    for item in options:
        key, sep, value = item.partition("=")
        if not key:
            raise UsageError(f"--env {item}: expected KEY=VALUE")
        if sep:
            env[key] = value
        elif key in os.environ:  # docker run -e KEY passes the caller's value
            env[key] = os.environ[key]
    return tuple(f"{k}={v}" for k, v in env.items())


@contextlib.contextmanager
def _stdio(interactive: bool, tty: bool):  # type: ignore[no-untyped-def]
    """(stdin, stdout, stderr, signals to forward, pty callback): ours, or a pseudo-terminal relayed to ours."""
    if not tty:
        stdin = None if not interactive else sys.stdin.fileno()
        yield stdin, sys.stdout.fileno(), sys.stderr.fileno(), _FORWARDED, None
        return
    from ..terminal import PseudoTerminal

    with PseudoTerminal(interactive=interactive) as pty:  # Ctrl-C reaches the container as a byte, through it
        yield None, sys.stdout.fileno(), sys.stderr.fileno(), (signal.SIGTERM, signal.SIGHUP), pty.attach
