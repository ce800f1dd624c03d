"""ARG and ENV scoping, and which instruction arguments get variables substituted.

The rules are Docker's (BuildKit's `dockerfile2llb`):

* ARGs declared before the first FROM ("global" ARGs) are visible to FROM
  lines only (the image and `--platform`). A stage sees one only after
  re-declaring it with `ARG NAME`, which takes the global value.
* An ARG's value is the `--build-arg` given for it, else its default (itself
  expanded with what is in scope). An ARG is in scope from its declaration to
  the end of its stage.
* ENV is in scope from its instruction on, and in every stage built FROM this
  one (through the image's environment). ENV wins over an ARG of the same name.
* Predefined ARGs need no declaration: the proxy variables (when given as build
  args) everywhere, and the platform ARGs (BUILDPLATFORM, TARGETARCH, ...) in
  FROM lines; inside a stage a platform ARG is set once declared with `ARG`.
* Expanded: FROM image and --platform; ARG names and defaults; ENV and LABEL
  keys and values; COPY/ADD sources, destination, --from, --chown, --chmod,
  --exclude, --checksum; EXPOSE ports; VOLUME, USER, WORKDIR, STOPSIGNAL;
  RUN --mount values, --network, --security. Never expanded: RUN, CMD,
  ENTRYPOINT, SHELL and HEALTHCHECK commands (the shell does that at run time),
  MAINTAINER, ONBUILD triggers (expanded when they run, downstream), heredoc
  names.

Everything here is pure: the caller supplies build args, the platform and each
stage's inherited environment.

    >>> scope = StageScope(GlobalScope([], {"V": "2"}), image_env=[("PATH", "/bin")])
    >>> scope.apply(parse("FROM x\\nARG V=1\\nWORKDIR /v$V").stages[0].instructions[1]).path
    '/v2'
"""

from __future__ import annotations

import re

from .errors import ExpansionError
from .instructions import (
    Add,
    Arg,
    ArgDecl,
    Copy,
    Env,
    Expose,
    From,
    Instruction,
    Label,
    MountSpec,
    Run,
    Stopsignal,
    User,
    Volume,
    Workdir,
)
from .shell import ShellLexer

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = ["PROXY_ARGS", "GlobalScope", "StageScope", "platform_args"]

_HEREDOC_SOURCE = re.compile(r"[0-9]*<<-?[^<]+", re.ASCII)
PROXY_ARGS = frozenset(
    "HTTP_PROXY http_proxy HTTPS_PROXY https_proxy FTP_PROXY ftp_proxy NO_PROXY no_proxy ALL_PROXY all_proxy".split()
)


def platform_args(build: str, target: str | None = None) -> dict[str, str]:
    """The predefined platform ARGs for `os/arch[/variant]` build and target platforms."""
    values = {}
    for prefix, platform in (("BUILD", build), ("TARGET", target or build)):
        os_, _, rest = platform.partition("/")
        arch, _, variant = rest.partition("/")
        values |= {
            f"{prefix}PLATFORM": platform,
            f"{prefix}OS": os_,
            f"{prefix}ARCH": arch,
            f"{prefix}VARIANT": variant,
        }
    return values


class GlobalScope:
    """What FROM lines see: global ARGs (with build-arg overrides) and platform ARGs."""

    def __init__(
        self,
        global_args: Iterable[Arg],
        build_args: Mapping[str, str],
        *,
        platform: Mapping[str, str] | None = None,
        escape: str = "\\",
    ) -> None:
        self.build_args = dict(build_args)
        self.lexer = ShellLexer(escape)
        self.consumed: set[str] = set()
        self.values: dict[str, str] = dict(platform or platform_args("linux/amd64"))
        self.platform = dict(self.values)
        for arg in global_args:
            for decl in arg.args:
                value = self._value(arg, decl, self.values)
                if value is not None:
                    self.values[decl.name] = value

    def _value(self, where: Instruction, decl: ArgDecl, env: Mapping[str, str]) -> str | None:
        self.consumed.add(decl.name)
        if decl.name in self.build_args:
            return self.build_args[decl.name]
        if decl.default is None:
            return env.get(decl.name)  # an ARG without value stays unset
        return _expand(self.lexer, decl.default, env, where, f"ARG {decl.name}")

    def expand_from(self, instruction: From) -> From:
        """FROM with its image and --platform expanded in the global scope."""
        env = {**{k: v for k, v in self.build_args.items() if k in PROXY_ARGS}, **self.values}
        return instruction._replace(
            image=_expand(self.lexer, instruction.image, env, instruction, "FROM image"),
            platform=_expand_opt(self.lexer, instruction.platform, env, instruction, "--platform"),
        )

    def unused_build_args(self) -> list[str]:
        """Build args that no ARG declared (Docker warns about these)."""
        return sorted(k for k in self.build_args if k not in self.consumed and k not in PROXY_ARGS)


class StageScope:
    """The variables in scope inside one stage, updated instruction by instruction.

    `image_env` is the environment the stage starts with: the base image's
    config Env, or the parent stage's final `env`. `apply` returns each
    instruction with its expandable fields substituted and then records what
    an ARG or ENV adds.
    """

    def __init__(self, globals_: GlobalScope, image_env: Iterable[tuple[str, str]] = ()) -> None:
        self.globals = globals_
        self.lexer = globals_.lexer
        self.env: dict[str, str] = dict(image_env)
        self.args: dict[str, str] = {k: v for k, v in globals_.build_args.items() if k in PROXY_ARGS}

    def variables(self) -> dict[str, str]:
        """Everything an argument may refer to: ARGs, overridden by ENV."""
        return {**self.args, **self.env}

    def apply(self, instruction: Instruction) -> Instruction:
        """`instruction` with variables substituted; ARG and ENV also update the scope."""
        variables = self.variables()
        expanded = _EXPANDERS.get(type(instruction), _unchanged)(self.lexer, instruction, variables)
        if type(expanded) is Arg:
            for decl in expanded.args:
                value = self._arg_value(decl)
                if value is not None:
                    self.args[decl.name] = value
        elif type(expanded) is Env:
            self.env.update(expanded.pairs)
        return expanded

    def _arg_value(self, decl: ArgDecl) -> str | None:
        g = self.globals
        g.consumed.add(decl.name)
        if decl.name in g.build_args:
            return g.build_args[decl.name]
        if decl.default is not None:
            return decl.default  # already expanded by apply()
        return g.values.get(decl.name)  # a re-declared global or platform ARG, else unset


def _expand(lexer: ShellLexer, word: str, env: Mapping[str, str], where: Instruction, what: str) -> str:
    if "$" not in word and "'" not in word and '"' not in word and lexer.escape not in word:
        return word
    try:
        return lexer.expand(word, env)
    except ExpansionError as exc:
        raise ExpansionError(f"{what}: {exc.message}", where.span) from None


def _expand_opt(lexer: ShellLexer, word: str | None, env: Mapping[str, str], where: Instruction, what: str) -> str | None:
    return None if word is None else _expand(lexer, word, env, where, what)


def _unchanged(lexer: ShellLexer, i: Instruction, env: Mapping[str, str]) -> Instruction:
    return i


def _arg(lexer: ShellLexer, i: Arg, env: Mapping[str, str]) -> Arg:
    # Each default sees the ARGs declared before it on the same line.
    env = dict(env)
    decls = []
    for d in i.args:
        name = _expand(lexer, d.name, env, i, "ARG name")
        default = _expand_opt(lexer, d.default, env, i, f"ARG {name}")
        decls.append(ArgDecl(name, default))
        if default is not None:
            env.setdefault(name, default)
    return i._replace(args=tuple(decls))


def _pairs(lexer: ShellLexer, i: Env | Label, env: Mapping[str, str]) -> Env | Label:
    kind = type(i).__name__.upper()
    pairs = tuple(
        (_expand(lexer, k, env, i, f"{kind} key"), _expand(lexer, v, env, i, f"{kind} {k}")) for k, v in i.pairs
    )
    return i._replace(pairs=pairs)


def _paths(lexer: ShellLexer, i: Copy | Add, env: Mapping[str, str]) -> dict[str, object]:
    return {
        "sources": tuple(
            s if i.heredocs and _HEREDOC_SOURCE.fullmatch(s) else _expand(lexer, s, env, i, "source") for s in i.sources
        ),
        "dest": _expand(lexer, i.dest, env, i, "destination"),
        "chown": _expand_opt(lexer, i.chown, env, i, "--chown"),
        "chmod": _expand_opt(lexer, i.chmod, env, i, "--chmod"),
        "exclude": tuple(_expand(lexer, e, env, i, "--exclude") for e in i.exclude),
    }


def _copy(lexer: ShellLexer, i: Copy, env: Mapping[str, str]) -> Copy:
    return i._replace(**_paths(lexer, i, env), from_stage=_expand_opt(lexer, i.from_stage, env, i, "--from"))


def _add(lexer: ShellLexer, i: Add, env: Mapping[str, str]) -> Add:
    return i._replace(**_paths(lexer, i, env), checksum=_expand_opt(lexer, i.checksum, env, i, "--checksum"))


def _expose(lexer: ShellLexer, i: Expose, env: Mapping[str, str]) -> Expose:
    ports: list[str] = []
    for port in i.ports:
        ports += _expand(lexer, port, env, i, "EXPOSE").split()
    return i._replace(ports=tuple(ports))


def _run(lexer: ShellLexer, i: Run, env: Mapping[str, str]) -> Run:
    mounts = tuple(
        MountSpec(tuple((k, _expand_opt(lexer, v, env, i, f"--mount {k}")) for k, v in m.fields)) for m in i.mounts
    )
    return i._replace(
        mounts=mounts,
        network=_expand_opt(lexer, i.network, env, i, "--network"),
        security=_expand_opt(lexer, i.security, env, i, "--security"),
    )


def _single(field: str, what: str):  # noqa: ANN202 - builds one expander per single-field instruction
    def expand(lexer: ShellLexer, i: Instruction, env: Mapping[str, str]) -> Instruction:
        return i._replace(**{field: _expand(lexer, getattr(i, field), env, i, what)})

    return expand


def _volume(lexer: ShellLexer, i: Volume, env: Mapping[str, str]) -> Volume:
    return i._replace(paths=tuple(_expand(lexer, p, env, i, "VOLUME") for p in i.paths))


_EXPANDERS = {
    Arg: _arg,
    Env: _pairs,
    Label: _pairs,
    Copy: _copy,
    Add: _add,
    Expose: _expose,
    Run: _run,
    Volume: _volume,
    User: _single("user", "USER"),
    Workdir: _single("path", "WORKDIR"),
    Stopsignal: _single("signal", "STOPSIGNAL"),
}
