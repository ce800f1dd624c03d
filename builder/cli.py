"""The `pybuild` command: global options, dispatch, error rendering, exit codes.

Commands live in builder.commands, imported only when they run: `pybuild
parse` must finish within three interpreter start-up times.

Exit codes: 0 ok, 1 a build step failed, 2 usage, recipe or store error
(no such image, bad reference, unsafe archive), 3 store integrity error
(bytes that do not match their digest), 4 environment (namespaces, overlay),
70 internal error (traceback only with --debug), 130 interrupted.
"""

from __future__ import annotations

import os
import sys

from .argv import HelpRequested, UsageError, parse_args
from .commands import COMMANDS

TYPE_CHECKING = False  # typing costs start-up time: `pybuild parse` has a budget
if TYPE_CHECKING:
    from typing import NoReturn

__all__ = ["console", "main"]

EXIT_OK = 0
EXIT_BUILD = 1
EXIT_USAGE = 2
EXIT_INTEGRITY = 3
EXIT_ENVIRONMENT = 4
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a writer killed by it

_USAGE = """usage: pybuild [--debug] [--store DIR] COMMAND [ARGS...]
       pybuild [--store DIR] [BUILD OPTIONS] CONTEXT     (a build: pybuild -f Recipefile .)

pybuild: a daemonless image builder for Dockerfile-style recipes.

commands:
{commands}

options:
  -h, --help     show this help and exit
  --version      show the version and exit
  --store DIR    the image store (default: $PYBUILD_STORE, /var/lib/pybuild for
                 root, else $XDG_DATA_HOME/pybuild or ~/.local/share/pybuild)
  --debug        show a traceback for internal errors

Run `pybuild COMMAND --help` for a command's options."""


def console() -> NoReturn:
    """The `pybuild` executable: `main()`, then leave at once.

    Python's own tear-down (collecting every module, closing the metadata
    database, which checkpoints its write-ahead log) takes longer than most
    commands. By the time `main` returns everything that matters is closed,
    and SQLite's write-ahead log is crash-safe by design.
    """
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said
            pass
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = False
    store = None
    while argv and argv[0].startswith("-"):
        option = argv.pop(0)
        if option == "--debug":
            debug = True
        elif option == "--store" or option.startswith("--store="):
            store = option.partition("=")[2] or (argv.pop(0) if argv else "")
            if not store:
                return _usage_error("option --store needs a directory")
        elif option in ("-h", "--help"):
            print(_usage())
            return EXIT_OK
        elif option == "--version":
            print(f"pybuild {_version()}")
            return EXIT_OK
        elif option.partition("=")[0] in COMMANDS["build"].spec.by_name:
            # `pybuild -f Recipefile .`, `pybuild --no-cache -t app .`: a build's options, no command word
            argv = ["build", option, *argv]
            break
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
    if store is not None and not args.get("store"):
        args["store"] = store
    from .console import Console

    try:
        return command.run(args, Console())
    except UsageError as exc:  # found by the command itself
        print(f"{command.spec.prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
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
    store_errors = sys.modules.get("store.errors")
    if store_errors is not None and isinstance(exc, store_errors.StoreError):
        print(f"pybuild: error: {exc}", file=sys.stderr)
        if isinstance(exc, store_errors.IntegrityError):
            print("  hint: run `pybuild store verify` to check the whole store", file=sys.stderr)
            return EXIT_INTEGRITY
        return EXIT_USAGE
    builder_errors = sys.modules.get("builder.errors")
    if builder_errors is not None and isinstance(exc, builder_errors.BuildError):
        print(exc.render(), file=sys.stderr)
        return EXIT_BUILD
    if builder_errors is not None and isinstance(exc, builder_errors.BuilderError):
        print(f"pybuild: error: {exc}", file=sys.stderr)
        return EXIT_ENVIRONMENT if isinstance(exc, builder_errors.SandboxError) else EXIT_USAGE
    if isinstance(exc, BrokenPipeError):  # `pybuild images | head`: the reader has all it wanted
        return EXIT_BROKEN_PIPE
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
