"""The syntax tree: a recipe as BuildKit's parser sees it, before any checks.

One `SyntaxNode` per instruction, holding exactly what BuildKit's `parser.Node`
holds (the instruction word as written, flags, argument values, JSON form,
heredocs, line range). It is the input of the typed layer and the source of
`pybuild parse --json` and of BuildKit's S-expression dump.
"""

from __future__ import annotations

from .arguments import go_quote
from .record import record

__all__ = ["Directive", "Heredoc", "SyntaxNode", "SyntaxTree", "dump", "to_json"]


@record
class Heredoc:
    """A here-document attached to RUN, COPY or ADD (`<<EOF` ... `EOF`).

    `content` is the body as written, line endings included; `chomp` (from
    `<<-`) asks for leading tabs to be stripped when it is used, and `expand`
    is false when the delimiter was quoted (no variable expansion inside).
    """

    name: str
    file_descriptor: int
    expand: bool
    chomp: bool
    content: str


@record
class Directive:
    """A parser directive from the top of the file (`# escape=``)."""

    name: str
    value: str
    line: int


@record
class SyntaxNode:
    """One instruction as parsed, with no meaning attached yet.

    `word` keeps the instruction word's case as written. `args` are the values
    of BuildKit's node chain: for ENV and LABEL that is (key, value, separator)
    triples, where the separator is "=" or "" for the old `ENV key value` form.
    `inner` is the instruction wrapped by ONBUILD. Positions are 1-based
    (line, column) pairs used only for error messages.
    """

    word: str
    flags: tuple[str, ...]
    args: tuple[str, ...]
    json: bool
    inner: SyntaxNode | None
    original: str
    start_line: int
    end_line: int
    heredocs: tuple[Heredoc, ...]
    word_at: tuple[int, int]
    flags_at: tuple[tuple[int, int], ...]
    args_at: tuple[int, int] | None

    @property
    def keyword(self) -> str:
        """The instruction word in upper case (`FROM`, `RUN`, or an unknown word)."""
        return self.word.upper()


@record
class SyntaxTree:
    """A parsed recipe: its directives, instructions and escape character."""

    directives: tuple[Directive, ...]
    nodes: tuple[SyntaxNode, ...]
    escape: str


def _values(node: SyntaxNode) -> list[str]:
    if node.inner is not None:
        return [""]  # BuildKit's chain holds one empty-valued node with the children
    if node.word.lower() in ("env", "label"):
        return [v for i, v in enumerate(node.args) if i % 3 != 2]
    return list(node.args)


def to_json(tree: SyntaxTree) -> list[dict]:
    """The `pybuild parse --json` document: one object per instruction.

    Keys and values follow the `dockerfile` PyPI package (a wrapper of
    BuildKit's parser), with instruction words upper-cased.
    """
    out = []
    for node in tree.nodes:
        target = node.inner if node.inner is not None else node
        out.append(
            {
                "cmd": node.keyword,
                "sub_cmd": node.inner.keyword if node.inner is not None else None,
                "json": target.json,
                "original": node.original,
                "start_line": node.start_line,
                "end_line": node.end_line,
                "flags": list(node.flags),
                "value": _values(target),
                "heredocs": [
                    {"name": h.name, "file_descriptor": h.file_descriptor, "content": h.content}
                    for h in node.heredocs
                ],
            }
        )
    return out


def _dump_node(node: SyntaxNode) -> str:
    # Iterative: ONBUILD ONBUILD ... may nest thousands deep in a hostile file.
    out: list[str] = []
    depth = 0
    while True:
        parts = [node.word.lower()]
        if node.flags:
            parts.append("[" + " ".join(go_quote(f) for f in node.flags) + "]")
        if node.inner is None:
            parts.extend(go_quote(v) for v in node.args)
            out.append(" ".join(parts))
            return "".join(out) + ")" * depth
        out.append(" ".join(parts) + " (")
        depth += 1
        node = node.inner


def dump(tree: SyntaxTree) -> str:
    """BuildKit's `Node.Dump()` of the whole tree, one `(instruction ...)` per line."""
    return "".join(f"({_dump_node(node)})\n" for node in tree.nodes)
