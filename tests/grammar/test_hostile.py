"""Hostile recipes (design/hostile-inputs.md, PARSE-01): rejected fast, with a location.

Each input must end in a RecipeError naming file:line:col, well within
seconds, without RecursionError or runaway memory. Sizes are the plan's.
"""

from __future__ import annotations

import resource
import time

import pytest

import grammar
from grammar.scope import GlobalScope, StageScope


def _rejected(text: str | bytes, *, seconds: float = 5.0) -> grammar.RecipeError:
    start = time.monotonic()
    with pytest.raises(grammar.RecipeError) as info:
        grammar.parse(text, "Dockerfile")
    assert time.monotonic() - start < seconds
    assert str(info.value).startswith("Dockerfile:")
    return info.value


def test_twenty_megabyte_recipe_is_parsed_in_bounded_time() -> None:
    text = "FROM busybox\n" + "RUN echo " + "x" * 60 + "\n" * 1 + ("RUN echo " + "x" * 60 + "\n") * 300_000
    assert len(text) > 20_000_000
    start = time.monotonic()
    recipe = grammar.parse(text)
    assert len(recipe.stages[0].instructions) == 300_001
    assert time.monotonic() - start < 30
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss < 2_000_000  # KiB


def test_hundred_thousand_continuations() -> None:
    text = "FROM busybox\nRUN true" + " \\\n&& true" * 100_000 + "\n"
    start = time.monotonic()
    (run,) = grammar.parse(text).stages[0].instructions
    assert run.command.text.count("&& true") == 100_000
    assert time.monotonic() - start < 5


def test_deeply_nested_substitution_is_refused_not_recursed() -> None:
    recipe = grammar.parse("FROM busybox\nARG A=" + "${a:-" * 10_000 + "x" + "}" * 10_000 + "\n")
    scope = StageScope(GlobalScope(recipe.global_args, {}))
    with pytest.raises(grammar.ExpansionError, match="nested too deeply") as info:
        scope.apply(recipe.stages[0].instructions[0])
    assert info.value.span.line == 2


def test_unterminated_heredoc_nul_and_invalid_utf8() -> None:
    assert "unterminated heredoc" in _rejected("FROM busybox\nRUN <<EOF\n" + "x\n" * 100_000).message
    assert _rejected("FROM busybox\nRUN echo \x00\n").span.line == 2
    err = _rejected(b"FROM busybox\nRUN echo \xff\xfe\n")
    assert (err.span.line, err.span.column) == (2, 10)


def test_hundred_thousand_stages() -> None:
    text = "".join(f"FROM busybox AS s{i}\n" for i in range(100_000))
    start = time.monotonic()
    assert len(grammar.parse(text).stages) == 100_000
    assert time.monotonic() - start < 10
    assert "duplicate stage name" in _rejected(text + "FROM busybox AS s5\n").message


@pytest.mark.parametrize(
    "text",
    [
        "FROM busybox AS a\nCOPY --from=b /x /x\nFROM busybox AS b\nCOPY --from=a /x /x\n",
        "FROM busybox AS a\nCOPY --from=a /x /x\n",
        "FROM busybox AS a\nRUN --mount=from=a,target=/m true\n",
        "FROM busybox\nCOPY --from=0 /x /x\n",
    ],
)
def test_stage_cycles_are_reported_with_the_stage(text: str) -> None:
    err = _rejected(text)
    assert "--from" in err.message or "from" in err.message


def test_deep_json_and_onbuild_nesting() -> None:
    _rejected("FROM busybox\nRUN " + "[" * 9000 + "]" * 9000 + "\n")
    assert "ONBUILD" in _rejected("FROM busybox\n" + "ONBUILD " * 8000 + "RUN x\n").message


def test_self_referencing_arg_expands_to_empty_not_forever() -> None:
    recipe = grammar.parse("FROM busybox\nARG A=$A$A$A\nWORKDIR /$A\n")
    scope = StageScope(GlobalScope(recipe.global_args, {}))
    assert [scope.apply(i) for i in recipe.stages[0].instructions][1].path == "/"
