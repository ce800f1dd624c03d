"""Compile recipe.lark into grammar/tables.py with lark.

Run `python -m grammar.compile_tables` after editing recipe.lark. The parser
(grammar/parser.py) drives the LALR(1) table that lark computes here, so that
parsing a recipe never imports lark at run time: importing lark takes five
interpreter start-ups and `pybuild parse` must finish within three.

`lark_parse(text)` runs lark's own LALR parser over the same tokens and with
the same rule callbacks; tests use it to prove both parsers agree.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from lark import Lark, Transformer
from lark.lexer import Lexer
from lark.lexer import Token as LarkToken
from lark.parsers.lalr_analysis import Shift

from . import lexer

GRAMMAR = Path(__file__).with_name("recipe.lark")
TABLES = Path(__file__).with_name("tables.py")

_HEADER = '''\
"""LALR(1) tables of recipe.lark, computed by lark. Generated: do not edit.

Regenerate with `python -m grammar.compile_tables`; tests/grammar/test_tables.py
fails when recipe.lark changed since. RULES[i] is (rule, length, kind) with
kind 0 = build a value with the rule's callback, 1 = collect the children for
the parent (lark's generated `__x_star_n` rules), 2 = pass a single child
through (lark's `?rule`), 3 = like 0, after splicing in collected children.
STATES[s] maps a symbol to an action: n >= 0 shifts to state n, n < 0 reduces
by RULES[~n].
"""
'''


def grammar_digest() -> str:
    return hashlib.sha256(GRAMMAR.read_bytes()).hexdigest()


def _lark(transformer: Transformer | None = None) -> Lark:
    return Lark(GRAMMAR.read_text(), parser="lalr", lexer=_LarkLexer, start="recipe", transformer=transformer)


def render_tables() -> str:
    """The text of grammar/tables.py for the current recipe.lark."""
    lark = _lark()
    table = lark.parser.parser._parse_table
    rules = list(lark.rules)
    index = {id(rule): i for i, rule in enumerate(rules)}
    rows = []
    for rule in rules:
        name = str(rule.origin.name)
        spliced = any(str(symbol.name).startswith("_") for symbol in rule.expansion)
        kind = 1 if name.startswith("_") else 2 if rule.options.expand1 else 3 if spliced else 0
        rows.append(f"    ({name!r}, {len(rule.expansion)}, {kind}),")
    # lark numbers states in hash order; renumber them breadth-first from the
    # start state so the generated file is the same on every run.
    start, end = table.start_states["recipe"], table.end_states["recipe"]
    order = [start]
    number = {start: 0}
    for state in order:
        for symbol in sorted(table.states[state]):
            action, arg = table.states[state][symbol]
            if action is Shift and arg not in number:
                number[arg] = len(order)
                order.append(arg)
    if end not in number:
        number[end] = len(order)
        order.append(end)
    states = []
    for state in order:
        actions = table.states[state]
        cells = []
        for symbol in sorted(actions):
            action, arg = actions[symbol]
            code = number[arg] if action is Shift else ~index[id(arg)]
            cells.append(f"{str(symbol)!r}: {code}")
        states.append("    {" + ", ".join(cells) + "},")
    defaults = []
    for state in order:
        actions = {(action, id(arg)): arg for action, arg in table.states[state].values()}
        only_reduce = len(actions) == 1 and next(iter(actions))[0] is not Shift
        defaults.append(str(~index[id(next(iter(actions.values())))]) if only_reduce else "0")
    return "\n".join(
        [
            _HEADER,
            f"GRAMMAR_SHA256 = {grammar_digest()!r}",
            f"START = {number[start]}",
            f"END = {number[end]}",
            "RULES = (",
            *rows,
            ")",
            "STATES = (",
            *states,
            ")",
            "# DEFAULT_REDUCE[s] < 0: state s reduces by RULES[~n] whatever comes next",
            f"DEFAULT_REDUCE = ({', '.join(defaults)},)",
            "",
        ]
    )


class _LarkToken(LarkToken):
    __slots__ = ("data",)


class _LarkLexer(Lexer):
    """The recipe lexer's tokens, as lark Tokens."""

    def __init__(self, lexer_conf: object) -> None:
        pass

    def lex(self, data: str):  # noqa: ANN201 - lark's interface
        for _, batch in lexer.tokenize(data):
            for tok in batch:
                out = _LarkToken(tok.type, tok.value, 0, tok.line, tok.column, tok.end_line, tok.end_column)
                out.data = tok.data
                yield out


def lark_parse(text: str) -> object:
    """Parse with lark's own runtime and pybuild's rule callbacks."""
    from . import parser  # needs the generated tables, which main() writes

    methods = {name: staticmethod(callback) for name, callback in parser.CALLBACKS.items()}
    transformer = type("RecipeTransformer", (Transformer,), methods)()
    return _lark(transformer).parse(text)


def main() -> int:
    TABLES.write_text(render_tables())
    print(f"wrote {TABLES}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
