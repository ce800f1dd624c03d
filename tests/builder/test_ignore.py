"""Docker's ignore-file rules: moby's ignorefile.ReadAll parsing and patternmatcher matching.

Each case is (ignore file, path, the line of the rule that excludes it or None).
The expectations follow Docker's documentation and moby/patternmatcher.
"""

from __future__ import annotations

import pytest

from builder.errors import ContextError
from builder.ignore import IgnoreRule, IgnoreRules, glob_matcher

CASES = [
    # plain wildcards: * and ? never cross a slash
    ("*.log", "app.log", 1),
    ("*.log", "logs/app.log", None),
    ("*.log", "app.log/inner.txt", 1),  # a matching directory excludes what is under it
    ("?.md", "a.md", 1),
    ("?.md", "ab.md", None),
    ("*/temp*", "somedir/temporary.txt", 1),
    ("*/temp*", "temp", None),
    ("*/*/temp*", "somedir/subdir/temporary.txt", 1),
    ("temp?", "tempa", 1),
    # ** spans any number of directories, zero included
    ("**/*.go", "main.go", 1),
    ("**/*.go", "cmd/tool/main.go", 1),
    ("**/*.go", "main.goo", None),
    ("a/**/b", "a/b", 1),
    ("a/**/b", "a/x/y/b", 1),
    ("a/**/b", "a/xb", None),
    ("a/**/b", "b", None),
    ("foo/**", "foo/x/y", 1),
    ("foo/**", "foo", None),
    ("**", "anything/at/all", 1),
    ("**/foo", "foo", 1),
    ("**/foo", "x/foo", 1),
    ("**foo", "barfoo", 1),  # moby's suffix match
    # directories, absolute and cleaned patterns
    ("dir/", "dir", 1),
    ("dir/", "dir/a/b", 1),
    ("dir/", "dirx", None),
    ("/abs", "abs", 1),
    ("/abs", "x/abs", None),
    ("./a/../b", "b", 1),
    (".", "a", None),  # the root is never excluded
    ("/", "a", None),
    # character classes (Go: only ^ negates) and escapes
    ("[a-c].txt", "b.txt", 1),
    ("[a-c].txt", "d.txt", None),
    ("[^a-c].txt", "d.txt", 1),
    ("[^a-c].txt", "a.txt", None),
    ("[!a].txt", "!.txt", 1),
    ("[!a].txt", "b.txt", None),
    ("\\*.txt", "*.txt", 1),
    ("\\*.txt", "a.txt", None),
    ("file\\[1\\]", "file[1]", 1),
    ("a+b(c).txt", "a+b(c).txt", 1),  # regexp metacharacters are literal
    ("a.b", "axb", None),
    # comments, blank lines and whitespace
    ("#comment", "#comment", None),
    (" #not-a-comment", "#not-a-comment", 1),
    ("\n\n  *.bak  \n", "x.bak", 3),
    ("\ufeff*.tmp\r\n", "x.tmp", 1),
    # exceptions: the last matching rule decides
    ("*\n!keep.txt", "keep.txt", None),
    ("*\n!keep.txt", "other.txt", 1),
    ("*\n! keep.txt", "keep.txt", None),
    ("*.md\n!README*.md\nREADME-secret.md", "README.md", None),
    ("*.md\n!README*.md\nREADME-secret.md", "README-secret.md", 3),
    ("*.md\n!README*.md\nREADME-secret.md", "other.md", 1),
    ("*.md\nREADME-secret.md\n!README*.md", "README-secret.md", None),
    ("docs\n!docs/keep", "docs/keep/deep.txt", None),
    ("docs\n!docs/keep", "docs/other.txt", 1),
    ("!keep.txt\n*", "keep.txt", 2),  # an exception before the rule it should override does nothing
    ("*.log\napp.*", "app.log", 2),  # the last matching rule is the one reported
]


@pytest.mark.parametrize(("text", "rel", "line"), CASES, ids=[f"{t!r}-{r}" for t, r, _ in CASES])
def test_excluded_by_follows_docker(text: str, rel: str, line: int | None) -> None:
    rule = IgnoreRules.parse(text, ".dockerignore").excluded_by(rel)
    assert (rule.line if rule else None) == line
    if rule is not None:
        assert not rule.negated
        assert rule.origin == ".dockerignore"


def test_the_root_is_never_excluded() -> None:
    rules = IgnoreRules.parse("*\n**\n", ".dockerignore")
    assert rules.excluded_by("") is None
    assert rules.excluded_by(".") is None


@pytest.mark.parametrize(
    ("line", "pattern", "negated"),
    [
        ("*.log", "*.log", False),
        ("/abs/path", "abs/path", False),
        ("dir/", "dir", False),
        ("  spaced  ", "spaced", False),
        ("!keep.txt", "keep.txt", True),
        ("! /x/../y", "y", True),
        ("a//b/./c", "a/b/c", False),
        ("//root", "root", False),
        ("/", "/", False),
    ],
)
def test_parse_cleans_patterns(line: str, pattern: str, negated: bool) -> None:
    (rule,) = IgnoreRules.parse(line, "x.dockerignore").rules
    assert (rule.pattern, rule.negated, rule.origin, rule.line) == (pattern, negated, "x.dockerignore", 1)


def test_rules_keep_their_lines_and_print_them() -> None:
    rules = IgnoreRules.parse("# top\n\n*.log\n!keep.log\n", "Recipefile.dockerignore")
    assert [(r.line, r.pattern) for r in rules.rules] == [(3, "*.log"), (4, "keep.log")]
    assert str(rules.rules[0]) == "Recipefile.dockerignore:3 (*.log)"
    assert str(rules.rules[1]) == "Recipefile.dockerignore:4 (!keep.log)"
    assert rules.rules[0] == IgnoreRule("*.log", False, "Recipefile.dockerignore", 3)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("ok\n[a-", ".dockerignore:2: malformed pattern"),
        ("ok\nok\nfoo\\", ".dockerignore:3: malformed pattern"),
        ("[z-a]", ".dockerignore:1: malformed pattern"),
        ("[]a]", ".dockerignore:1: malformed pattern"),
        ("[^]", ".dockerignore:1: malformed pattern"),
        ("a[-b]", ".dockerignore:1: malformed pattern"),
        ("*\n!", '.dockerignore:2: illegal exclusion pattern "!"'),
        ("!   ", '.dockerignore:1: illegal exclusion pattern "!"'),
    ],
)
def test_malformed_patterns_name_origin_and_line(text: str, where: str) -> None:
    with pytest.raises(ContextError) as caught:
        IgnoreRules.parse(text, ".dockerignore")
    message = str(caught.value)
    assert message.startswith(where)
    assert "\n" not in message


@pytest.mark.parametrize(
    ("text", "rel_dir", "expected"),
    [
        ("*\n!src/keep.txt", "src", True),
        ("*\n!src/keep.txt", "other", False),
        ("*\n!src/keep.txt", "src/deeper", False),
        ("*\n!src/deep/keep.txt", "src/deep", True),
        ("*\n!src", "src", True),
        ("*\n!src/**", "src", True),
        ("*\n!src/*", "src", True),
        ("*\n!**/*.go", "anything", True),  # a wildcard exception may match under any directory
        ("*\n!src/*/keep", "other", True),
        ("build\ntmp", "build", False),  # no exceptions: never walk an excluded directory
        ("*\n!keep.txt", "", True),
    ],
)
def test_may_reinclude_below_like_buildkit(text: str, rel_dir: str, expected: bool) -> None:
    assert IgnoreRules.parse(text, ".dockerignore").may_reinclude_below(rel_dir) is expected


def test_from_patterns_has_no_comments() -> None:
    rules = IgnoreRules.from_patterns(["#x", "  ", "!#x/y"])
    assert [(r.pattern, r.negated, r.origin, r.line) for r in rules.rules] == [
        ("#x", False, "--exclude", 1),
        ("#x/y", True, "--exclude", 3),
    ]
    assert rules.excluded_by("#x") is rules.rules[0]
    assert rules.excluded_by("#x/y") is None


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("*", "anything", True),
        ("*", "a/b", False),
        ("**", "abc", True),  # no special ** in filepath.Match
        ("**", "a/b", False),
        ("hom?.txt", "home.txt", True),
        ("[0-9]*", "7up", True),
        ("[0-9]*", "up", False),
        ("\\[x]", "[x]", True),
        ("plain", "plain", True),
        ("plain", "plain2", False),
    ],
)
def test_glob_matcher_is_go_filepath_match(pattern: str, name: str, expected: bool) -> None:
    assert glob_matcher(pattern)(name) is expected


@pytest.mark.parametrize("pattern", ["[", "[a-", "a\\", "[b-a]"])
def test_glob_matcher_refuses_malformed_patterns(pattern: str) -> None:
    with pytest.raises(ValueError):
        glob_matcher(pattern)
