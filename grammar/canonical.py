"""Canonical Recipefile text of a typed recipe.

`canonical(recipe)` writes one instruction per logical line, keywords in upper
case, flags in a fixed order, exec forms as compact JSON and heredoc bodies
after their line. Parsing the result gives the same recipe again (spans
aside), which the property tests check; `pybuild parse` prints instructions
with `instruction_text`.
"""

from __future__ import annotations

import re

from .instructions import (
    Add,
    Arg,
    Cmd,
    Command,
    Copy,
    Entrypoint,
    Env,
    ExecForm,
    Expose,
    From,
    Healthcheck,
    Heredoc,
    Instruction,
    Label,
    Maintainer,
    MountSpec,
    Onbuild,
    Recipe,
    Run,
    Shell,
    Stopsignal,
    User,
    Volume,
    Workdir,
)

__all__ = ["canonical", "instruction_text"]

_PLAIN_FLAG = re.compile(r"[^\s\"'\\]*")
_PLAIN_WORD = re.compile(r"[^\s\"'\\\[][^\s\"'\\]*")
_PLAIN_JSON = re.compile(r'[^"\\\x00-\x1f]*')


def canonical(recipe: Recipe) -> str:
    """The recipe as canonical text; `parse(canonical(r))` equals `r` but for spans."""
    out = [f"# {d.name}={d.value}\n" for d in recipe.directives]
    escape = recipe.escape
    for arg in recipe.global_args:
        out.append(instruction_text(arg, escape) + "\n")
    for stage in recipe.stages:
        for instruction in (stage.base, *stage.instructions):
            out.append(instruction_text(instruction, escape) + "\n")
    return "".join(out)


def instruction_text(instruction: Instruction, escape: str = "\\") -> str:
    """One instruction as canonical text (heredoc bodies included)."""
    keyword = type(instruction).__name__.upper()
    flags, head, heredocs = _body(instruction)
    if head.startswith("--") and type(instruction) is not Onbuild:  # ONBUILD keeps its text
        head = "-- " + head  # else it would read as a flag
    text = " ".join([keyword, *flags, head]) if head else " ".join([keyword, *flags])
    if text.endswith(escape):
        # A trailing escape character would continue the line. A vertical tab
        # stops that and is trimmed again with the other trailing blanks.
        text += "\v"
    if heredocs:
        text += "\n" + "".join(f"{h.content}{h.name}\n" for h in heredocs).removesuffix("\n")
    return text


def _flag(name: str, value: object) -> str:
    if value is True:
        return f"--{name}"
    text = str(value)
    # Non-ASCII values are quoted: BuildKit reads flags byte by byte, and a
    # 0x85 or 0xA0 byte inside a character would end an unquoted word.
    if text.isascii() and _PLAIN_FLAG.fullmatch(text):
        return f"--{name}={text}"
    return f"--{name}=\"{text.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}\""


def _flags(*pairs: tuple[str, object]) -> list[str]:
    out = []
    for name, value in pairs:
        if isinstance(value, tuple):
            out.extend(_flag(name, v) for v in value)
        elif value is not None and value is not False:
            out.append(_flag(name, value))
    return out


def _json_array(items: tuple[str, ...]) -> str:
    if all(_PLAIN_JSON.fullmatch(item) for item in items):
        return "[" + ", ".join(f'"{item}"' for item in items) + "]"
    import json  # only for strings that need escapes

    return json.dumps(list(items), ensure_ascii=False)


def _command(command: Command) -> str:
    if type(command) is ExecForm:
        return _json_array(command.argv)
    return command.text


def _mount(mount: MountSpec) -> str:
    fields = []
    for key, value in mount.fields:
        field = key if value is None else f"{key}={value}"
        if any(c in field for c in ',"\r\n'):
            field = '"' + field.replace('"', '""') + '"'
        fields.append(field)
    return ",".join(fields)


def _paths(items: tuple[str, ...], heredocs: tuple[Heredoc, ...]) -> str:
    # JSON form keeps blanks in paths and keeps `<<x` from reading as a heredoc,
    # but instructions that carry heredocs must stay in shell form.
    if heredocs or all(_PLAIN_WORD.fullmatch(p) and "<<" not in p for p in items):
        return " ".join(items)
    return _json_array(items)


def _body(i: Instruction) -> tuple[list[str], str, tuple[Heredoc, ...]]:  # noqa: C901 - one case per instruction
    match i:
        case From():
            return _flags(("platform", i.platform)), i.image if i.alias is None else f"{i.image} AS {i.alias}", ()
        case Arg():
            return [], " ".join(a.name if a.default is None else f"{a.name}={a.default}" for a in i.args), ()
        case Run():
            flags = _flags(("mount", tuple(_mount(m) for m in i.mounts)), ("network", i.network), ("security", i.security))
            return flags, _command(i.command), i.heredocs
        case Cmd() | Entrypoint():
            return [], _command(i.command), ()
        case Shell():
            return [], _json_array(i.argv), ()
        case Env() | Label():
            if i.legacy:
                ((key, value),) = i.pairs
                return [], f"{key} {value}", ()
            return [], " ".join(f"{k}={v}" for k, v in i.pairs), ()
        case Maintainer():
            return [], i.name, ()
        case Expose():
            return [], " ".join(i.ports), ()
        case Copy():
            flags = _flags(
                ("from", i.from_stage), ("chown", i.chown), ("chmod", i.chmod), ("link", i.link),
                ("parents", i.parents), ("exclude", i.exclude),
            )
            return flags, _paths((*i.sources, i.dest), i.heredocs), i.heredocs
        case Add():
            flags = _flags(
                ("chown", i.chown), ("chmod", i.chmod), ("link", i.link), ("exclude", i.exclude),
                ("checksum", i.checksum), ("keep-git-dir", i.keep_git_dir),
                ("unpack", {True: "true", False: "false"}.get(i.unpack)),  # type: ignore[call-overload]
            )
            return flags, _paths((*i.sources, i.dest), i.heredocs), i.heredocs
        case Volume():
            return [], _paths(i.paths, ()), ()
        case User():
            return [], i.user, ()
        case Workdir():
            return [], i.path, ()
        case Stopsignal():
            return [], i.signal, ()
        case Healthcheck():
            if i.test is None:
                return [], "NONE", ()
            flags = _flags(
                ("interval", i.interval), ("timeout", i.timeout),
                ("start-period", i.start_period), ("start-interval", i.start_interval),
                ("retries", None if i.retries is None else str(i.retries)),
            )
            return flags, f"CMD {_command(i.test)}", ()
        case Onbuild():
            return [], i.expression, ()
    raise TypeError(f"not an instruction: {i!r}")

