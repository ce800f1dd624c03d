"""grammar/tables.py is lark's compilation of recipe.lark, and current.

The parser drives the generated LALR table without importing lark (see
grammar/compile_tables.py); these tests prove the table is fresh and that
lark's own parser, fed the same tokens and callbacks, builds the same trees.
"""

from __future__ import annotations

import re

import pytest

import grammar
from grammar import compile_tables, tables
from tests.support import FIXTURES


def test_tables_are_current() -> None:
    assert tables.GRAMMAR_SHA256 == compile_tables.grammar_digest(), (
        "recipe.lark changed: run `python -m grammar.compile_tables`"
    )
    assert compile_tables.render_tables() == compile_tables.TABLES.read_text()


RECIPES = sorted((FIXTURES / "recipes").rglob("*Dockerfile")) + sorted((FIXTURES / "recipes").rglob("Recipefile"))
EXTRA = [
    "# escape=`\nFROM x\nRUN a `\n  b\nONBUILD ONBUILD RUN x\nONBUILD\nfoo --bar baz\n",
    "FROM x\nRUN <<A <<-B cat\na\nA\n\tb\n\tB\nCOPY --chmod=755 <<EOF /x\nhi\nEOF\n",
]


@pytest.mark.parametrize("text", [p.read_bytes() for p in RECIPES] + EXTRA, ids=[p.name for p in RECIPES] + ["extra-1", "extra-2"])
def test_lark_runtime_builds_the_same_tree(text: bytes | str) -> None:
    try:
        ours = grammar.parse_syntax(text)
    except grammar.RecipeSyntaxError as exc:
        with pytest.raises(grammar.RecipeError, match=re.escape(exc.message)):
            compile_tables.lark_parse(grammar.parser.decode(text, "x"))
        return
    assert compile_tables.lark_parse(grammar.parser.decode(text, "x")) == ours


@pytest.mark.parametrize("text", [p.read_bytes() for p in RECIPES] + EXTRA, ids=[p.name for p in RECIPES] + ["extra-1", "extra-2"])
def test_compiled_plans_build_what_interpreted_ones_do(text: bytes | str, monkeypatch: pytest.MonkeyPatch) -> None:
    def parse(compile_after: int) -> object:
        monkeypatch.setattr(grammar.parser, "_PLANS", {})
        monkeypatch.setattr(grammar.parser, "_COMPILE_AFTER", compile_after)
        try:
            return grammar.to_json(grammar.parse_syntax(text))
        except grammar.RecipeSyntaxError as exc:
            return str(exc)

    interpreted = parse(1 << 30)
    assert parse(1) == interpreted
    assert all(plan.compiled is not None for plan in grammar.parser._PLANS.values())
