"""Typed instructions: what each Dockerfile instruction means, with its span.

A `Recipe` is global ARGs plus `Stage`s; a stage is its FROM plus the
instructions up to the next FROM. One record class per instruction, named
after it, so `match` can dispatch on them. Values are kept as written: variable
substitution happens later (grammar/scope.py), because it depends on build
arguments and on the base image's environment.

Vocabulary:
  shell form  `RUN echo $HOME`: text run by the stage's SHELL (`ShellForm`)
  exec form   `RUN ["echo", "hi"]`: an argv run directly (`ExecForm`)
  heredoc     `RUN <<EOF` ... `EOF`: inline file content (`Heredoc`)
  mount       `RUN --mount=type=cache,target=/root/.cache`: a `MountSpec`

Example:

    >>> recipe = parse("FROM busybox AS base\\nRUN echo hi\\n")
    >>> recipe.stages[0].base.alias, recipe.stages[0].instructions[0].command
    ('base', ShellForm(text='echo hi'))
"""

from __future__ import annotations

from .record import record
from .source import Source, Span
from .syntax import Directive, Heredoc

__all__ = [
    "Add",
    "Arg",
    "ArgDecl",
    "Cmd",
    "Command",
    "Copy",
    "Entrypoint",
    "Env",
    "ExecForm",
    "Expose",
    "From",
    "Healthcheck",
    "Heredoc",
    "Instruction",
    "Label",
    "Maintainer",
    "MountSpec",
    "Onbuild",
    "Recipe",
    "Run",
    "Shell",
    "ShellForm",
    "Stage",
    "Stopsignal",
    "User",
    "Volume",
    "Workdir",
]


@record
class ShellForm:
    """A command line for the stage's shell (`/bin/sh -c` unless SHELL says otherwise)."""

    text: str


@record
class ExecForm:
    """An argv executed without a shell (JSON array form)."""

    argv: tuple[str, ...]


Command = ShellForm | ExecForm


@record
class ArgDecl:
    """One `NAME` or `NAME=default` of an ARG instruction."""

    name: str
    default: str | None


@record
class MountSpec:
    """One `--mount=` of RUN: its `key=value` fields in order, values unexpanded.

    A bare key (`readonly`) has the value None. `kind` is the `type` field,
    `bind` when absent.
    """

    fields: tuple[tuple[str, str | None], ...]

    @property
    def kind(self) -> str:
        return next((v or "" for k, v in self.fields if k == "type"), "bind")


@record
class From:
    span: Span
    image: str
    alias: str | None = None
    platform: str | None = None


@record
class Arg:
    span: Span
    args: tuple[ArgDecl, ...]


@record
class Run:
    span: Span
    command: Command
    heredocs: tuple[Heredoc, ...] = ()
    mounts: tuple[MountSpec, ...] = ()
    network: str | None = None
    security: str | None = None


@record
class Cmd:
    span: Span
    command: Command


@record
class Entrypoint:
    span: Span
    command: Command


@record
class Shell:
    span: Span
    argv: tuple[str, ...]


@record
class Env:
    """ENV: `pairs` as written; `legacy` for the old `ENV key rest of line` form."""

    span: Span
    pairs: tuple[tuple[str, str], ...]
    legacy: bool = False


@record
class Label:
    """LABEL: `pairs` as written; `legacy` for the old `LABEL key rest of line` form."""

    span: Span
    pairs: tuple[tuple[str, str], ...]
    legacy: bool = False


@record
class Maintainer:
    span: Span
    name: str


@record
class Expose:
    span: Span
    ports: tuple[str, ...]


@record
class Copy:
    """COPY: `sources` (context paths, or heredoc names) into `dest`."""

    span: Span
    sources: tuple[str, ...]
    dest: str
    from_stage: str | None = None
    chown: str | None = None
    chmod: str | None = None
    link: bool = False
    parents: bool = False
    exclude: tuple[str, ...] = ()
    heredocs: tuple[Heredoc, ...] = ()


@record
class Add:
    """ADD: like COPY, plus URLs, git repositories and local archive extraction."""

    span: Span
    sources: tuple[str, ...]
    dest: str
    chown: str | None = None
    chmod: str | None = None
    link: bool = False
    exclude: tuple[str, ...] = ()
    checksum: str | None = None
    keep_git_dir: bool = False
    unpack: bool | None = None
    heredocs: tuple[Heredoc, ...] = ()


@record
class Volume:
    span: Span
    paths: tuple[str, ...]


@record
class User:
    span: Span
    user: str


@record
class Workdir:
    span: Span
    path: str


@record
class Stopsignal:
    span: Span
    signal: str


@record
class Healthcheck:
    """HEALTHCHECK: `test` is None for `HEALTHCHECK NONE`; durations as written (`30s`)."""

    span: Span
    test: Command | None
    interval: str | None = None
    timeout: str | None = None
    start_period: str | None = None
    start_interval: str | None = None
    retries: int | None = None


@record
class Onbuild:
    """ONBUILD: `trigger` runs when the image is used as a base; `expression` is its text."""

    span: Span
    trigger: Instruction
    expression: str


Instruction = (
    From | Arg | Run | Cmd | Entrypoint | Shell | Env | Label | Maintainer | Expose
    | Copy | Add | Volume | User | Workdir | Stopsignal | Healthcheck | Onbuild
)


@record
class Stage:
    """One build stage: its FROM and what follows up to the next FROM.

    `name` is the lower-cased `AS` alias; `index` counts stages from 0.
    """

    index: int
    base: From
    instructions: tuple[Instruction, ...]

    @property
    def name(self) -> str | None:
        return self.base.alias


@record
class Recipe:
    """A whole recipe: its parser directives, ARGs declared before the first FROM, the stages."""

    source: Source
    directives: tuple[Directive, ...]
    global_args: tuple[Arg, ...]
    stages: tuple[Stage, ...]

    @property
    def escape(self) -> str:
        """The escape character (`\\` unless `# escape=` says otherwise)."""
        return next((d.value for d in self.directives if d.name == "escape"), "\\")
