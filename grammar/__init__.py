"""The Recipefile language (Dockerfile syntax, BuildKit dialect): text to typed instructions.

Two levels, as in BuildKit:

    parse_syntax(text)  the syntax tree exactly as BuildKit's parser builds it
                        (what `pybuild parse --json` prints); fails only where
                        that parser fails
    parse(text)         typed, checked instructions grouped into stages: a
                        `Recipe`; fails with a RecipeError naming file:line:col

Both accept `str` or UTF-8 `bytes`. Variable substitution is separate
(`grammar.scope`), because it needs build arguments and base-image env.

    >>> from grammar import parse
    >>> recipe = parse(b"FROM busybox\\nRUN echo hi\\n")
    >>> [type(i).__name__ for i in recipe.stages[0].instructions]
    ['Run']

This package imports neither `builder` nor `store`, and nothing heavy at
import time: `pybuild parse` must start fast.
"""

from __future__ import annotations

from .errors import ExpansionError, RecipeError, RecipeSyntaxError, RecipeValidationError, UnknownInstructionError
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
    Heredoc,
    Instruction,
    Label,
    Maintainer,
    MountSpec,
    Onbuild,
    Recipe,
    Run,
    Shell,
    ShellForm,
    Stage,
    Stopsignal,
    User,
    Volume,
    Workdir,
)
from .parser import decode as _decode_text
from .parser import parse_syntax as _parse_syntax
from .source import Source, Span
from .syntax import Directive, SyntaxNode, SyntaxTree, dump, to_json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from os import PathLike

__all__ = [
    "Add",
    "Arg",
    "ArgDecl",
    "Cmd",
    "Command",
    "Copy",
    "Directive",
    "Entrypoint",
    "Env",
    "ExecForm",
    "ExpansionError",
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
    "RecipeError",
    "RecipeSyntaxError",
    "RecipeValidationError",
    "Run",
    "Shell",
    "ShellForm",
    "Source",
    "Span",
    "Stage",
    "Stopsignal",
    "SyntaxNode",
    "SyntaxTree",
    "UnknownInstructionError",
    "User",
    "Volume",
    "Workdir",
    "dump",
    "parse",
    "parse_file",
    "parse_syntax",
    "to_json",
]


def parse_syntax(data: str | bytes, name: str = "Recipefile") -> SyntaxTree:
    """BuildKit's syntax tree of a recipe; RecipeSyntaxError where BuildKit fails."""
    text = _decode(data, name)
    try:
        return _parse_syntax(text, name)
    except RecipeError as exc:
        exc.source = Source(name, text)
        raise


def parse(data: str | bytes, name: str = "Recipefile") -> Recipe:
    """A checked, typed recipe; RecipeError (with file:line:col) when it is wrong."""
    from .transform import to_instruction
    from .validate import assemble

    text = _decode(data, name)
    source = Source(name, text)
    try:
        tree = _parse_syntax(text, name)
        return assemble(source, tree.directives, (to_instruction(node, name) for node in tree.nodes))
    except RecipeError as exc:
        exc.source = source
        raise


def _decode(data: str | bytes, name: str) -> str:
    try:
        return _decode_text(data, name)
    except RecipeError as exc:
        raw = data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")
        exc.source = Source(name, raw.decode("utf-8", "replace"))
        raise


def parse_file(path: str | PathLike[str]) -> Recipe:
    """Read and parse a recipe file; the path is the name used in messages."""
    with open(path, "rb") as f:
        return parse(f.read(), str(path))
