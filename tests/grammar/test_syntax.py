"""The syntax tree (`pybuild parse --json`): BuildKit's parser, quirks included.

Expected values were checked against BuildKit's Go parser (through the PyPI
package `dockerfile`), except where a comment says BuildKit changed since.
"""

from __future__ import annotations

import pytest

import grammar
from grammar.lexer import MAX_LINE_BYTES


def nodes(text: str) -> list[dict]:
    return grammar.to_json(grammar.parse_syntax(text))


def test_json_document_has_exactly_the_documented_keys() -> None:
    (node,) = nodes("copy --from=build a b\n")
    assert node == {
        "cmd": "COPY",
        "sub_cmd": None,
        "json": False,
        "original": "copy --from=build a b",
        "start_line": 1,
        "end_line": 1,
        "flags": ["--from=build"],
        "value": ["a", "b"],
        "heredocs": [],
    }


@pytest.mark.parametrize(
    ("text", "value", "is_json"),
    [
        ('CMD ["a", "b"]', ["a", "b"], True),
        ("CMD []", [], True),
        ('CMD ["a"] trailing', ["a"], True),  # Go's json.Decoder reads one value
        ("CMD [NaN]", ["[NaN]"], False),
        ("CMD ['a']", ["['a']"], False),
        ('CMD ["a"', ['["a"'], False),
        ('CMD ["\\ud800x"]', ["\ufffdx"], True),  # Go decodes a lone surrogate to U+FFFD
        ('CMD ["a", 1e999]', ['["a", 1e999]'], False),  # out of float64 range: a decode error
        ("COPY a  b\tc", ["a", "b", "c"], False),
        ("ENV a=1 b=\"x y\"", ["a", "1", "b", '"x y"'], False),
        ("ENV a  b c", ["a", "b c"], False),
        ("ARG a=\"b c\" d", ['a="b c"', "d"], False),
        ("HEALTHCHECK CMD [\"x\"]", ["CMD", "x"], True),
        ("HEALTHCHECK", [], False),
        ("EXPOSE", [], False),
        ("frob x y", [""], False),
    ],
)
def test_arguments_are_split_as_buildkit_splits_them(text: str, value: list[str], is_json: bool) -> None:
    (node,) = nodes(text)
    assert (node["value"], node["json"]) == (value, is_json)


def test_non_string_json_array_is_a_syntax_error() -> None:
    with pytest.raises(grammar.RecipeSyntaxError, match="must be comprised of strings only"):
        nodes("RUN [1]")
    deep = "RUN " + "[" * 5000 + "]" * 5000
    with pytest.raises(grammar.RecipeSyntaxError, match="strings only"):
        nodes(deep)
    assert nodes("RUN " + "[" * 20000)[0]["value"] == ["[" * 20000]  # past Go's depth limit: text


@pytest.mark.parametrize(
    ("text", "flags", "value"),
    [
        ('RUN --a="b c"d --e \'f g\' h', ["--a=b cd", "--e"], ["'f g' h"]),
        ("RUN --a=b\\ c d", ["--a=b c"], ["d"]),
        ("RUN -- --a", [], ["--a"]),
        ("RUN --a=b -- ", ["--a=b"], []),
        ("COPY --from=é a b", ["--from=Ã©"], ["a", "b"]),  # BuildKit reads flags byte by byte
    ],
)
def test_flags(text: str, flags: list[str], value: list[str]) -> None:
    (node,) = nodes(text)
    assert (node["flags"], node["value"]) == (flags, value)


def test_onbuild_keeps_its_own_flags_and_the_inner_arguments() -> None:
    (node,) = nodes("ONBUILD --x=1 copy --from=a b c")
    assert (node["cmd"], node["sub_cmd"], node["flags"], node["value"]) == ("ONBUILD", "COPY", ["--x=1"], ["b", "c"])
    assert nodes("ONBUILD ONBUILD RUN x")[0]["value"] == [""]
    assert nodes("ONBUILD")[0]["value"] == []


def test_heredocs() -> None:
    (run, after) = nodes("RUN <<EOF <<-EOT cat\nhello\nEOF\n\tworld\n\tEOT\nRUN x\n")
    assert run["heredocs"] == [
        {"name": "EOF", "file_descriptor": 0, "content": "hello\n"},
        {"name": "EOT", "file_descriptor": 0, "content": "\tworld\n"},
    ]
    assert (run["start_line"], run["end_line"], after["start_line"]) == (1, 5, 6)
    assert run["original"] == "RUN <<EOF <<-EOT cat\nhello\nEOF\n\tworld\nEOT\n"
    assert nodes("RUN 3<<'E O' x\nhi\nE O\n")[0]["heredocs"] == [{"name": "E O", "file_descriptor": 3, "content": "hi\n"}]
    # exec form and quoted `<<` are not heredocs: the next line is an instruction
    assert [n["cmd"] for n in nodes('RUN ["cat", "<<EOF"]\nEOF\n')] == ["RUN", "EOF"]
    assert [n["cmd"] for n in nodes('RUN echo "<<EOF"\nhi\n')] == ["RUN", "HI"]


def test_heredoc_under_onbuild_stays_on_the_onbuild_node() -> None:
    (node,) = nodes("ONBUILD RUN <<EOF\nhi\nEOF\n")
    assert node["heredocs"] == [{"name": "EOF", "file_descriptor": 0, "content": "hi\n"}]
    assert node["end_line"] == 3


@pytest.mark.parametrize(
    "text",
    ["RUN <<EOF\nhello\n", "RUN cat <<${X:-a}\nhi\na\n", "COPY <<EOF <<EOT /d\nx\nEOF\n"],
)
def test_unterminated_heredoc(text: str) -> None:
    with pytest.raises(grammar.RecipeSyntaxError, match="unterminated heredoc"):
        nodes(text)


def test_continuations_comments_and_crlf() -> None:
    (run,) = nodes("RUN a \\\r\n  # comment\r\n\r\n  b\r\n")
    assert (run["original"], run["start_line"], run["end_line"]) == ("RUN a   b", 1, 4)
    assert nodes("FROM x\nRUN echo \\\\\nRUN y\n")[1]["original"] == "RUN echo \\\\"
    assert nodes("\\\nFROM x\n")[0]["start_line"] == 1


def test_directives() -> None:
    tree = grammar.parse_syntax("# syntax = docker/dockerfile:1\n#Escape=`\n# check=skip=all\nRUN a `\n  b\n")
    assert [(d.name, d.value) for d in tree.directives] == [
        ("syntax", "docker/dockerfile:1"),
        ("escape", "`"),
        ("check", "skip=all"),  # BuildKit 0.14+ knows `check`
    ]
    assert grammar.to_json(tree)[0]["original"] == "RUN a   b"
    # a directive after any other line is a comment
    assert grammar.parse_syntax("FROM x\n# escape=`\n").directives == ()
    assert grammar.parse_syntax("# hello\n# escape=`\nFROM x\n").escape == "\\"


def test_byte_order_mark_is_ignored() -> None:
    assert nodes("\ufeffFROM x\n")[0]["original"] == "FROM x"
    assert nodes(b"\xef\xbb\xbfFROM x\n")[0]["value"] == ["x"]


def test_line_length_limit_is_buildkits() -> None:
    ok = "RUN " + "a" * (MAX_LINE_BYTES - 4)
    assert nodes(ok + "\n")[0]["value"] == ["a" * (MAX_LINE_BYTES - 4)]
    with pytest.raises(grammar.RecipeSyntaxError, match="greater than max allowed size of 65535") as info:
        nodes("FROM x\n" + ok + "a\n")
    assert info.value.span.line == 2
