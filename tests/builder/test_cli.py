"""`pybuild` as users run it: exit codes, stdout/stderr, no tracebacks for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import grammar
from builder import cli
from builder.commands import Command
from tests.support import FIXTURES, REPO

RECIPE = FIXTURES / "recipes" / "real" / "python-app.Dockerfile"


def pybuild(*args: str, stdin: str | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "builder", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_parse_prints_stages_and_instructions() -> None:
    result = pybuild("parse", str(RECIPE))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{RECIPE}: 1 stage, 17 instructions"
    assert "  directive syntax=docker/dockerfile:1" in lines
    assert lines[3:5] == ['stage 0 "runtime"', "     6  FROM python:${PYTHON_VERSION}-slim AS runtime"]
    assert lines[-1] == '    39  CMD ["src.wsgi:app"]'


def test_parse_json_is_the_syntax_tree() -> None:
    result = pybuild("parse", "--json", str(RECIPE))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == grammar.to_json(grammar.parse_syntax(RECIPE.read_bytes()))


def test_parse_json_accepts_what_buildkit_accepts() -> None:
    result = pybuild("parse", "--json", "-", stdin="FROM x\nfrobnicate now\n")
    assert result.returncode == 0
    assert json.loads(result.stdout)[1]["value"] == [""]
    checked = pybuild("parse", "-", stdin="FROM x\nfrobnicate now\n")
    assert checked.returncode == 2
    assert checked.stderr.startswith("<stdin>:2:1: error: unknown instruction: frobnicate")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["parse", "/nonexistent/Recipefile"], "pybuild: error: No such file or directory: /nonexistent/Recipefile"),
        (["frobnicate"], "pybuild: error: unknown command 'frobnicate'"),
        ([], "pybuild: error: a command is required"),
        (["--bogus"], "pybuild: error: unknown option --bogus"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args: list[str], message: str) -> None:
    result = pybuild(*args)
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == message
    assert "Traceback" not in result.stderr


def test_help_lists_commands() -> None:
    result = pybuild("--help")
    assert result.returncode == 0
    assert "  parse  " in result.stdout


def broken(args: object, console: object) -> int:
    raise RuntimeError("boom")


def test_internal_errors_exit_70_and_hide_the_traceback(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(cli.COMMANDS, "parse", Command(cli.COMMANDS["parse"].spec, "tests.builder.test_cli:broken"))
    assert cli.main(["parse", str(RECIPE)]) == 70
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: boom (run with --debug" in err and "Traceback" not in err
    assert cli.main(["--debug", "parse", str(RECIPE)]) == 70
    assert "Traceback" in capsys.readouterr().err


def test_console_script_when_installed() -> None:
    script = Path(sys.executable).with_name("pybuild")
    if not script.exists():
        pytest.skip(f"no pybuild console script beside {sys.executable} (not pip-installed here)")
    result = subprocess.run([str(script), "parse", str(RECIPE)], capture_output=True, text=True)
    assert result.returncode == 0 and "stage 0" in result.stdout
