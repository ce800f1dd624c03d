"""The README's two set-up commands stay true: CI runs the test one, the demo one works."""

from __future__ import annotations

import re

from tests.support import REPO


def _commands() -> list[str]:
    return re.findall(r"```sh\n(.+?)\n```", (REPO / "README.md").read_text())


def test_readme_has_exactly_two_setup_commands() -> None:
    install, tests = _commands()
    assert "pip install ." in install and "pybuild -f fixtures/demo/Recipefile -t demo fixtures/demo" in install
    assert install.rstrip().endswith("pybuild run demo")
    assert "pytest" in tests


def test_ci_runs_the_readme_test_command() -> None:
    _, tests = _commands()
    assert tests in (REPO / ".ci" / "run").read_text().splitlines()


def test_demo_recipe_exists_and_parses() -> None:
    import grammar

    recipe = grammar.parse_file(REPO / "fixtures/demo/Recipefile")
    assert [stage.name for stage in recipe.stages] == ["build", None]
