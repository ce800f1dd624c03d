"""BuildKit's own parser test data (../shared/conformance), run against grammar.parse_syntax.

The data's format is described in ../shared/conformance/README.md. Every case
passes; none is skipped.
"""

from __future__ import annotations

import pytest

import grammar
from tests.support import SHARED, shared_path

PARSER = ("conformance", "buildkit", "frontend", "dockerfile", "parser")


def _cases(kind: str) -> list[str]:
    directory = SHARED.joinpath(*PARSER, kind)
    names = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
    return names or ["<missing>"]


@pytest.mark.parametrize("case", _cases("testfiles"))
def test_positive_case_dumps_as_buildkit(case: str) -> None:
    directory = shared_path(*PARSER, "testfiles", case)
    expected = (directory / "result").read_bytes().decode().replace("\r\n", "\n")
    tree = grammar.parse_syntax((directory / "Dockerfile").read_bytes(), "Dockerfile")
    assert grammar.dump(tree) == expected


@pytest.mark.parametrize("case", _cases("testfiles-negative"))
def test_negative_case_is_rejected(case: str) -> None:
    path = shared_path(*PARSER, "testfiles-negative", case, "Dockerfile")
    with pytest.raises(grammar.RecipeSyntaxError) as info:
        grammar.parse_syntax(path.read_bytes(), "Dockerfile")
    assert str(info.value).startswith("Dockerfile:")


def test_line_numbers_match_buildkit() -> None:
    path = shared_path(*PARSER, "testfile-line", "Dockerfile")
    tree = grammar.parse_syntax(path.read_bytes(), "Dockerfile")
    assert [(n.start_line, n.end_line) for n in tree.nodes] == [(5, 5), (11, 12), (17, 31)]
    assert (tree.nodes[0].start_line, tree.nodes[-1].end_line) == (5, 31)
