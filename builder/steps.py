"""What each instruction does to an image's config and history, with Docker's rules. Pure functions.

The executor runs RUN, COPY, ADD and WORKDIR's directory; everything an
instruction records in the image (config fields, the history line) is
decided here, from the instruction with its variables already substituted
(grammar.scope):

    ENV, LABEL, EXPOSE, VOLUME, USER, WORKDIR, CMD, ENTRYPOINT, SHELL,
    STOPSIGNAL, HEALTHCHECK, ONBUILD, MAINTAINER  ->  `configure`
    RUN, CMD, ENTRYPOINT, HEALTHCHECK commands    ->  `argv_of`
    every instruction's history line              ->  `created_by`

Docker's extension fields (Healthcheck, OnBuild, Shell) are kept in the OCI
config, as BuildKit does.

    >>> config = configure(ContainerConfig(), parse_one("ENV A=1"), StageDefaults())
    >>> config.env
    ('A=1',)
"""

from __future__ import annotations

import posixpath
import re

from grammar import (
    Add,
    Cmd,
    Copy,
    Entrypoint,
    Env,
    ExecForm,
    Expose,
    Healthcheck,
    Instruction,
    Label,
    Maintainer,
    Onbuild,
    Run,
    Shell,
    ShellForm,
    Stopsignal,
    User,
    Volume,
    Workdir,
)
from grammar.record import record
from store.image import ContainerConfig
from store.image import Healthcheck as HealthcheckConfig

from .cachekey import canonical
from .errors import BuildError

__all__ = ["DEFAULT_SHELL", "StageDefaults", "argv_of", "configure", "created_by", "set_env", "workdir_of"]

DEFAULT_SHELL = ("/bin/sh", "-c")
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}


@record
class StageDefaults:
    """What `configure` needs beyond the config: the stage's SHELL, and whether CMD came from the base image."""

    shell: tuple[str, ...] = DEFAULT_SHELL
    cmd_inherited: bool = True


def argv_of(command: ShellForm | ExecForm, shell: tuple[str, ...]) -> tuple[str, ...]:
    """The argv a RUN/CMD/ENTRYPOINT command runs: the shell form through `shell`, the exec form as is."""
    if isinstance(command, ExecForm):
        return tuple(command.argv)
    return (*shell, command.text)


def set_env(env: tuple[str, ...], pairs: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
    """`env` (KEY=VALUE items) with `pairs` set: an existing key keeps its place, a new one goes last."""
    out = dict(item.partition("=")[::2] for item in env)
    for key, value in pairs:
        out[key] = value
    return tuple(f"{k}={v}" for k, v in out.items())


def workdir_of(current: str, path: str) -> str:
    """WORKDIR `path` resolved against the current working directory, normalised."""
    return posixpath.normpath(posixpath.join(current or "/", path)).replace("//", "/")


def configure(config: ContainerConfig, instruction: Instruction, defaults: StageDefaults) -> ContainerConfig:
    """`config` after a config instruction (variables already substituted)."""
    match instruction:
        case Env(pairs=pairs):
            return config._replace(env=set_env(config.env, pairs))
        case Label(pairs=pairs):
            return config._replace(labels={**config.labels, **dict(pairs)})
        case Expose(ports=ports):
            return config._replace(exposed_ports=_union(config.exposed_ports, _ports(ports, instruction)))
        case Volume(paths=paths):
            return config._replace(volumes=_union(config.volumes, paths))
        case User(user=user):
            return config._replace(user=user)
        case Workdir(path=path):
            return config._replace(working_dir=workdir_of(config.working_dir, path))
        case Cmd(command=command):
            return config._replace(cmd=argv_of(command, defaults.shell))
        case Entrypoint(command=command):
            # Docker: a CMD inherited from the base image does not survive a new ENTRYPOINT.
            cmd = None if defaults.cmd_inherited else config.cmd
            return config._replace(entrypoint=argv_of(command, defaults.shell), cmd=cmd)
        case Shell(argv=argv):
            return config._replace(shell=tuple(argv))
        case Stopsignal(signal=signal):
            return config._replace(stop_signal=signal)
        case Healthcheck():
            return config._replace(healthcheck=_healthcheck(instruction))
        case Onbuild(expression=expression):
            return config._replace(on_build=(*config.on_build, expression))
    return config


def created_by(instruction: Instruction, *, shell: tuple[str, ...] = DEFAULT_SHELL) -> str:
    """The history line of `instruction`, in BuildKit's wording."""
    match instruction:
        case Run(command=command):
            return f"RUN {_command_text(command, shell)} # buildkit"
        case Copy() | Add():
            word = type(instruction).__name__.upper()
            flags = "".join(
                f" --{name}={value}"
                for name, value in (("chown", instruction.chown), ("chmod", instruction.chmod))
                if value
            )
            return f"{word}{flags} {' '.join(instruction.sources)} {instruction.dest} # buildkit"
        case Env(pairs=pairs) | Label(pairs=pairs):
            return f"{type(instruction).__name__.upper()} " + " ".join(f"{k}={v}" for k, v in pairs)
        case Cmd(command=command) | Entrypoint(command=command):
            return f"{type(instruction).__name__.upper()} {canonical(list(argv_of(command, shell)))}"
        case Shell(argv=argv):
            return f"SHELL {canonical(list(argv))}"
        case Expose(ports=ports):
            return "EXPOSE map[" + " ".join(f"{p}:{{}}" for p in _ports(ports, instruction)) + "]"
        case Volume(paths=paths):
            return f"VOLUME {canonical(list(paths))}"
        case User(user=user):
            return f"USER {user}"
        case Workdir(path=path):
            return f"WORKDIR {path}"
        case Stopsignal(signal=signal):
            return f"STOPSIGNAL {signal}"
        case Maintainer(name=name):
            return f"MAINTAINER {name}"
        case Healthcheck(test=test):
            return "HEALTHCHECK NONE" if test is None else f"HEALTHCHECK {canonical(list(_health_test(test)))}"
        case Onbuild(expression=expression):
            return f"ONBUILD {expression}"
    return type(instruction).__name__.upper()


def _command_text(command: ShellForm | ExecForm, shell: tuple[str, ...]) -> str:
    if isinstance(command, ExecForm):
        return canonical(list(command.argv))
    return " ".join((*shell, command.text))


def _union(current: tuple[str, ...], new: tuple[str, ...]) -> tuple[str, ...]:
    return (*current, *(n for n in dict.fromkeys(new) if n not in current))


def _ports(ports: tuple[str, ...], where: Instruction) -> tuple[str, ...]:
    out = []
    for port in ports:
        number, _, protocol = port.partition("/")
        protocol = (protocol or "tcp").lower()
        first, _, last = number.partition("-")
        if protocol not in ("tcp", "udp", "sctp") or not first.isdigit() or (last and not last.isdigit()):
            raise BuildError(f"EXPOSE {port}: expected PORT[-PORT][/tcp|udp|sctp]", where.span)
        low, high = int(first), int(last or first)
        if not 0 < low <= high <= 65535:
            raise BuildError(f"EXPOSE {port}: port out of range", where.span)
        out.extend(f"{n}/{protocol}" for n in range(low, high + 1))
    return tuple(out)


def _health_test(test: ShellForm | ExecForm) -> tuple[str, ...]:
    if isinstance(test, ShellForm):
        return ("CMD-SHELL", test.text)
    return ("CMD", *test.argv)


def _healthcheck(instruction: Healthcheck) -> HealthcheckConfig:
    if instruction.test is None:
        return HealthcheckConfig(test=("NONE",))
    durations = {
        name: _duration(getattr(instruction, name), name, instruction)
        for name in ("interval", "timeout", "start_period", "start_interval")
    }
    return HealthcheckConfig(test=_health_test(instruction.test), retries=instruction.retries or 0, **durations)


def _duration(text: str | None, name: str, where: Instruction) -> int:
    """A Go duration (`30s`, `1m30s`, `500ms`) in nanoseconds; 0 when unset."""
    if not text:
        return 0
    position, total = 0, 0.0
    for match in _DURATION.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    if position != len(text) or text == "":
        raise BuildError(f"HEALTHCHECK --{name.replace('_', '-')}={text}: not a duration (e.g. 30s, 1m30s)", where.span)
    return int(total)
