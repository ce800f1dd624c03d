"""Package layering: grammar <- builder -> store, and each third-party library in its one place.

Every module under the three packages is parsed with `ast`; imports are
checked against the allowed directions (pip's "MUST NOT import" rule, made
executable).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support import REPO

PACKAGES = ("grammar", "builder", "store")
FORBIDDEN = {"grammar": {"builder", "store"}, "store": {"builder", "grammar"}, "builder": set()}
# Third-party modules and where they may be imported.
CONFINED = {
    "lark": {"grammar/compile_tables.py"},
    "zstandard": {"store/compression.py"},
    "tqdm": {"builder/console.py"},
    "cryptography": {"store/signing.py"},
    "pytest": set(),
    "hypothesis": set(),
}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


MODULES = sorted(p for package in PACKAGES for p in (REPO / package).rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(REPO)))
def test_module_respects_layering(path: Path) -> None:
    package = path.relative_to(REPO).parts[0]
    relative = path.relative_to(REPO).as_posix()
    for line, name in _imports(path):
        assert name not in FORBIDDEN[package], f"{relative}:{line} imports {name}: {package} must not"
        if name in CONFINED:
            assert relative in CONFINED[name], f"{relative}:{line} imports {name}, allowed only in {CONFINED[name]}"


def test_layout_is_complete() -> None:
    for name in (*PACKAGES, "tests", "fixtures", "bench", "pyproject.toml", "README.md", ".ci/run"):
        assert (REPO / name).exists(), name
