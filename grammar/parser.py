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
    from collections.abc import Callable, Iterable, Sequence

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
        return _drive(tokenize(text))
    except RecipeError as exc:
        if exc.span is not None and not exc.span.file:
            exc.span = exc.span._replace(file=name)
        raise


class _Splice(list):
    """Children collected by a lark-generated `x*` rule, spliced into the parent's."""


def _drive(batches: Iterable[tuple[tuple[str, ...], list[Token]]]) -> SyntaxTree:
    """Run the LALR(1) table over the token batches; returns the `recipe` value.

    The actions the table takes on a batch depend only on the state stack
    before it and on the batch's token kinds, and a recipe is mostly the same
    few token sequences (RUN ARGS EOL, ...). So each (stack, kinds) pair is
    planned once from the table (`_plan`) and the plan replayed on the values
    alone; a plan used often is compiled into a small function (`_compile`),
    which a single `pybuild parse` rarely pays for.
    """
    stack: tuple[int, ...] = (tables.START,)
    values: list = []
    for kinds, batch in batches:
        plan = _planned(stack, kinds)
        (plan.compiled or plan.run)(batch, values)
        stack = plan.after
    plan = _planned(stack, None)
    (plan.compiled or plan.run)((), values)
    return values[-1]  # type: ignore[no-any-return]


class _Plan:
    """The ops of one (stack, kinds) pair, interpreted by `run` until used enough to be `compiled`."""

    __slots__ = ("after", "compiled", "ops", "uses")

    def __init__(self, ops: list[int], after: tuple[int, ...]) -> None:
        self.ops, self.after, self.uses = ops, after, 0
        self.compiled: Callable[[Sequence[Token], list], None] | None = None

    def run(self, batch: Sequence[Token], values: list) -> None:
        self.uses += 1
        if self.uses >= _COMPILE_AFTER:
            self.compiled = _compile(self.ops)
            self.compiled(batch, values)
            return
        for op in self.ops:
            if op >= 0:
                values.append(batch[op])
            else:
                _reduce(values, _RULES[~op])


_PLANS: dict[tuple[tuple[int, ...], tuple[str, ...] | None], _Plan] = {}
# Bounds for hostile recipes with endless or endlessly long token shapes (real ones use a few dozen short ones).
_MAX_PLANS = 4096
_MAX_PLANNED_TOKENS = 32
_COMPILE_AFTER = 32  # uses before a plan is compiled: exec costs about as much as 30 interpreted runs


def _planned(stack: tuple[int, ...], kinds: tuple[str, ...] | None) -> _Plan:
    plan = _PLANS.get((stack, kinds))
    if plan is None:
        plan = _Plan(*_plan(stack, kinds))
        if len(_PLANS) < _MAX_PLANS and (kinds is None or len(kinds) <= _MAX_PLANNED_TOKENS):
            _PLANS[stack, kinds] = plan
    return plan


def _reduce(values: list, rule: tuple) -> None:
    """Replace the rule's children at the top of `values` by its value (lark's modes: see _compile)."""
    _name, size, mode, callback = rule
    if size:
        children = values[-size:]
        del values[-size:]
    else:
        children = []
    if mode == 2 and size == 1:
        value = children[0]
    elif mode == 1:
        if children and type(children[0]) is _Splice:
            value = children[0]
            value.extend(children[1:])
        else:
            value = _Splice(children)
    else:
        if mode == 3:
            children = [x for c in children for x in (c if type(c) is _Splice else (c,))]
        value = callback(children)
    values.append(value)


def _plan(stack: tuple[int, ...], kinds: tuple[str, ...] | None) -> tuple[list[int], tuple[int, ...]]:
    """The table's actions on tokens `kinds` (None: the end of input) from state stack `stack`.

    Returns (ops, the stack after): an op >= 0 shifts the batch's token at
    that index, an op < 0 reduces rule ~op. After a batch, what needs no
    lookahead is reduced at once, so an instruction's errors surface before
    the next line is read (BuildKit's order).
    """
    states, defaults = tables.STATES, tables.DEFAULT_REDUCE
    work = list(stack)
    ops: list[int] = []

    def reduce(action: int) -> int:
        name, size, _ = tables.RULES[~action]
        if size:
            del work[-size:]
        work.append(states[work[-1]][name])
        ops.append(action)
        return work[-1]

    if kinds is None:
        action = states[work[-1]]["$END"]
        while work[-1] != tables.END:
            action = states[reduce(action)].get("$END", 0)
        return ops, tuple(work)
    for index, kind in enumerate(kinds):
        action = states[work[-1]].get(kind)
        while action is not None and action < 0:
            action = states[reduce(action)].get(kind)
        if action is None:  # the lexer emits only what the grammar accepts
            raise AssertionError(f"recipe.lark rejects {kind} in state {work[-1]}")
        work.append(action)
        ops.append(index)
    action = defaults[work[-1]]
    while action:
        action = defaults[reduce(action)]
    return ops, tuple(work)


def _compile(ops: list[int]) -> Callable[[Sequence[Token], list], None]:
    """A function `run(batch, values)` doing what `ops` do to the value stack, with no interpretation.

    Values the batch makes stay in local variables; only those consumed
    from below the batch or left at its end touch `values`. The modes are
    lark's: 0 a rule with a callback, 1 its left-recursive `x*` helper (one
    list grown in place), 2 a `?rule` (one child passes through), 3 a rule
    whose `x*` children are spliced in.
    """
    code = ["def run(batch, values):"]
    names: dict[str, object] = {"_Splice": _Splice}
    local: list[str] = []  # expressions for the values this batch has pushed, bottom first
    for op in ops:
        if op >= 0:
            local.append(f"batch[{op}]")
            continue
        name, size, mode = tables.RULES[~op]
        mine = local[len(local) - size :] if size else []
        del local[len(local) - len(mine) :]
        below = size - len(mine)
        kids = f"[{', '.join(mine)}]"
        if below:
            code.append(f"    below = values[-{below}:]")
            code.append(f"    del values[-{below}:]")
            kids = f"below + {kids}" if mine else "below"
        target = f"v{len(code)}"
        if mode == 2 and size == 1:
            code.append(f"    {target} = {kids}[0]")
        elif mode == 1:
            code.append(f"    kids = {kids}")
            code.append("    if kids and type(kids[0]) is _Splice:")
            code.append(f"        {target} = kids[0]")
            code.append(f"        {target}.extend(kids[1:])")
            code.append("    else:")
            code.append(f"        {target} = _Splice(kids)")
        else:
            code.append(f"    kids = {kids}")
            if mode == 3:
                code.append("    kids = [x for c in kids for x in (c if type(c) is _Splice else (c,))]")
            names[f"_{name}"] = CALLBACKS[name]
            code.append(f"    {target} = _{name}(kids)")
        local.append(target)
    if local:
        code.append(f"    values.extend(({', '.join(local)},))")
    exec("\n".join(code), names)  # noqa: S102 - source built above from the table's rule numbers only
    return names["run"]  # type: ignore[return-value]


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


_RULES = [(name, size, mode, CALLBACKS.get(name)) for name, size, mode in tables.RULES]
