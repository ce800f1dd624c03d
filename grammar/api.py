"""The entry points `parse_syntax`, `parse` and `parse_file`; see the package docstring."""

from __future__ import annotations

from .errors import RecipeError
from .parser import decode as _decode_text
from .parser import parse_syntax as _parse_syntax
from .source import Source

TYPE_CHECKING = False
if TYPE_CHECKING:
    from os import PathLike

    from .instructions import Recipe
    from .syntax import SyntaxTree

__all__ = ["parse", "parse_file", "parse_syntax"]


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
