"""Command-line options for pybuild's commands: declare, parse, document.

A small replacement for argparse, which costs about 4 ms to import and set up
(gettext and locale lookups), more than a third of `pybuild parse`'s budget.
It knows what pybuild needs: flags, options with a value (`--opt v`,
`--opt=v`, `-o v`), repeatable options, combined short flags (`-it`),
positionals, `--` and `-h/--help`.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["HelpRequested", "Option", "Positional", "Spec", "UsageError", "parse_args"]


class UsageError(Exception):
    """The command line does not fit the command's spec; the message says how."""


class HelpRequested(Exception):
    """`-h` or `--help` was given; the message is the help text."""


class Option:
    """A `-x`/`--name` option: a flag (`takes_value=False`), a value, or repeated values."""

    def __init__(
        self,
        *names: str,
        help: str,
        takes_value: bool = False,
        repeat: bool = False,
        metavar: str = "VALUE",
        default: object = None,
        required: bool = False,
    ) -> None:
        self.names = names
        self.required = required
        self.dest = max(names, key=len).lstrip("-").replace("-", "_")
        self.help = help
        self.takes_value = takes_value or repeat
        self.repeat = repeat
        self.metavar = metavar
        self.default = [] if repeat else (False if not self.takes_value else default)


class Positional:
    """A positional argument; `optional` ones may be left out (None), `many` takes all the rest (a list)."""

    def __init__(
        self, name: str, *, help: str, optional: bool = False, many: bool = False, metavar: str | None = None
    ) -> None:
        self.dest = name
        self.help = help
        self.optional = optional
        self.many = many
        self.metavar = metavar or name.upper()


class Spec:
    """What one command accepts: its options and positionals, for parsing and help."""

    def __init__(
        self,
        prog: str,
        summary: str,
        options: Sequence[Option] = (),
        positionals: Sequence[Positional] = (),
        *,
        interspersed: bool = True,
    ) -> None:
        self.prog = prog
        self.interspersed = interspersed  # False: options end at the first positional (`run IMAGE ls -l`)
        self.summary = summary
        self.options = list(options)
        self.positionals = list(positionals)
        self.by_name = {name: option for option in self.options for name in option.names}

    def usage(self) -> str:
        parts = [f"usage: {self.prog}"]
        if self.options:
            parts.append("[OPTIONS]")
        parts += [f"[{p.metavar}]" if p.optional else p.metavar + ("..." if p.many else "") for p in self.positionals]
        return " ".join(parts)

    def help(self) -> str:
        lines = [self.usage(), "", self.summary]
        if self.positionals:
            lines += ["", "arguments:"]
            lines += [f"  {p.metavar:<24} {p.help}" for p in self.positionals]
        lines += ["", "options:", f"  {'-h, --help':<24} show this help and exit"]
        for o in self.options:
            head = ", ".join(o.names) + (f" {o.metavar}" if o.takes_value else "")
            lines.append(f"  {head:<24} {o.help}" + (" (repeatable)" if o.repeat else ""))
        return "\n".join(lines)


def parse_args(spec: Spec, argv: Sequence[str]) -> dict[str, object]:
    """The values of `argv` by destination name; UsageError or HelpRequested."""
    values: dict[str, object] = {o.dest: (list(o.default) if o.repeat else o.default) for o in spec.options}
    positionals: list[str] = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--":
            positionals += args
            break
        if arg in ("-h", "--help"):
            raise HelpRequested(spec.help())
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            option = _option(spec, name)
            _take(values, option, value if eq else None, args, name)
        elif arg.startswith("-") and arg != "-":
            _short(spec, values, arg, args)
        else:
            positionals.append(arg)
            if not spec.interspersed:
                positionals += args
                break
    for p in spec.positionals:
        if p.many and positionals:
            values[p.dest], positionals = positionals, []
        elif positionals:
            values[p.dest] = positionals.pop(0)
        elif p.optional:
            values[p.dest] = [] if p.many else None
        else:
            raise UsageError(f"the argument {p.metavar} is required")
    if positionals:
        raise UsageError(f"unexpected argument {positionals[0]!r}")
    for o in spec.options:
        if o.required and values[o.dest] is None:
            raise UsageError(f"option {'/'.join(o.names)} is required")
    return values


def _option(spec: Spec, name: str) -> Option:
    option = spec.by_name.get(name)
    if option is None:
        raise UsageError(f"unknown option {name}")
    return option


def _short(spec: Spec, values: dict[str, object], arg: str, rest: list[str]) -> None:
    option = _option(spec, arg[:2])
    if option.takes_value:
        _take(values, option, arg[2:] or None, rest, arg[:2])
        return
    values[option.dest] = True
    for letter in arg[2:]:  # -it: a run of flags
        flag = _option(spec, "-" + letter)
        if flag.takes_value:
            raise UsageError(f"option -{letter} needs a value and cannot be combined in {arg}")
        values[flag.dest] = True


def _take(values: dict[str, object], option: Option, value: str | None, rest: list[str], name: str) -> None:
    if not option.takes_value:
        if value is not None:
            raise UsageError(f"option {name} takes no value")
        values[option.dest] = True
        return
    if value is None:
        if not rest:
            raise UsageError(f"option {name} needs a value ({option.metavar})")
        value = rest.pop(0)
    if option.repeat:
        values[option.dest].append(value)  # type: ignore[union-attr]
    else:
        values[option.dest] = value
