"""The `pybuild` command: argument parsing, error rendering, exit codes.

Each command registers a `Command` (help line, argument setup, action). Only
the chosen command's parser is built and only its modules are imported, so
`pybuild parse` does not pay for the rest: it must run within three
interpreter start-up times.

Exit codes: 0 ok, 1 a build step failed, 2 usage or recipe error, 3 store
integrity error, 4 environment (namespaces, overlay), 70 internal error
(traceback only with --debug), 130 interrupted.
"""

from __future__ import annotations

import sys

from .argv import HelpRequested, Option, Positional, Spec, UsageError, parse_args

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["main"]

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130


class Command:
    """A subcommand: its options (`spec`) and `run(args)`, which returns an exit code."""

    def __init__(self, spec: Spec, run: Callable[[dict[str, object]], int]) -> None:
        self.spec = spec
        self.run = run


# ---- pybuild parse -----------------------------------------------------------

_PARSE = Spec(
    "pybuild parse",
    "check a recipe and print its stages, or its syntax tree with --json",
    [
        Option(
            "--json",
            help="print the syntax tree as BuildKit's parser builds it (one object per instruction), "
            "without pybuild's own checks",
        )
    ],
    [Positional("file", help="the recipe to parse (- for standard input)")],
)


def _run_parse(args: dict[str, object]) -> int:
    import grammar

    name, data = _read_recipe(str(args["file"]))
    if args["json"]:
        import json

        tree = grammar.parse_syntax(data, name)
        json.dump(grammar.to_json(tree), sys.stdout, ensure_ascii=False, indent=2)
        sys.stdout.write("\n")
        return EXIT_OK
    _print_summary(grammar.parse(data, name))
    return EXIT_OK


def _read_recipe(path: str) -> tuple[str, bytes]:
    if path == "-":
        return "<stdin>", sys.stdin.buffer.read()
    with open(path, "rb") as f:
        return path, f.read()


def _print_summary(recipe: object) -> None:
    from grammar.canonical import instruction_text

    stages = recipe.stages  # type: ignore[attr-defined]
    count = len(recipe.global_args) + sum(1 + len(s.instructions) for s in stages)  # type: ignore[attr-defined]
    out = [f"{recipe.source.name}: {len(stages)} stage{'s' * (len(stages) != 1)}, {count} instructions"]  # type: ignore[attr-defined]
    for directive in recipe.directives:  # type: ignore[attr-defined]
        out.append(f"  directive {directive.name}={directive.value}")
    for arg in recipe.global_args:  # type: ignore[attr-defined]
        out.append(f"{arg.span.line:6d}  {_first_line(instruction_text(arg))}   (global)")
    for stage in stages:
        out.append(f'stage {stage.index} "{stage.name}"' if stage.name else f"stage {stage.index}")
        for instruction in (stage.base, *stage.instructions):
            out.append(f"{instruction.span.line:6d}  {_first_line(instruction_text(instruction))}")
    print("\n".join(out))


def _first_line(text: str) -> str:
    head, newline, rest = text.partition("\n")
    return f"{head}  [+{rest.count(chr(10)) + 1} heredoc lines]" if newline else head


COMMANDS: dict[str, Command] = {
    "parse": Command(_PARSE, _run_parse),
}


# ---- entry point ---------------------------------------------------------------------

_USAGE = """usage: pybuild [--debug] COMMAND [ARGS...]

pybuild: a daemonless image builder for Dockerfile-style recipes.

commands:
{commands}

options:
  -h, --help   show this help and exit
  --version    show the version and exit
  --debug      show a traceback for internal errors

Run `pybuild COMMAND --help` for a command's options."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = False
    while argv and argv[0].startswith("-"):
        option = argv.pop(0)
        if option == "--debug":
            debug = True
        elif option in ("-h", "--help"):
            print(_usage())
            return EXIT_OK
        elif option == "--version":
            print(f"pybuild {_version()}")
            return EXIT_OK
        else:
            return _usage_error(f"unknown option {option}")
    if not argv:
        return _usage_error("a command is required")
    name, rest = argv[0], argv[1:]
    command = COMMANDS.get(name)
    if command is None:
        return _usage_error(f"unknown command {name!r}")
    try:
        args = parse_args(command.spec, rest)
    except HelpRequested as help_:
        print(help_)
        return EXIT_OK
    except UsageError as exc:
        print(f"{command.spec.usage()}\n{command.spec.prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return command.run(args)
    except KeyboardInterrupt:
        print("pybuild: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - every error ends here, rendered for a person
        return _report(exc, debug)


def _report(exc: BaseException, debug: bool) -> int:
    grammar_errors = sys.modules.get("grammar.errors")
    if grammar_errors is not None and isinstance(exc, grammar_errors.RecipeError):
        print(exc.render(), file=sys.stderr)
        return EXIT_USAGE
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        print(f"pybuild: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_USAGE
    if debug:
        import traceback

        traceback.print_exception(exc)
    else:
        print(f"pybuild: internal error: {type(exc).__name__}: {exc} (run with --debug for a traceback)", file=sys.stderr)
    return EXIT_INTERNAL


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = "\n".join(f"  {name.ljust(width)}  {cmd.spec.summary}" for name, cmd in COMMANDS.items())
    return _USAGE.format(commands=lines)


def _usage_error(message: str) -> int:
    print(f"pybuild: error: {message}\nRun `pybuild --help` for the commands.", file=sys.stderr)
    return EXIT_USAGE


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pybuild")
    except PackageNotFoundError:
        return "unknown"
