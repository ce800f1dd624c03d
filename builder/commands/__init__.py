"""pybuild's commands: what each accepts, and where its code lives.

Importing this package costs nothing beyond builder.argv: a command's module
is imported only when that command runs, so `pybuild parse` does not pay for
the store and `pybuild images` does not pay for the grammar.
"""

from __future__ import annotations

import importlib

from ..argv import Option, Positional, Spec

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..console import Console

__all__ = ["COMMANDS", "Command"]


class Command:
    """A subcommand: its `spec` and the `module:function` that runs it."""

    def __init__(self, spec: Spec, target: str) -> None:
        self.spec = spec
        self.target = target

    def run(self, args: dict[str, object], console: Console) -> int:
        module, _, function = self.target.partition(":")
        return importlib.import_module(module).__dict__[function](args, console)  # type: ignore[no-any-return]


def _spec(name: str, summary: str, options: list[Option] = (), positionals: list[Positional] = ()) -> Spec:  # type: ignore[assignment]
    return Spec(f"pybuild {name}", summary, list(options), list(positionals))


COMMANDS: dict[str, Command] = {
    "parse": Command(
        _spec(
            "parse",
            "check a recipe and print its stages, or its syntax tree with --json",
            [
                Option(
                    "--json",
                    help="print the syntax tree as BuildKit's parser builds it (one object per instruction), "
                    "without pybuild's own checks",
                )
            ],
            [Positional("file", help="the recipe to parse (- for standard input)")],
        ),
        "builder.commands.parse:run",
    ),
}
