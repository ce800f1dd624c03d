"""Tests for grammar.shell: BuildKit's conformance data plus our own cases."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grammar.errors import ExpansionError
from grammar.shell import ShellLexer
from tests.support import SHARED, shared_path

SHELL = ("conformance", "buildkit", "frontend", "dockerfile", "shell")
SHELL_DATA = SHARED.joinpath(*SHELL)
MISSING = pytest.param(None, id="conformance-data-missing")

LEX = ShellLexer()
ENV = {"FOO": "xxyy", "EMPTY": "", "PWD": "/home", "TWO": "1  2", "KOREAN": "한국어"}


def _data_missing() -> None:
    shared_path(*SHELL, "envVarTest")  # skips, or fails under CI=true
    raise AssertionError(f"{SHELL_DATA} exists but holds no test lines")


# ---------------------------------------------------------------------------
# BuildKit conformance data (file formats: ../shared/conformance/README.md)


def _env_var_cases() -> list:
    path = SHELL_DATA / "envVarTest"
    if not path.is_file():
        return [MISSING]
    cases = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("#") or not line.strip():
            continue
        platform, source, expected = (field.strip() for field in line.split("|"))
        assert platform in ("A", "U", "W"), f"bad platform tag on line {number}"
        if platform == "W":
            continue  # Windows semantics (case-insensitive names): pybuild builds Linux images
        cases.append(pytest.param((source, expected), id=f"L{number}:{source}"))
    return cases


def _words_cases() -> list:
    path = SHELL_DATA / "wordsTest"
    if not path.is_file():
        return [MISSING]
    cases, env = [], {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("#"):
            continue
        if line.startswith("ENV "):
            name, _, value = line[3:].lstrip(" ").partition("=")
            env[name] = value
            continue
        fields = line.split("|")
        assert len(fields) == 2, f"line {number} must hold exactly one '|'"
        source, expected = fields[0].strip(), fields[1].lstrip(" ").split(",")
        cases.append(pytest.param((source, expected, dict(env)), id=f"L{number}:{source}"))
    return cases


@pytest.mark.parametrize("case", _env_var_cases())
def test_buildkit_env_var(case) -> None:
    if case is None:
        _data_missing()
    source, expected = case
    env = {"PWD": "/home", "SHELL": "bash", "KOREAN": "한국어", "NULL": ""}
    if expected == "error":
        with pytest.raises(ExpansionError):
            LEX.expand(source, env)
    else:
        assert LEX.expand(source, env) == expected


@pytest.mark.parametrize("case", _words_cases())
def test_buildkit_words(case) -> None:
    if case is None:
        _data_missing()
    source, expected, env = case
    if expected == ["error"]:
        with pytest.raises(ExpansionError):
            LEX.split(source, env)
    else:
        assert LEX.split(source, env) == expected


def test_missing_data_skips_locally_but_fails_on_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        shared_path("no-such-directory")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception):
        shared_path("no-such-directory")


# ---------------------------------------------------------------------------
# Expansion cases the data does not cover


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        # set-but-empty versus unset, with and without ':'
        ("${EMPTY-w}", ""),
        ("${EMPTY:-w}", "w"),
        ("${NOPE-w}", "w"),
        ("${FOO-w}", "xxyy"),
        ("${EMPTY+w}", "w"),
        ("${EMPTY:+w}", ""),
        ("${NOPE+w}", ""),
        ("${FOO+w}", "w"),
        ("${EMPTY?boom}", ""),
        ("${FOO:?boom}", "xxyy"),
        ("${NOPE:-a b}", "a b"),
        ("${NOPE:-'$FOO'}", "$FOO"),
        ('${NOPE:-"$FOO"}', "xxyy"),
        ("${NOPE:-}", ""),
        # prefix trimming: shortest (#) and longest (##), wildcards and escapes
        ("${FOO#x}", "xyy"),
        ("${FOO##x}", "xyy"),
        ("${FOO#*x}", "xyy"),
        ("${FOO##*x}", "yy"),
        ("${FOO#?}", "xyy"),
        ("${FOO#??}", "yy"),
        ("${FOO#*}", "xxyy"),
        ("${FOO##*}", ""),
        ("${FOO#}", "xxyy"),
        ("${FOO##}", "xxyy"),
        ("${FOO#z}", "xxyy"),
        ("${FOO#*y*}", "y"),
        ("${NOPE#x}", ""),
        ("${FOO#$NOPE}", "xxyy"),
        ('${FOO#"x*"}', "xyy"),  # quotes do not protect wildcards: the pattern is re-read
        # suffix trimming: shortest (%) and longest (%%)
        ("${FOO%y}", "xxy"),
        ("${FOO%y*}", "xxy"),
        ("${FOO%%y*}", "xx"),
        ("${FOO%%x*}", ""),
        ("${FOO%*}", "xxyy"),
        ("${FOO%%*}", ""),
        ("${FOO%?}", "xxy"),
        ("${FOO%}", "xxyy"),
        # replacement: first (/) and all (//), greedy wildcards
        ("${FOO/x/z}", "zxyy"),
        ("${FOO//x/z}", "zzyy"),
        ("${FOO//?/.}", "...."),
        ("${FOO/x*/z}", "z"),
        ("${FOO/*y/z}", "z"),
        ("${FOO//y/}", "xx"),
        ("${FOO/q/z}", "xxyy"),
        ("${FOO///}", "xxyy"),
        ("${NOPE///}", ""),
        ("${FOO/$EMPTY/ww}", "wwxxyy"),
        ("${FOO//$EMPTY/-}", "-x-x-y-y-"),
        ("${PWD//\\//\\\\}", "\\\\home"),  # the replacement keeps both backslashes
        ("${PWD/\\/home/root}", "root"),
        # Go's ReplaceAllString reads $0 / ${0} in the replacement as the match
        ("${FOO//x/'[$0]'}", "[x][x]yy"),
        ("${FOO//x/'${0}'}", "xxyy"),
        ("${FOO//x/'$1'}", "yy"),
        ("${FOO//x/'$$'}", "$$yy"),
        ("${FOO//x/'$.'}", "$.$.yy"),
        ("${FOO/x/'[$0]'}", "[$0]xyy"),  # the single replacement is literal
        # names, positional and special parameters
        ("$FOO.x", "xxyy.x"),
        ("$KOREAN!", "한국어!"),
        ("$FOO²", "xxyy²"),  # '²' is numeric but not a decimal digit, so not part of a name
        ("$١x", "x"),  # Arabic-Indic digits are decimal digits: a positional parameter
        ("$é", ""),
        ("$1FOO", "FOO"),
        ("$0FOO", "FOO"),
        ("$$FOO", "FOO"),
        ("${#}", ""),
        ("$", "$"),
        ("a$", "a$"),
        ("$ a", "$ a"),
        ("$-x", "x"),
        # quoting and escapes
        ('"a\\tb"', "a\\tb"),
        ('"a\\\\b"', "a\\b"),
        ('"a\\$FOO"', "a$FOO"),
        ('"a\\"b"', 'a"b'),
        ("a\\ b", "a b"),
        ("'a\\'", "a\\"),
        ("''", ""),
        ("\ufeff$FOO", "xxyy"),  # Go's text/scanner skips a leading byte-order mark
        ("a\ufeff$FOO", "a\ufeffxxyy"),
        ("plain words stay", "plain words stay"),
        ("\x00$FOO", "\x00xxyy"),
    ],
)
def test_expand(word: str, expected: str) -> None:
    assert LEX.expand(word, ENV) == expected


def test_trimming_with_escaped_wildcards() -> None:
    env = {"S": "a*b?c\\d", "T": "}x/y"}
    assert LEX.expand("${S#a\\*}", env) == "b?c\\d"
    assert LEX.expand("${S#*\\?}", env) == "c\\d"
    assert LEX.expand("${S##*\\\\}", env) == "d"
    assert LEX.expand("${S%\\\\?}", env) == "a*b?c"
    assert LEX.expand("${S%%\\**}", env) == "a"
    assert LEX.expand("${T#\\}}", env) == "x/y"
    assert LEX.expand("${T/\\//-}", env) == "}x-y"
    assert LEX.expand("${S//\\*/+}", env) == "a+b?c\\d"


def test_patterns_stop_at_newlines_like_go_regexp() -> None:
    env = {"V": "ab\ncd\nef"}
    assert LEX.expand("${V##*}", env) == "\ncd\nef"
    assert LEX.expand("${V%%*}", env) == "ab\ncd\n"
    assert LEX.expand("${V#*d}", env) == "ab\ncd\nef"  # '*' cannot cross the first newline
    assert LEX.expand("${V//*/-}", env) == "-\n-\n-"
    assert LEX.expand("${V/?d/-}", env) == "ab\n-\nef"
    assert LEX.expand("${V/c*/-}", env) == "ab\n-\nef"


@pytest.mark.parametrize(
    ("word", "message"),
    [
        ("${NOPE?}", "NOPE: is not allowed to be unset"),
        ("${NOPE:?}", "NOPE: is not allowed to be unset"),
        ("${EMPTY:?}", "EMPTY: is not allowed to be empty"),
        ("${EMPTY:?must be $PWD}", "EMPTY: must be /home"),
        ("${NOPE?gone}", "NOPE: gone"),
        ("${FOO:#x}", "unsupported modifier (:#) in substitution"),
        ("${FOO:##x}", "unsupported modifier (:#) in substitution"),
        ("${FOO:%x}", "unsupported modifier (:%) in substitution"),
        ("${FOO=x}", "unsupported modifier (=) in substitution"),
        ("${FOO:=x}", "unsupported modifier (:=) in substitution"),
        ("${FOO:x}", "unsupported modifier (:x) in substitution"),
        ("${FOO.x}", "unsupported modifier (.) in substitution"),
        ("${}", "bad substitution"),
        ("${:-x}", "bad substitution"),
        ("${{x}", "bad substitution"),
        ("${", "missing '}'"),
        ("${FOO", "missing '}'"),
        ("${FOO:", "missing '}'"),
        ("${FOO:}", "missing '}'"),  # the '}' was taken as the modifier
        ("${FOO:}x}", "unsupported modifier (:})"),
        ("${FOO:-x", "missing '}'"),
        ("${FOO:-${BAR}", "missing '}'"),
        ("${FOO:-'}", "missing '}'"),
        ("${FOO/x}", "missing '/' in ${}"),
        ("${FOO//}", "missing '/' in ${}"),
        ("${FOO/x/y", "missing '}'"),
        ("${FOO#\\x}", "invalid pattern (\\x) in substitution: invalid escape '\\x'"),
        ("${FOO/a\\b/c}", "invalid escape '\\b'"),
        ("${FOO#$BACKSLASH}", "invalid escape '\\\ufffd'"),
        ("'abc", "matching single-quote"),
        ('"abc', "matching double-quote"),
        ('"abc\\"', "matching double-quote"),
        ("${FOO:-${NOPE:?inner}}", "NOPE: inner"),
    ],
)
def test_expand_errors(word: str, message: str) -> None:
    with pytest.raises(ExpansionError) as raised:
        LEX.expand(word, dict(ENV, BACKSLASH="\\"))
    assert message in raised.value.message
    assert raised.value.span is None


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("$NOPE", "$NOPE"),
        ("${NOPE}", "${NOPE}"),
        ("a${NOPE}b$FOO", "a${NOPE}bxxyy"),
        ("${NOPE:-w}", "${NOPE:-w}"),
        ("${NOPE-w}", "${NOPE-w}"),
        ("${NOPE:+$FOO}", "${NOPE:+xxyy}"),  # the word is still expanded
        ("${NOPE:-'a b'}", "${NOPE:-a b}"),
        ("${NOPE?msg}", "${NOPE?msg}"),  # no error for an unset variable
        ("${NOPE:=x}", "${NOPE:=x}"),  # nor for an unsupported modifier, as in BuildKit
        ("${NOPE##*/}", "${NOPE##*/}"),
        ("${NOPE%\\*}", "${NOPE%\\*}"),  # pattern words keep their escapes
        ("${NOPE/a/b}", "${NOPE/a/b}"),
        ("${NOPE//a/b}", "${NOPE/a/b}"),  # BuildKit writes back a single '/'
        ("${FOO:-w}", "xxyy"),
        ("${EMPTY:-w}", "w"),
        ("$1", "$1"),
        ("$@", "$@"),
    ],
)
def test_skip_unset(word: str, expected: str) -> None:
    assert ShellLexer(skip_unset=True).expand(word, ENV) == expected


def test_skip_unset_still_rejects_bad_syntax() -> None:
    with pytest.raises(ExpansionError, match="bad substitution"):
        ShellLexer(skip_unset=True).expand("${}", {})
    with pytest.raises(ExpansionError, match=r"unsupported modifier \(:#\)"):
        ShellLexer(skip_unset=True).expand("${NOPE:#x}", {})


def test_raw_quotes() -> None:
    raw = ShellLexer(raw_quotes=True)
    assert raw.split('<<"EOF" cat', {}) == ['<<"EOF"', "cat"]
    assert raw.split("<<'EOF' cat", {}) == ["<<'EOF'", "cat"]
    assert raw.split('a "b  c" d', {}) == ["a", '"b  c"', "d"]
    assert raw.expand("'$FOO' \"$FOO\"", ENV) == "'$FOO' \"xxyy\""
    assert raw.split('""', {}) == ['""']
    assert raw.split("a\\ b", {}) == ["a b"]
    heredoc = ShellLexer(raw_quotes=True, raw_escapes=True, skip_unset=True)
    assert heredoc.split('cat <<"EOF" >$OUT', {}) == ["cat", '<<"EOF"', ">$OUT"]
    assert heredoc.split("<<\\EOF", {}) == ["<<\\EOF"]


def test_raw_escapes() -> None:
    raw = ShellLexer(raw_escapes=True)
    assert raw.expand("a\\ b\\$FOO", ENV) == "a\\ b\\$FOO"
    assert raw.split("a\\ b c", {}) == ["a\\ b", "c"]
    assert raw.expand('"a\\"b"', {}) == 'a\\"b'
    # BuildKit writes a raw escape twice when it escapes nothing inside double quotes
    assert raw.expand('"a\\b"', {}) == "a\\\\b"
    assert raw.expand("a\\", {}) == "a\\"


def test_skip_quotes() -> None:
    lexer = ShellLexer(skip_quotes=True)
    assert lexer.expand("'$FOO'", ENV) == "'xxyy'"
    assert lexer.split('a "b c"', {}) == ["a", '"b', 'c"']
    assert lexer.expand("he'llo", {}) == "he'llo"


def test_backtick_escape() -> None:
    tick = ShellLexer(escape="`")
    assert tick.expand("a`$FOO", ENV) == "a$FOO"
    assert tick.expand("C:\\path\\to", ENV) == "C:\\path\\to"
    assert tick.expand("C:\\$FOO", ENV) == "C:\\xxyy"
    assert tick.expand('"a`"b``"', ENV) == 'a"b`'
    assert tick.expand('"a`xb"', ENV) == "a`xb"
    assert tick.expand("a``b`", ENV) == "a`b"
    assert tick.split("a` b c", {}) == ["a b", "c"]
    # patterns always use backslash escapes; a backtick in a pattern is a literal
    assert tick.expand("${S#a\\*}", {"S": "a*b"}) == "b"
    assert tick.expand("${S#a`*}", {"S": "a`xyz"}) == "xyz"
    with pytest.raises(ValueError):
        ShellLexer(escape="x").expand("a", {})


def test_expand_tracking() -> None:
    env = {"FOO": "1", "EMPTY": ""}
    result, found, unset = LEX.expand_tracking("${FOO:-$BAR} $NOPE ${EMPTY} ${X#$FOO} $1", env)
    assert result == "1    "
    assert found == {"FOO", "EMPTY"}
    assert unset == {"BAR", "NOPE", "X", "1"}
    assert LEX.expand_tracking("plain", env) == ("plain", frozenset(), frozenset())
    assert LEX.expand_tracking("'$FOO'", env) == ("$FOO", frozenset(), frozenset())
    assert ShellLexer(skip_unset=True).expand_tracking("$NOPE", {}) == ("$NOPE", frozenset(), {"NOPE"})


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("a ${TWO} b", ENV, ["a", "1", "2", "b"]),
        ('a "${TWO}" b', ENV, ["a", "1  2", "b"]),
        ("x${TWO}y", ENV, ["x1", "2y"]),
        ("a '' b", {}, ["a", "b"]),
        ('""', {}, []),
        ("$NOPE", {}, []),
        ("  a \t b  ", {}, ["a", "b"]),
        ("", {}, []),
        ("a\u3000b\u00a0c\u2028d", {}, ["a", "b", "c", "d"]),
        ("a\x1cb\x1fc", {}, ["a\x1cb\x1fc"]),  # not blanks to Go
        ("$V", {"V": "a\x1cb c\u2003d"}, ["a\x1cb", "c", "d"]),
        ("$V", {"V": "   "}, []),
        ("a$V", {"V": " b"}, ["a", "b"]),
        ("'a b'\"c d\"e\\ f", {}, ["a bc de f"]),
        ("ab${X}d", {"X": "c"}, ["abcd"]),
        ("ab${X:-c}d", {}, ["abcd"]),
        ("x ab${X:-c d}e", {}, ["x", "abc", "de"]),  # a default's value splits like any value
        ('ab"${X:-c d}"e', {}, ["abc de"]),
        ("ab${X:-}", {}, ["ab"]),
        ("ab${FOO#x}", ENV, ["abxyy"]),
        # an unquoted << keeps the spaces, tabs and CRs after it, so `<< EOF` is one word
        ("cat << EOF >f", {}, ["cat", "<< EOF", ">f"]),
        ("cat <<\t\r EOF", {}, ["cat", "<<\t\r EOF"]),
        ("cat <<-  EOF", {}, ["cat", "<<-", "EOF"]),
        ("cat <<\vEOF", {}, ["cat", "<<", "EOF"]),  # a vertical tab is a blank, but not kept
        ("cat <<  ", {}, ["cat", "<<  "]),
        ("a <<< b", {}, ["a", "<<<", "b"]),
        ("a < b << c", {}, ["a", "<", "b", "<< c"]),
        ("'<< a' \\<< b", {}, ["<< a", "<<", "b"]),
    ],
)
def test_split(text: str, env: dict, expected: list[str]) -> None:
    assert LEX.split(text, env) == expected


def test_heredoc_words_keep_their_blanks_only_in_split() -> None:
    assert LEX.expand("cat <<  EOF", {}) == "cat <<  EOF"
    heredoc = ShellLexer(raw_quotes=True, raw_escapes=True, skip_unset=True)
    assert heredoc.split("cat <<  'EOF' > $OUT", {}) == ["cat", "<<  'EOF'", ">", "$OUT"]
    assert heredoc.split("cat <<${X:-a}", {}) == ["cat", "<<${X:-a}"]
    assert ShellLexer(skip_quotes=True).split('x << "E F"', {}) == ["x", '<< "E', 'F"']


def test_fast_path_returns_input_unchanged() -> None:
    word = "no specials here/at:all"
    assert LEX.expand(word, {}) is word
    assert LEX.split("  a\tb\n", {}) == ["a", "b"]


# ---------------------------------------------------------------------------
# Robustness


def test_nesting_is_capped() -> None:
    deep = "${a:-" * 10_000 + "x" + "}" * 10_000
    with pytest.raises(ExpansionError, match="variable substitution nested too deeply"):
        LEX.expand(deep, {})
    with pytest.raises(ExpansionError, match="variable substitution nested too deeply"):
        LEX.split(deep, {})
    quoted = '${a:-"' * 10_000
    with pytest.raises(ExpansionError, match="variable substitution nested too deeply"):
        LEX.expand(quoted, {})
    assert LEX.expand("${a:-" * 64 + "x" + "}" * 64, {}) == "x"


def test_large_inputs_stay_fast() -> None:
    # A backtracking regex would need ages here; Go's regexp (and ours) is linear.
    env = {"V": "a" * 20_000, "P": "*a" * 40 + "*b"}
    assert LEX.expand("${V#$P}", env) == env["V"]
    assert LEX.expand("${V//$P/x}", env) == env["V"]
    assert LEX.expand("${V%%$P}", env) == env["V"]
    assert LEX.expand("${V//?/}", env) == ""
    assert LEX.expand("${V//a*a/-}", env) == "-"
    word = "$V" * 50_000 + "'x'" * 50_000
    assert len(LEX.expand(word, {"V": "v"})) == 100_000


def _reference_regex(pattern: str, greedy: bool, anchored: bool) -> re.Pattern[str] | None:
    """BuildKit's pattern-to-regexp conversion, run by Python's backtracking `re`."""
    out, i = ["^" if anchored else ""], 0
    while i < len(pattern):
        ch, i = pattern[i], i + 1
        if ch == "*":
            out.append(".*" if greedy else ".*?")
        elif ch == "?":
            out.append(".")
        elif ch == "\\":
            if pattern[i : i + 1] in ("}", "/"):
                continue
            if pattern[i : i + 1] not in ("*", "?", "\\"):
                return None
            out.append(re.escape(pattern[i]))
            i += 1
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out))


def _reference_reverse(pattern: str) -> str:
    pieces, i = [], 0
    while i < len(pattern):
        step = 2 if pattern[i] == "\\" and i + 1 < len(pattern) else 1
        pieces.append(pattern[i : i + step])
        i += step
    return "".join(reversed(pieces))


def _reference_replace_all(regex: re.Pattern[str], value: str, replacement: str) -> str:
    out, last, pos = [], 0, 0
    while pos <= len(value) and (found := regex.search(value, pos)):
        out.append(value[last : found.start()])
        if found.end() > last or found.start() == 0:
            out.append(replacement)
        last = found.end()
        pos = found.end() if found.end() > pos else pos + 1
    return "".join(out) + value[last:]


_glob_text = st.text(alphabet="ab*?\\\n", max_size=8)


@settings(max_examples=400, deadline=None, database=None)
@given(pattern=_glob_text, value=st.text(alphabet="ab*?\\\n", max_size=10))
def test_patterns_match_like_a_leftmost_first_regexp(pattern: str, value: str) -> None:
    env = {"V": value, "P": pattern}
    forms = {
        "${V#$P}": lambda: _trim(pattern, value, greedy=False),
        "${V##$P}": lambda: _trim(pattern, value, greedy=True),
        "${V%$P}": lambda: _trim(_reference_reverse(pattern), value[::-1], greedy=False)[::-1],
        "${V%%$P}": lambda: _trim(_reference_reverse(pattern), value[::-1], greedy=True)[::-1],
        "${V/$P/-}": lambda: _replace_first(pattern, value),
        "${V//$P/-}": lambda: _reference_replace_all(_checked(pattern, True, False), value, "-"),
    }
    for word, reference in forms.items():
        try:
            expected = reference()
        except ExpansionError:
            with pytest.raises(ExpansionError, match="invalid escape"):
                LEX.expand(word, env)
            continue
        assert LEX.expand(word, env) == expected, word


def _checked(pattern: str, greedy: bool, anchored: bool) -> re.Pattern[str]:
    regex = _reference_regex(pattern, greedy, anchored)
    if regex is None:
        raise ExpansionError("invalid escape")
    return regex


def _trim(pattern: str, value: str, greedy: bool) -> str:
    found = _checked(pattern, greedy, True).search(value)
    return value[found.end() :] if found else value


def _replace_first(pattern: str, value: str) -> str:
    found = _checked(pattern, True, False).search(value)
    return value[: found.start()] + "-" + value[found.end() :] if found else value


_hostile = st.text(
    alphabet=st.one_of(st.sampled_from(list("${}:-+?#%/*'\"\\`aZ_0 \t\n\ufeff")), st.characters()),
    max_size=60,
)
_lexers = st.builds(
    ShellLexer,
    escape=st.sampled_from(["\\", "`"]),
    raw_quotes=st.booleans(),
    raw_escapes=st.booleans(),
    skip_unset=st.booleans(),
    skip_quotes=st.booleans(),
)
_envs = st.dictionaries(st.sampled_from(["a", "Z", "_", "0", "1", "@", "FOO"]), _hostile, max_size=4)


@settings(max_examples=500, deadline=None, database=None)
@given(lexer=_lexers, text=_hostile, env=_envs)
def test_any_text_returns_or_raises_expansion_error(lexer: ShellLexer, text: str, env: dict) -> None:
    for call in (lexer.expand, lexer.split, lexer.expand_tracking):
        try:
            result = call(text, env)
        except ExpansionError as error:
            assert error.message
        else:
            assert result is not None


_plain_text = st.text(alphabet=st.sampled_from(list("ab< \t\r\v\n\x1c\u3000\u00a0\ufeff\u2028")), max_size=20)
_quote_lexers = st.builds(
    ShellLexer,
    escape=st.sampled_from(["\\", "`"]),
    raw_escapes=st.booleans(),
    skip_unset=st.booleans(),
    raw_quotes=st.just(False),
    skip_quotes=st.just(False),
)


@settings(max_examples=300, deadline=None, database=None)
@given(lexer=_quote_lexers, text=_plain_text)
def test_fast_path_agrees_with_the_full_lexer(lexer: ShellLexer, text: str) -> None:
    # Appending "''" forces the full lexer without changing the outcome.
    assert lexer.expand(text, {}) == lexer.expand(text + "''", {})
    assert lexer.split(text, {}) == lexer.split(text + "''", {})
