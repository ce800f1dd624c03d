"""Syntax nodes to typed instructions: one small function per instruction.

Each function checks what BuildKit's `instructions.Parse` checks (argument
counts, flags, forms) and builds the record from grammar/instructions.py.
Errors are RecipeValidationErrors located at the instruction, flag or
argument at fault.
"""

from __future__ import annotations

import re

from .errors import RecipeValidationError, UnknownInstructionError
from .flags import BOOL, STRING, STRINGS, parse_flags
from .instructions import (
    Add,
    Arg,
    ArgDecl,
    Cmd,
    Command,
    Copy,
    Entrypoint,
    Env,
    ExecForm,
    Expose,
    From,
    Healthcheck,
    Instruction,
    Label,
    Maintainer,
    MountSpec,
    Onbuild,
    Run,
    Shell,
    ShellForm,
    Stopsignal,
    User,
    Volume,
    Workdir,
)
from .source import Span
from .suggest import did_you_mean
from .syntax import SyntaxNode

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["KEYWORDS", "parse_duration", "to_instruction"]

_WIDE = 1 << 30  # "to the end of the line" for spans
_STAGE_NAME = re.compile(r"[a-z][a-z0-9\-_.]*")
_LOOKS_LIKE_JSON = re.compile(r"\[\s*[\"']")
_JSON_ITEMS = re.compile(r"[\"']\s*,\s*[\"']")
_PORT = re.compile(r"[0-9]+(-[0-9]+)?(/[a-zA-Z]+)?")
_CHMOD = re.compile(r"[0-7]{3,4}|([ugoa]*[-+=][rwxXst]*)(,[ugoa]*[-+=][rwxXst]*)*")
_MOUNT_KEYS = frozenset(
    "type id target dst destination source src from readonly ro readwrite rw required sharing mode uid gid size env".split()
)
_MOUNT_TYPES = frozenset({"bind", "cache", "tmpfs", "secret", "ssh"})
_DURATION = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|µs|μs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class _Node:
    """A syntax node plus the file name, handing out spans for errors."""

    __slots__ = ("node", "file", "keyword", "args")

    def __init__(self, node: SyntaxNode, file: str) -> None:
        self.node = node
        self.file = file
        self.keyword = node.keyword
        self.args = node.args

    @property
    def span(self) -> Span:
        line, column = self.node.word_at
        return Span(self.file, line, column, self.node.end_line, _WIDE)

    def args_span(self, needle: str = "") -> Span:
        at = self.node.args_at
        if at is None:
            return self.span
        line, column = at
        if needle and self.node.start_line == self.node.end_line:
            found = self.node.original.find(needle)
            if found >= 0:
                column = found + 1 + self.node.word_at[1] - 1
                return Span(self.file, line, column, line, column + len(needle) - 1)
        return Span(self.file, line, column, line, _WIDE)

    def flag_spans(self) -> tuple[Span, ...]:
        return tuple(
            Span(self.file, line, column, line, column + len(text) - 1)
            for (line, column), text in zip(self.node.flags_at, self.node.flags)
        )

    def flags(self, accepted: dict[str, str]) -> dict[str, object]:
        return parse_flags(self.keyword, self.node.flags, self.flag_spans(), accepted)

    def no_flags(self) -> None:
        parse_flags(self.keyword, self.node.flags, self.flag_spans(), {})

    def error(self, message: str, span: Span | None = None, hint: str | None = None) -> RecipeValidationError:
        return RecipeValidationError(message, span or self.span, hint=hint)


def to_instruction(node: SyntaxNode, file: str) -> Instruction:
    """The typed instruction for `node`; RecipeValidationError when it is wrong."""
    n = _Node(node, file)
    if "\x00" in node.original:
        raise n.error("NUL character in instruction", hint="recipes must be text")
    parse = _PARSERS.get(n.keyword)
    if parse is None:
        suggestion = did_you_mean(n.keyword, KEYWORDS)
        raise UnknownInstructionError(
            f"unknown instruction: {node.word}",
            Span(file, node.word_at[0], node.word_at[1], node.word_at[0], node.word_at[1] + len(node.word) - 1),
            hint=f"did you mean {suggestion}?" if suggestion else None,
        )
    return parse(n)


# ---- helpers -------------------------------------------------------------------


def _at_least_one(n: _Node) -> None:
    if not n.args:
        raise n.error(f"{n.keyword} requires at least one argument")


def _exactly_one(n: _Node) -> str:
    if len(n.args) != 1:
        raise n.error(f"{n.keyword} requires exactly one argument")
    return n.args[0]


def _command(n: _Node, values: tuple[str, ...], *, what: str | None = None) -> Command:
    """Exec form from a JSON array, else shell form; refuses broken JSON arrays."""
    if n.node.json:
        return ExecForm(values)
    if not values:
        raise n.error(f"{what or n.keyword} requires at least one argument")
    _refuse_broken_json(n, values[0])
    return ShellForm(values[0])


def _refuse_broken_json(n: _Node, text: str) -> None:
    # BuildKit silently runs `["a" "b"]` as a shell command; that is never what
    # was meant, while `[ "$x" = y ]` (a shell test) must stay allowed.
    if _LOOKS_LIKE_JSON.match(text) and (text[:2] in ('["', "['") or _JSON_ITEMS.search(text)):
        import json

        try:
            json.loads(text)
            detail = "only strings are allowed"
        except ValueError as exc:
            detail = "single quotes are not JSON" if "'" in text[:3] else exc.args[0].split(":")[0].lower()
        raise n.error(
            f"{n.keyword} argument looks like a JSON array but is not valid JSON ({detail})",
            n.args_span(),
            hint='write the exec form as ["executable", "arg", ...] with double quotes, or drop the brackets for shell form',
        )


def _no_destination(n: _Node) -> RecipeValidationError:
    return n.error(
        f"{n.keyword} requires at least two arguments, but only one was provided. Destination could not be determined."
    )


def _pairs(n: _Node) -> tuple[tuple[str, str], ...]:
    n.no_flags()
    args = n.args
    if not args:
        raise n.error(f"{n.keyword} requires at least one argument")
    pairs = tuple((args[i], args[i + 1]) for i in range(0, len(args), 3))
    if any(not key for key, _ in pairs):
        raise n.error(f"{n.keyword} names can not be blank", n.args_span())
    return pairs


def _chmod(n: _Node, value: object) -> str | None:
    if value is None:
        return None
    text = str(value)
    if "$" not in text and not _CHMOD.fullmatch(text):
        raise n.error(f"invalid chmod value {text!r}", hint="use octal like 0755 or symbolic like u+x,g-w")
    return text


def parse_duration(text: str) -> float:
    """Seconds in a Go duration string (`1m30s`, `500ms`, `0`); ValueError if malformed."""
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-") if text[:1] in "+-" else text
    if body == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(body):
        m = _DURATION.match(body, pos)
        if m is None or m.group(1) in ("", "."):
            raise ValueError(f"time: invalid duration {text!r}")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not body:
        raise ValueError(f"time: invalid duration {text!r}")
    return sign * total


# ---- one function per instruction -----------------------------------------------


def _from(n: _Node) -> From:
    flags = n.flags({"platform": STRING})
    args = n.args
    alias = None
    if len(args) == 3 and args[1].lower() == "as":
        alias = args[2].lower()
        if not _STAGE_NAME.fullmatch(alias):
            raise n.error(
                f'invalid name for build stage: "{args[2]}", name can\'t start with a number or contain symbols',
                n.args_span(args[2]),
            )
    elif len(args) != 1:
        raise n.error("FROM requires either one or three arguments", hint="FROM IMAGE [AS NAME]")
    return From(n.span, args[0], alias, flags.get("platform"))  # type: ignore[arg-type]


def _arg(n: _Node) -> Arg:
    n.no_flags()
    _at_least_one(n)
    decls = []
    for word in n.args:
        name, eq, default = word.partition("=")
        if not name:
            raise n.error("ARG names can not be blank", n.args_span(word))
        decls.append(ArgDecl(name, default if eq else None))
    return Arg(n.span, tuple(decls))


def _run(n: _Node) -> Run:
    flags = n.flags({"mount": STRINGS, "network": STRING, "security": STRING})
    if not n.args and not n.node.heredocs:
        raise n.error("RUN requires at least one argument")
    command = _command(n, n.args)
    network = flags.get("network")
    if network is not None and "$" not in network and network not in ("default", "none", "host"):  # type: ignore[operator]
        raise n.error(f"unsupported network mode {network!r}", hint="use --network=default, none or host")
    security = flags.get("security")
    if security is not None and "$" not in security and security not in ("sandbox", "insecure"):  # type: ignore[operator]
        raise n.error(f"unsupported security mode {security!r}", hint="use --security=sandbox or insecure")
    mounts = tuple(_mount(n, spec) for spec in flags.get("mount", ()))  # type: ignore[union-attr]
    return Run(n.span, command, n.node.heredocs, mounts, network, security)  # type: ignore[arg-type]


def _mount(n: _Node, spec: str) -> MountSpec:
    import csv

    try:
        fields = next(csv.reader([spec]), [])
    except csv.Error as exc:
        raise n.error(f"invalid --mount {spec!r}: {exc}") from None
    parsed = []
    for field in fields:
        key, eq, value = field.partition("=")
        key = key.strip().lower()
        if key not in _MOUNT_KEYS:
            raise n.error(f"unexpected key {key!r} in --mount {field!r}", hint="see `RUN --mount` in the Dockerfile reference")
        parsed.append((key, value if eq else None))
    mount = MountSpec(tuple(parsed))
    kind = mount.kind
    if "$" not in kind and kind not in _MOUNT_TYPES:
        raise n.error(f"unsupported mount type {kind!r}", hint="use bind, cache, tmpfs, secret or ssh")
    if kind in ("bind", "cache", "tmpfs") and not any(k in ("target", "dst", "destination") for k, _ in parsed):
        raise n.error(f"--mount type={kind} requires a target", hint="add target=/path/in/container")
    return mount


def _cmd(n: _Node) -> Cmd:
    n.no_flags()
    return Cmd(n.span, _command(n, n.args))


def _entrypoint(n: _Node) -> Entrypoint:
    n.no_flags()
    return Entrypoint(n.span, _command(n, n.args))


def _shell(n: _Node) -> Shell:
    n.no_flags()
    if not n.node.json:
        if n.args:
            _refuse_broken_json(n, n.args[0])
        raise n.error("SHELL requires the arguments to be in JSON form", hint='SHELL ["/bin/bash", "-c"]')
    if not n.args:
        raise n.error("SHELL requires at least one argument")
    return Shell(n.span, n.args)


def _env(n: _Node) -> Env:
    return Env(n.span, _pairs(n), n.args[2:3] == ("",))


def _label(n: _Node) -> Label:
    return Label(n.span, _pairs(n), n.args[2:3] == ("",))


def _maintainer(n: _Node) -> Maintainer:
    n.no_flags()
    return Maintainer(n.span, _exactly_one(n))


def _expose(n: _Node) -> Expose:
    n.no_flags()
    _at_least_one(n)
    for port in n.args:
        if "$" not in port and not _PORT.fullmatch(port):
            raise n.error(f"invalid containerPort: {port}", n.args_span(port), hint="EXPOSE 80, 8080/tcp or 53/udp")
    return Expose(n.span, n.args)


def _sources_and_dest(n: _Node) -> tuple[tuple[str, ...], str]:
    if len(n.args) < 2:
        if not n.node.json and n.args:
            _refuse_broken_json(n, " ".join(n.args))
        raise _no_destination(n)
    if not n.node.json:
        _refuse_broken_json(n, " ".join(n.args))
    return n.args[:-1], n.args[-1]


def _copy(n: _Node) -> Copy:
    flags = n.flags({"from": STRING, "chown": STRING, "chmod": STRING, "link": BOOL, "parents": BOOL, "exclude": STRINGS})
    sources, dest = _sources_and_dest(n)
    return Copy(
        n.span,
        sources,
        dest,
        flags.get("from"),  # type: ignore[arg-type]
        flags.get("chown"),  # type: ignore[arg-type]
        _chmod(n, flags.get("chmod")),
        bool(flags.get("link", False)),
        bool(flags.get("parents", False)),
        flags.get("exclude", ()),  # type: ignore[arg-type]
        n.node.heredocs,
    )


def _add(n: _Node) -> Add:
    flags = n.flags(
        {
            "chown": STRING,
            "chmod": STRING,
            "link": BOOL,
            "exclude": STRINGS,
            "checksum": STRING,
            "keep-git-dir": BOOL,
            "unpack": BOOL,
        }
    )
    sources, dest = _sources_and_dest(n)
    return Add(
        n.span,
        sources,
        dest,
        flags.get("chown"),  # type: ignore[arg-type]
        _chmod(n, flags.get("chmod")),
        bool(flags.get("link", False)),
        flags.get("exclude", ()),  # type: ignore[arg-type]
        flags.get("checksum"),  # type: ignore[arg-type]
        bool(flags.get("keep-git-dir", False)),
        flags.get("unpack"),  # type: ignore[arg-type]
        n.node.heredocs,
    )


def _volume(n: _Node) -> Volume:
    n.no_flags()
    _at_least_one(n)
    if not n.node.json:
        _refuse_broken_json(n, " ".join(n.args))
    paths = tuple(p.strip() for p in n.args)
    if not all(paths):
        raise n.error("VOLUME specified can not be an empty string")
    return Volume(n.span, paths)


def _user(n: _Node) -> User:
    n.no_flags()
    return User(n.span, _exactly_one(n))


def _workdir(n: _Node) -> Workdir:
    n.no_flags()
    return Workdir(n.span, _exactly_one(n))


def _stopsignal(n: _Node) -> Stopsignal:
    n.no_flags()
    return Stopsignal(n.span, _exactly_one(n))


_HEALTH_FLAGS = {"interval": STRING, "timeout": STRING, "start-period": STRING, "start-interval": STRING, "retries": STRING}


def _healthcheck(n: _Node) -> Healthcheck:
    _at_least_one(n)
    kind = n.args[0].upper()
    if kind == "NONE":
        if n.node.flags:
            raise n.error("HEALTHCHECK NONE takes no flags", n.flag_spans()[0])
        if len(n.args) > 1:
            raise n.error("HEALTHCHECK NONE takes no arguments", n.args_span())
        return Healthcheck(n.span, None)
    if kind != "CMD":
        raise n.error(f'Unknown type "{kind}" in HEALTHCHECK (try CMD)', n.args_span(n.args[0]))
    flags = n.flags(_HEALTH_FLAGS)
    test = _command(n, n.args[1:], what="HEALTHCHECK CMD")
    for name in ("interval", "timeout", "start-period", "start-interval"):
        text = flags.get(name)
        if text is None or "$" in text:  # type: ignore[operator]
            continue
        try:
            seconds = parse_duration(text)  # type: ignore[arg-type]
        except ValueError as exc:
            raise n.error(f"--{name}: {exc}", hint="durations take a unit: 30s, 1m30s, 500ms") from None
        if seconds != 0 and seconds < 0.001:
            raise n.error(f'Interval "{name}" cannot be less than 1ms')
    durations = {name: flags.get(name) for name in ("interval", "timeout", "start-period", "start-interval")}
    retries = flags.get("retries")
    if retries is not None:
        if not re.fullmatch(r"[0-9]{1,9}", retries):  # type: ignore[arg-type]
            raise n.error(f"--retries must be a whole number below 10⁹, not {retries!r}")
        retries = int(retries)  # type: ignore[arg-type]
    return Healthcheck(
        n.span,
        test,
        durations.get("interval"),
        durations.get("timeout"),
        durations.get("start-period"),
        durations.get("start-interval"),
        retries,  # type: ignore[arg-type]
    )


_ONBUILD_PREFIX = re.compile(r"(?i)^\s*ONBUILD\s*")


def _onbuild(n: _Node) -> Onbuild:
    n.no_flags()
    inner = n.node.inner
    if inner is None:
        raise n.error("ONBUILD requires at least one argument")
    trigger = inner.keyword
    if trigger == "ONBUILD":
        raise n.error("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
    if trigger in ("FROM", "MAINTAINER"):
        raise n.error(f"{trigger} isn't allowed as an ONBUILD trigger")
    instruction = to_instruction(inner._replace(heredocs=n.node.heredocs), n.file)
    return Onbuild(n.span, instruction, _ONBUILD_PREFIX.sub("", n.node.original, count=1))


_PARSERS: dict[str, Callable[[_Node], Instruction]] = {
    "ADD": _add,
    "ARG": _arg,
    "CMD": _cmd,
    "COPY": _copy,
    "ENTRYPOINT": _entrypoint,
    "ENV": _env,
    "EXPOSE": _expose,
    "FROM": _from,
    "HEALTHCHECK": _healthcheck,
    "LABEL": _label,
    "MAINTAINER": _maintainer,
    "ONBUILD": _onbuild,
    "RUN": _run,
    "SHELL": _shell,
    "STOPSIGNAL": _stopsignal,
    "USER": _user,
    "VOLUME": _volume,
    "WORKDIR": _workdir,
}
KEYWORDS = tuple(sorted(_PARSERS))

