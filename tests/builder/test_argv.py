"""builder.argv: the small option parser behind every pybuild command."""

from __future__ import annotations

import pytest

from builder.argv import HelpRequested, Option, Positional, Spec, UsageError, parse_args

SPEC = Spec(
    "pybuild demo",
    "a demo command",
    [
        Option("-f", "--file", help="the recipe", takes_value=True, metavar="FILE", default="Recipefile"),
        Option("-t", "--tag", help="a tag", repeat=True, metavar="NAME"),
        Option("-i", "--interactive", help="keep stdin open"),
        Option("-T", "--tty", help="allocate a terminal"),
        Option("--no-cache", help="build everything"),
    ],
    [Positional("context", help="the build context"), Positional("rest", help="more", optional=True)],
)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["ctx"], {"file": "Recipefile", "tag": [], "interactive": False, "tty": False, "no_cache": False, "context": "ctx", "rest": None}),
        (["-f", "x", "--tag=a", "-t", "b", "ctx", "more"], {"file": "x", "tag": ["a", "b"], "context": "ctx", "rest": "more"}),
        (["-fx", "--no-cache", "-iT", "ctx"], {"file": "x", "no_cache": True, "interactive": True, "tty": True}),
        (["--", "-dash-ctx"], {"context": "-dash-ctx"}),
        (["-"], {"context": "-"}),
    ],
)
def test_parses(argv: list[str], expected: dict[str, object]) -> None:
    values = parse_args(SPEC, argv)
    assert {k: values[k] for k in expected} == expected


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "the argument CONTEXT is required"),
        (["--nope", "c"], "unknown option --nope"),
        (["-f"], "option -f needs a value (FILE)"),
        (["--no-cache=yes", "c"], "option --no-cache takes no value"),
        (["-if", "c"], "option -f needs a value and cannot be combined in -if"),
        (["a", "b", "c"], "unexpected argument 'c'"),
    ],
)
def test_usage_errors(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_args(SPEC, argv)


def test_help_lists_everything() -> None:
    with pytest.raises(HelpRequested) as info:
        parse_args(SPEC, ["ctx", "--help"])
    text = str(info.value)
    assert text.startswith("usage: pybuild demo [OPTIONS] CONTEXT [REST]\n\na demo command")
    assert "-t, --tag NAME" in text and "(repeatable)" in text and "--no-cache" in text
