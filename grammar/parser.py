"""Text to syntax tree: the recipe lexer's tokens through recipe.lark's LALR table.

`parse_syntax(text, name)` accepts exactly what BuildKit's parser accepts and
fails where it fails. The table comes from lark (see compile_tables.py); the
loop below is lark's LALR driver reduced to what recipe.lark needs, and the
rule callbacks build `SyntaxNode`s the way BuildKit's line parsers do.
"""

from __future__ import annotations

from . import tables
from .arguments import dispatch
from .errors import RecipeError, RecipeSyntaxError
from .lexer import Token, tokenize
from .source import Span
from .syntax import Directive, SyntaxNode, SyntaxTree

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = ["CALLBACKS", "decode", "parse_syntax"]


def decode(data: bytes | str, name: str) -> str:
    """Recipe text from bytes (strict UTF-8) or str (no lone surrogates), BOM dropped."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
            raise RecipeSyntaxError(
                f"invalid UTF-8 (byte 0x{data[exc.start]:02x}): recipes must be UTF-8 text",
                Span(name, line, column, line, column),
            ) from None
    elif not data.isascii():
        # A str from Python code may hold lone surrogates, which no file can.
        try:
            data.encode("utf-8")
        except UnicodeEncodeError as exc:
            line = data.count("\n", 0, exc.start) + 1
            column = exc.start - (data.rfind("\n", 0, exc.start) + 1) + 1
            raise RecipeSyntaxError(
                f"invalid text (lone surrogate U+{ord(data[exc.start]):04X}): recipes must be Unicode text",
                Span(name, line, column, line, column),
            ) from None
    return data[1:] if data.startswith("\ufeff") else data


def parse_syntax(text: str, name: str = "Recipefile") -> SyntaxTree:
    """Parse recipe text into BuildKit's syntax tree; RecipeSyntaxError on failure."""
    try:
        return _drive(tokenize(text), CALLBACKS)
    except RecipeError as exc:
        if exc.span is not None and not exc.span.file:
            exc.span = exc.span._replace(file=name)
        raise


class _Splice(list):
    """Children collected by a lark-generated `x*` rule, spliced into the parent's."""


def _drive(batches: Iterable[list[Token]], callbacks: dict[str, Callable[[list], object]]) -> SyntaxTree:
    """Run the LALR(1) table over the token batches; returns the `recipe` value."""
    states, defaults = tables.STATES, tables.DEFAULT_REDUCE
    rules = _RULES if callbacks is CALLBACKS else _rules(callbacks)
    stack = [tables.START]
    values: list = []

    def reduce(action: int) -> int:
        """Apply rule ~action; return the new top state."""
        name, size, mode, callback = rules[~action]
        if size:
            children = values[-size:]
            del values[-size:], stack[-size:]
        else:
            children = []
        if mode == 2 and size == 1:  # `?rule` with one child: pass it through
            value = children[0]
        elif mode == 1:  # lark's left-recursive `x*` helper: grow one list in place
            if children and type(children[0]) is _Splice:
                value = children[0]
                value.extend(children[1:])
            else:
                value = _Splice(children)
        else:
            if mode == 3:
                children = [x for c in children for x in (c if type(c) is _Splice else (c,))]
            value = callback(children)
        state = states[stack[-1]][name]
        stack.append(state)
        values.append(value)
        return state

    for batch in batches:
        for token in batch:
            kind = token[0]
            action = states[stack[-1]].get(kind)
            while action is not None and action < 0:
                action = states[reduce(action)].get(kind)
            if action is None:  # the lexer emits only what the grammar accepts
                raise AssertionError(f"recipe.lark rejects {kind} in state {stack[-1]}")
            stack.append(action)
            values.append(token)
        # Reduce what needs no lookahead at once, so an instruction's errors
        # surface before the next line is read (BuildKit's order).
        action = defaults[stack[-1]]
        while action:
            action = defaults[reduce(action)]
    action = states[stack[-1]]["$END"]
    while stack[-1] != tables.END:
        action = states[reduce(action)].get("$END", 0)
    return values[-1]  # type: ignore[no-any-return]


# ---- rule callbacks ----------------------------------------------------------
# Each instruction rule yields a partial (word token, flag tokens, args token
# or inner partial); `line` turns it into a SyntaxNode once the heredocs and
# the escape character (carried by EOL) are known.


def _instruction(children: list) -> tuple:
    last = children[-1]
    if len(children) > 1 and last.type == "ARGS":
        return children[0], children[1:-1], last, None
    return children[0], children[1:], None, None


def _onbuild(children: list) -> tuple:
    word, *rest = children
    inner = rest.pop() if rest and type(rest[-1]) is tuple else None
    return word, rest, None, inner


def _line(children: list) -> SyntaxNode:
    partial, end = children[0], children[-1]
    heredocs = children[1].data if len(children) == 3 else ()
    if partial[3] is None:
        return _node(partial, None, end, heredocs)
    chain = []
    while partial is not None:  # ONBUILD may nest thousands deep: no recursion
        chain.append(partial)
        partial = partial[3]
    node = None
    for partial in reversed(chain):
        node = _node(partial, node, end, heredocs)
    return node


def _node(partial: tuple, inner: SyntaxNode | None, end: Token, heredocs: tuple) -> SyntaxNode:
    word, flags, args, _ = partial
    if inner is None and word.type != "ONBUILD":
        try:
            values, is_json = dispatch(word.value, args.value if args is not None else "", end.data)
        except RecipeSyntaxError as exc:
            at = args if args is not None else word
            raise exc.with_span(Span("", at.line, at.column, at.end_line, at.end_column)) from None
    else:
        values, is_json = (), False
    return tuple.__new__(  # SyntaxNode, without namedtuple's Python-level __new__
        SyntaxNode,
        (
        word.value,
        tuple([f.value for f in flags]) if flags else (),
        values,
        is_json,
        inner,
        end.value,
        end.line,
        end.end_line,
        heredocs,
        (word.line, word.column),
        tuple([(f.line, f.column) for f in flags]) if flags else (),
        (args.line, args.column) if args is not None else None,
        ),
    )


def _recipe(children: list) -> SyntaxTree:
    directives = tuple(c for c in children if type(c) is Directive)
    nodes = tuple(c for c in children if type(c) is SyntaxNode)
    escape = next((d.value for d in directives if d.name == "escape"), "\\")
    return SyntaxTree(directives, nodes, escape)


def _directive(children: list) -> Directive:
    token = children[0]
    name, _, value = token.value.partition("=")
    return Directive(name, value, token.line)


CALLBACKS: dict[str, Callable[[list], object]] = {
    name: _instruction
    for name in (
        "from arg run copy add workdir cmd entrypoint shell env label maintainer "
        "expose volume user stopsignal healthcheck unknown"
    ).split()
}
CALLBACKS.update(onbuild=_onbuild, line=_line, recipe=_recipe, directive=_directive)


def _rules(callbacks: dict[str, Callable[[list], object]]) -> list[tuple]:
    return [(name, size, mode, callbacks.get(name)) for name, size, mode in tables.RULES]


_RULES = _rules(CALLBACKS)
