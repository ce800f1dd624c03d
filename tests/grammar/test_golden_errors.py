"""Golden error messages: fixtures/recipes/invalid/<case>/{Recipefile,error.txt}.

Each case must fail with exactly the rendered error (file:line:col, the source
line, a caret, the hint), both from grammar.parse and from `pybuild parse`
(exit status 2, no traceback). Refresh with `pytest --update-golden`.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import grammar
from tests.support import FIXTURES, REPO

CASES = sorted(p.name for p in (FIXTURES / "recipes" / "invalid").iterdir())


def _rendered(case: str) -> str:
    path = FIXTURES / "recipes" / "invalid" / case / "Recipefile"
    with pytest.raises(grammar.RecipeError) as info:
        grammar.parse(path.read_bytes(), "Recipefile")
    return info.value.render() + "\n"


@pytest.mark.parametrize("case", CASES)
def test_error_is_rendered_as_golden(case: str, update_golden: bool) -> None:
    golden = FIXTURES / "recipes" / "invalid" / case / "error.txt"
    text = _rendered(case)
    if update_golden:
        golden.write_text(text)
    assert text == golden.read_text()
    first = text.splitlines()[0]
    assert first.startswith("Recipefile:") and ": error: " in first


@pytest.mark.parametrize("case", CASES)
def test_cli_reports_golden_error(case: str) -> None:
    directory = FIXTURES / "recipes" / "invalid" / case
    result = subprocess.run(
        [sys.executable, "-m", "builder", "parse", "Recipefile"],
        cwd=directory,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (directory / "error.txt").read_text()
    assert "Traceback" not in result.stderr
