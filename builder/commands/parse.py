"""`pybuild parse`: check a recipe and summarise it, or print BuildKit's syntax tree."""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from grammar import Recipe

    from ..console import Console

__all__ = ["run"]


def run(args: dict[str, object], console: Console) -> int:
    import grammar

    name, data = _read_recipe(str(args["file"]))
    if args["json"]:
        console.json(grammar.to_json(grammar.parse_syntax(data, name)))
        return 0
    for line in summary(grammar.parse(data, name)):
        console.print(line)
    return 0


def _read_recipe(path: str) -> tuple[str, bytes]:
    if path == "-":
        return "<stdin>", sys.stdin.buffer.read()
    with open(path, "rb") as f:
        return path, f.read()


def summary(recipe: Recipe) -> list[str]:
    """Stages and instructions, one line each, with their line numbers."""
    from grammar.canonical import instruction_text

    stages = recipe.stages
    count = len(recipe.global_args) + sum(1 + len(s.instructions) for s in stages)
    out = [f"{recipe.source.name}: {len(stages)} stage{'s' * (len(stages) != 1)}, {count} instructions"]
    out += [f"  directive {d.name}={d.value}" for d in recipe.directives]
    out += [f"{arg.span.line:6d}  {_first_line(instruction_text(arg))}   (global)" for arg in recipe.global_args]
    for stage in stages:
        out.append(f'stage {stage.index} "{stage.name}"' if stage.name else f"stage {stage.index}")
        for instruction in (stage.base, *stage.instructions):
            out.append(f"{instruction.span.line:6d}  {_first_line(instruction_text(instruction))}")
    return out


def _first_line(text: str) -> str:
    head, newline, rest = text.partition("\n")
    return f"{head}  [+{rest.count(chr(10)) + 1} heredoc lines]" if newline else head
