"""`pybuild parse` stays fast to start: it must not import heavy modules.

The time target lives in bench/parse_bench.py; this test pins the cause of
regressions instead (a stray `from typing import ...` costs 7 ms, `dataclasses`
12 ms, `lark` 35 ms, argparse 4 ms), without timing anything.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support import FIXTURES, REPO

HEAVY = ("typing", "dataclasses", "inspect", "lark", "argparse", "json", "store", "zstandard", "tqdm", "sqlite3")


@pytest.mark.parametrize("args", [["parse"], ["parse", "--json"]])
def test_parse_imports_nothing_heavy(args: list[str]) -> None:
    recipe = FIXTURES / "recipes" / "real" / "python-app.Dockerfile"
    code = (
        "import sys\nfrom builder.cli import main\nimport io, contextlib\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    main({[*args, str(recipe)]!r})\n"
        "print(' '.join(sorted(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    assert result.returncode == 0, result.stderr
    loaded = set(result.stdout.split())
    allowed = {"json"} if "--json" in args else set()
    assert not (set(HEAVY) - allowed) & loaded
