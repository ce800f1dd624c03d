"""Property tests for grammar/: robustness on arbitrary input, canonical round trip.

1. Robustness: whatever the input (any text, any bytes, Dockerfile-like
   fragments glued together at random), `parse_syntax` and `parse` return or
   raise a `RecipeError`; never anything else.
2. Round trip: for generated valid recipes, `parse(canonical(r))` equals `r`
   up to spans and `Recipe.source`, `canonical` is idempotent and the number
   of instructions is preserved.
3. Examples: tricky round-trip shapes, and regression tests for the bugs in
   grammar/ that these properties found (each group says what went wrong).

Every parse runs under a time limit, so a hang or catastrophic regex
backtracking fails the test instead of stalling the suite.
"""

from __future__ import annotations

import json
import signal
import string
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grammar import (
    Onbuild,
    Recipe,
    RecipeError,
    RecipeSyntaxError,
    Source,
    Span,
    dump,
    parse,
    parse_syntax,
    to_json,
)
from grammar.canonical import canonical

NAME = "Recipefile"
TIME_LIMIT = 3.0  # seconds for one parse of one input; the slowest legitimate input here takes ~0.2 s

# ---------------------------------------------------------------------------
# helpers


def strip_spans(value: object) -> object:
    """`value` with every `Span` and `Source` replaced by None, through nested records and tuples.

    Records are namedtuples, so this reaches `Stage.instructions`,
    `Onbuild.trigger`, `Run.heredocs`, ... without naming them.
    """
    if isinstance(value, (Span, Source)):
        return None
    if isinstance(value, tuple):
        items = [strip_spans(item) for item in value]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
    return value


class TooSlow(AssertionError):
    """A parse ran past TIME_LIMIT: a hang or catastrophic backtracking, not a slow machine."""


@contextmanager
def time_limit(what: object) -> Iterator[None]:
    """Fail (instead of hanging the suite) when the body runs longer than TIME_LIMIT."""
    if not hasattr(signal, "setitimer"):  # not on Windows
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise TooSlow(f"took more than {TIME_LIMIT} s: {what!r:.300}")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, TIME_LIMIT)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def instruction_count(recipe: Recipe) -> int:
    return len(recipe.global_args) + sum(1 + len(stage.instructions) for stage in recipe.stages)


def _check_error(exc: RecipeError) -> None:
    """What every RecipeError promises: a one-line message with file:line:col, a renderable form."""
    first = str(exc)
    assert "\n" not in first, f"str(error) is not one line: {first!r}"
    if exc.span is not None:
        assert isinstance(exc.span, Span)
        assert exc.span.file == NAME, f"span without the file name: {exc.span!r}"
        assert exc.span.line >= 1 and exc.span.column >= 1, exc.span
    assert exc.render().startswith(first)


def check_robust(data: str | bytes) -> None:
    """Both parsers either return or raise a RecipeError, for any input."""
    try:
        with time_limit(data):
            tree = parse_syntax(data, NAME)
    except RecipeError as exc:
        _check_error(exc)
        syntax_ok = False
    else:
        dump(tree)
        to_json(tree)
        syntax_ok = True
    try:
        with time_limit(data):
            recipe = parse(data, NAME)
    except RecipeError as exc:
        _check_error(exc)
    else:
        assert syntax_ok, "parse accepted what parse_syntax rejects"
        assert recipe.stages, "a recipe without stages"
        canonical(recipe)


def check_round_trip(data: str | bytes, count: int | None = None) -> None:
    """parse(canonical(r)) == r up to spans; canonical is idempotent; instruction count kept."""
    with time_limit(data):
        recipe = parse(data, NAME)
    text = canonical(recipe)
    try:
        with time_limit(text):
            again = parse(text, NAME)
    except RecipeError as exc:
        raise AssertionError(f"canonical text does not parse: {exc}\n--- canonical text ---\n{text}") from exc
    assert strip_spans(again) == strip_spans(recipe), f"round trip changed the recipe\n--- canonical text ---\n{text}"
    assert canonical(again) == text, "canonical is not idempotent"
    assert instruction_count(again) == instruction_count(recipe)
    if count is not None:
        assert instruction_count(recipe) == count, "the generated recipe did not parse into its instructions"


# ---------------------------------------------------------------------------
# 1. robustness

KEYWORDS = (
    "from arg run cmd label maintainer expose env add copy entrypoint volume user workdir "
    "onbuild stopsignal healthcheck shell"
).split()

# Characters that tend to matter to a line scanner, beyond what st.characters() finds by itself.
NASTY_CHARS = [
    "\x00", "\r", "\n", "\t", "\x0b", "\x0c", "\x1c", "\x7f", "\x85", "\xa0", "\u2028", "\u2029",
    "\u3000", "\ufeff", "\ufffd", "\U0001f40d", "\U0010ffff", "\\", "`", "#", "=", "[", "]", '"', "'",
    "<", "$", "{", "}", "-", ",", "à", "Å",
]


@st.composite
def random_case(draw: st.DrawFn, word: str) -> str:
    mask = draw(st.integers(0, (1 << len(word)) - 1))
    return "".join(c.upper() if mask >> i & 1 else c.lower() for i, c in enumerate(word))


keyword_words = st.sampled_from([*KEYWORDS, "foo", "onbuild onbuild", "from scratch"]).flatmap(random_case)

FRAGMENTS = [
    # line structure
    "\n", "\n", "\n", "\r\n", "\r", " ", " ", "\t", "\\\n", "\\", "\\ \n", "`\n", "`", "\\\\\n",
    "\n\n", "\n#comment\n", "# comment\n", "   # indented comment\n", "\ufeff",
    # directives
    "# escape=`\n", "# escape=\\\n", "#escape = `\n", "# escape=x\n", "# syntax=docker/dockerfile:1\n",
    "# check=skip=all\n", "# ESCAPE=`\n", "#escape=`\r\n",
    # instruction starts
    "FROM busybox\n", "FROM --platform=$BUILDPLATFORM golang:1.22 AS Build\n", "FROM a AS b c\n",
    "FROM scratch AS 1x\n", "ONBUILD ", "ONBUILD ONBUILD ", "ONBUILD FROM x", "ONBUILD RUN ",
    "RUN ", "COPY ", "ADD ", "ENV ", "LABEL ", "HEALTHCHECK ", "HEALTHCHECK NONE", "HEALTHCHECK CMD ",
    # flags
    "--mount=type=cache,target=/x ", "--mount=type=secret,id=s ", '--mount="type=bind,\\"target=/a,b\\"" ',
    "--mount=type=bogus ", "--mount=target ", "--network=none ", "--network=wat ", "--security=insecure ",
    '--from="a b" ', "--chown='1:1' ", "--chmod=755 ", "--chmod=999 ", "--link ", "--link=maybe ",
    "--exclude=*.md ", "--parents ", "--checksum=sha256:00 ", "--keep-git-dir ", "--unpack=false ",
    "--interval=0.5ms ", "--interval=30s ", "--retries=x ", "--retries=3 ", "--start-period=1h1m ",
    "--platform ", "--", "-- ", "--=", '--x="unterminated', "--'a' ", "--chown=à ", "--x=\\",
    # arguments
    '["a", "b"]', '[ "sh" , "-c" ]', '["a" "b"]', "['a']", "[1]", "[]", "[", '["\\u0000"]',
    '["\\ud800"]', '["x"] trailing', '[[]]', "[null]", '["a",]', '[1e999]', "[NaN]", "[" * 40,
    '[ "$x" = y ]', "k=v", 'k="v w"', "k='v w'", "k", "=v", "k v w", "a=b c", '"unterminated',
    "'unterminated", "${VAR:-x}", "${VAR:?msg}", "${", "$", "${a", "$(cmd)", "`cmd`", "80/tcp",
    "bad-port", "1000-2000", "AS", "as", "/app", "a b", "/dest/", "*", "..", "éàü", "日本語",
    # heredocs
    "<<EOF", "<<-EOF", "<<'EOF'", '<<"EOF"', "<<", "<<<", "3<<EOF", "99999999999999999999999<<EOF",
    "<<EOF\nbody\nEOF\n", "<<-EOF\n\tbody\n\tEOF\n", "<<'EOF'\n$x\nEOF\n", "<<A <<B\na\nA\nb\nB\n",
    "<<EOF\r\nx\r\nEOF\r\n", "<<$X", "<<'E", "<<E\"\n", "cat <<EOF > /x\nhi\nEOF\n", "EOF\n",
    # numbers past Python's int() digit limit (4300), where the grammar converts to int
    "9" * 4400 + "<<EOF", "--retries=" + "9" * 4400 + " ", "--from=" + "9" * 4400 + " ", "--from=² ",
    # an escape character that ends the argument but not the line (Go-only blanks follow it)
    "\\\u3000\n", "`\x0b\n", "\\\xa0\n",
]

fragment = st.one_of(
    st.sampled_from(FRAGMENTS),
    keyword_words,
    keyword_words.map(lambda w: w + " "),
    st.text(max_size=6),
    st.sampled_from(NASTY_CHARS),
)
# Expensive shapes, mixed into a few examples only: a line just over BuildKit's
# 64 KiB limit, deep JSON nesting, a long ONBUILD chain, many continuations.
HUGE = ["a" * 70_000, "é" * 33_000, "ONBUILD " * 300 + "RUN x\n", "[" * 12_000, "\\\n" * 3000, "x" * 65_535]


@st.composite
def dockerfileish(draw: st.DrawFn) -> str:
    parts = draw(st.lists(fragment, max_size=30))
    if draw(st.integers(0, 40)) == 20:  # (hypothesis favours 0 and the bounds)
        parts.insert(draw(st.integers(0, len(parts))), draw(st.sampled_from(HUGE)))
    return "".join(parts)


nasty_text = st.lists(st.one_of(st.characters(), st.sampled_from(NASTY_CHARS)), max_size=80).map("".join)
surrogate_text = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), st.characters(categories=["Cs"]), st.characters()), max_size=20
).map("".join)

ROBUST = settings(database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@settings(ROBUST, max_examples=300)
@given(st.text())
def test_any_text(text: str) -> None:
    check_robust(text)


@settings(ROBUST, max_examples=300)
@given(nasty_text)
def test_text_with_control_and_astral_characters(text: str) -> None:
    check_robust(text)
    check_robust(("FROM busybox\nRUN " + text).encode("utf-8", "surrogatepass"))  # lone surrogates: invalid UTF-8


@settings(ROBUST, max_examples=200)
@given(surrogate_text)
def test_text_with_lone_surrogates(text: str) -> None:
    # A Python str may hold lone surrogates (os.fsdecode, surrogateescape); parse takes any str.
    check_robust(text)


@settings(ROBUST, max_examples=300)
@given(st.binary())
def test_any_bytes(data: bytes) -> None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        for function in (parse_syntax, parse):
            with pytest.raises(RecipeSyntaxError) as info:
                function(data, NAME)
            _check_error(info.value)
    else:
        check_robust(data)


@settings(ROBUST, max_examples=200)
@given(st.binary(), st.sampled_from([b"FROM busybox\nRUN ", b"\xef\xbb\xbf# escape=`\nFROM a\n", b"FROM a\nCOPY --chown="]))
def test_bytes_after_a_valid_prefix(tail: bytes, head: bytes) -> None:
    check_robust(head + tail)


@settings(ROBUST, max_examples=1500)
@given(dockerfileish())
def test_dockerfile_like_fragments(text: str) -> None:
    check_robust(text)


@settings(ROBUST, max_examples=500)
@given(dockerfileish(), st.booleans())
def test_fragments_after_from_round_trip_when_accepted(text: str, as_bytes: bool) -> None:
    """Whatever the fuzzer manages to get accepted must also round-trip through canonical."""
    data = "FROM busybox AS base\n" + text
    try:
        with time_limit(data):
            parse(data, NAME)
    except RecipeError:
        return
    check_round_trip(data.encode("utf-8") if as_bytes else data)


# ---------------------------------------------------------------------------
# 2. round trip of generated valid recipes

# Go's unicode.IsSpace: what BuildKit trims around arguments (it does not end a line).
GO_SPACE = (
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
    "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
SAFE = string.ascii_letters + string.digits + "/._-:@+%,=~*"
ATOMS = [
    "&&", "||", "|", ";", ">", "2>&1", "$HOME", "${VAR:-x}", "${A:+b}", "'single quoted'", '"double \\" quoted"',
    "\\$x", "[ -f /x ]", '[ "$x" = y ]', "é", "日本", "\U0001f40d", "a\\ b", "#notcomment", "--opt", "-x", "'\\'",
    '"\\\\"', "a\u3000b", "x\xa0y", "p\u2028q", "c\x85d", "\x1c", "tab\there", "k=v", "`date`", "c:\\dir\\",
    "$(id -u)", "{a,b}", "!", "?",
]
unicode_word = st.text(
    alphabet=st.characters(exclude_categories=("Cs", "Cc", "Zs", "Zl", "Zp"), exclude_characters="<\\`\"'"),
    min_size=1,
    max_size=5,
)
shell_atom = st.one_of(st.text(alphabet=SAFE, min_size=1, max_size=8), st.sampled_from(ATOMS), unicode_word)
BLANK = st.sampled_from([" ", " ", " ", "\t", "  ", " \t"])
SEP = st.sampled_from([" ", " ", " ", "\t", "  "])  # between keyword / flags / arguments
LEAD = st.sampled_from(["", "", "", "", " ", "\t", "  ", "\u3000"])


class Ctx:
    """What an instruction strategy needs to know about the recipe so far."""

    def __init__(self, escape: str) -> None:
        self.escape = escape
        self.stages: list[str | None] = []  # aliases of the stages opened so far

    @property
    def earlier(self) -> list[str]:
        """Aliases of the stages before the current one (valid `--from` targets)."""
        return [a for a in self.stages[:-1] if a is not None]


GO_ONLY_BLANKS = ["\u3000", "\xa0", "\x0b", "\x0c", "\x85"]  # trimmed from arguments, but no line continuation


@st.composite
def odd_end(draw: st.DrawFn, ctx: Ctx) -> str:
    """Usually nothing; sometimes an escape character that ends the argument but not the line."""
    if draw(st.integers(0, 7)) != 4:
        return ""
    return ctx.escape + draw(st.sampled_from(GO_ONLY_BLANKS))


def dashed(text: str) -> str:
    """`text` as the first argument: after `-- ` when it would read as a flag."""
    return f"-- {text}" if text.startswith("--") else text


@st.composite
def shell_text(draw: st.DrawFn, ctx: Ctx) -> str:
    """Shell-form text as the typed layer keeps it: no surrounding blanks, no `<<`, no escape
    character at the end unless a Go-only blank follows it (see `odd_end`)."""
    text = " ".join(draw(st.lists(shell_atom, min_size=1, max_size=6)))
    if text.endswith(ctx.escape):
        text += " x"  # would continue the line
    if text.startswith("[") and not text.startswith(("[ -f", '[ "$x"')):
        text = "echo " + text  # would look like a broken JSON array
    if text.strip(GO_SPACE + "\x1c") != text:
        text = "echo " + text.strip(GO_SPACE + "\x1c") + " ok"
    return text + draw(odd_end(ctx))


def quote_json(items: list[str], draw: st.DrawFn) -> str:
    ascii_only = draw(st.booleans())
    if draw(st.booleans()):
        return json.dumps(items, ensure_ascii=ascii_only)
    return "[ " + " , ".join(json.dumps(i, ensure_ascii=ascii_only) for i in items) + " ]"


json_item = st.one_of(
    st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=8),  # control chars, NUL, astral, ...
    shell_atom,
)


@st.composite
def command(draw: st.DrawFn, ctx: Ctx, *, min_argv: int = 0) -> str:
    """Shell form (`-- ` before text that starts with `--`) or exec form."""
    if draw(st.booleans()):
        return quote_json(draw(st.lists(json_item, min_size=min_argv, max_size=4)), draw)
    text = draw(shell_text(ctx))
    if draw(st.integers(0, 3)) == 0:
        text = draw(st.sampled_from(["--", "--version", "--x=1", "---"])) + " " + text
    return dashed(text)


@st.composite
def flag_value(draw: st.DrawFn, value: str) -> str:
    """`value` written plain or quoted, as a flag value (quotes resolved by the flag scanner)."""
    style = draw(st.sampled_from(["plain", "plain", "double", "single"]))
    # Flags are scanned byte by byte: a 0x85 or 0xA0 byte inside a UTF-8 character ends an unquoted word.
    splits = any(c in value for c in " \t\"'\\") or any(b in (0x85, 0xA0) for b in value.encode("utf-8"))
    if style == "double" or (style == "plain" and splits):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if style == "single":
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return value


@st.composite
def flag(draw: st.DrawFn, name: str, value: str) -> str:
    return f"--{name}={draw(flag_value(value))}"


def instruction(ctx: Ctx, word: str, flags: list[str], rest: str, draw: st.DrawFn) -> str:
    """One instruction line: the word in random case, the flags in random order, blanks between."""
    out = draw(random_case(word))
    for part in [*draw(st.permutations(flags)), rest]:
        out += draw(SEP) + part
    return out


# ---- per-instruction strategies: each returns (first line, heredoc bodies) --------------

IMAGES = ["busybox", "alpine:3.19", "debian:bookworm-slim", "registry.example:5000/team/app:1.2", "scratch",
          "ghcr.io/o/r@sha256:" + "a" * 64, "${BASE}", "$BASE:latest", "golang:1.22"]
PLATFORMS = ["linux/amd64", "linux/arm64/v8", "$BUILDPLATFORM", "${TARGETPLATFORM:-linux/amd64}", "linux/ärm"]
var_name = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True)
stage_name = st.from_regex(r"[a-z][a-z0-9_.-]{0,6}", fullmatch=True)
VALUES = ['"a b"', "'single q'", '"with \\"escaped\\" quotes"', '"back\\\\slash"', "a\\ b", "$HOME", "${X:-y}",
          '""', "é", '"日本 語"', "x=y", "\\$x", "'it''s'"]


def value_word(ctx: Ctx) -> st.SearchStrategy[str]:
    """An ENV/LABEL/ARG value as written: quotes and escapes (with the recipe's escape character) kept."""
    return st.one_of(
        st.text(alphabet=SAFE.replace("=", ""), max_size=6),
        st.sampled_from([v.replace("\\", ctx.escape) for v in VALUES]),
    )


@st.composite
def from_(draw: st.DrawFn, ctx: Ctx) -> tuple[str, str]:
    flags = [draw(flag("platform", draw(st.sampled_from(PLATFORMS))))] if draw(st.booleans()) else []
    image = draw(st.sampled_from(IMAGES + [a for a in ctx.stages if a is not None]))  # an image or an earlier stage
    if draw(st.integers(0, 15)) == 8:
        image = "--$IMAGE"  # valid: not checked when it holds a variable
    alias = None
    if draw(st.booleans()):
        alias = draw(stage_name.filter(lambda n: n not in ctx.stages))
        image += draw(SEP) + draw(random_case("as")) + draw(SEP) + draw(random_case(alias))
    ctx.stages.append(alias)
    return instruction(ctx, "from", flags, dashed(image), draw), ""


@st.composite
def arg(draw: st.DrawFn, ctx: Ctx) -> tuple[str, str]:
    decls = []
    for _ in range(draw(st.integers(1, 3))):
        name = draw(var_name)
        if draw(st.booleans()):
            decls.append(f"{name}={draw(value_word(ctx))}")
        else:
            decls.append(name)
    if draw(st.integers(0, 7)) == 4:
        decls[0] = "--" + decls[0]
    return instruction(ctx, "arg", [], dashed(draw(BLANK).join(decls)), draw), ""


MOUNTS = ["type=cache,target=/x", "type=cache,id=go,target=/root/.cache/go-build,sharing=locked",
          "type=secret,id=token", "type=ssh", "type=tmpfs,target=/tmp,size=64m",
          "target=/src,source=.,readonly", "type=bind,target=/in,rw", 'type=cache,"target=/a,b"',
          "type=cache,target=/with space", "type=cache,target=/données", "type=secret,id=s,env=TOKEN,required"]


@st.composite
def mount(draw: st.DrawFn, ctx: Ctx) -> str:
    spec = draw(st.sampled_from(MOUNTS))
    if ctx.earlier and draw(st.booleans()):
        spec = f"type=bind,from={draw(st.sampled_from(ctx.earlier))},source=/out,target=/in"
    return draw(flag("mount", spec))


HEREDOC_NAMES = ["EOF", "END", "FILE_1", "eot"]


@st.composite
def heredoc(draw: st.DrawFn) -> tuple[str, str]:
    """A `<<WORD` for the first line and its body plus terminator."""
    name = draw(st.sampled_from(HEREDOC_NAMES))
    chomp = draw(st.booleans())
    quote = draw(st.sampled_from(["", "", "'", '"']))
    fd = draw(st.sampled_from(["", "", "", "3"]))
    marker = f"{fd}<<{'-' if chomp else ''}{quote}{name}{quote}"

    def not_terminator(line: str) -> bool:
        candidate = line.rstrip("\r")
        return (candidate.lstrip("\t") if chomp else candidate) != name

    line = st.one_of(
        st.text(alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\n\x00"), max_size=12),
        st.sampled_from(["\tindented", "\t\tEOFX", "echo $HOME", "ends with \\", "#!/bin/sh", "x\r", "", " EOF"]),
    ).filter(not_terminator)
    lines = draw(st.lists(line, max_size=4))
    end = (draw(st.sampled_from(["", "\t", "\t\t"])) if chomp else "") + name
    return marker, "".join(f"{body}\n" for body in lines) + end + "\n"


@st.composite
def run(draw: st.DrawFn, ctx: Ctx, *, heredocs: bool = True) -> tuple[str, str]:
    flags = [draw(mount(ctx)) for _ in range(draw(st.integers(0, 2)))]
    if draw(st.booleans()):
        flags.append(draw(flag("network", draw(st.sampled_from(["none", "default", "host", "$NET"])))))
    if draw(st.integers(0, 5)) == 0:
        flags.append(draw(flag("security", draw(st.sampled_from(["insecure", "sandbox"])))))
    if heredocs and draw(st.integers(0, 3)) == 0:
        docs = [draw(heredoc()) for _ in range(draw(st.integers(1, 2)))]
        shape = draw(st.sampled_from(["bare", "cat", "python"]))
        if shape == "bare" and len(docs) == 1:
            rest = docs[0][0]
        elif shape == "python":
            rest = "python3 " + " ".join(m for m, _ in docs)
        else:
            rest = " && ".join(f"cat {m} > /f{i}" for i, (m, _) in enumerate(docs))
        return instruction(ctx, "run", flags, rest, draw), "".join(b for _, b in docs)
    rest = draw(command(ctx, min_argv=1))  # `RUN []` is an error
    return instruction(ctx, "run", flags, rest, draw), ""


@st.composite
def cmd_or_entrypoint(draw: st.DrawFn, ctx: Ctx) -> tuple[str, str]:
    return instruction(ctx, draw(st.sampled_from(["cmd", "entrypoint"])), [], draw(command(ctx)), draw), ""


@st.composite
def shell(draw: st.DrawFn, ctx: Ctx) -> tuple[str, str]:
    argv = draw(st.one_of(
        st.sampled_from([["/bin/bash", "-o", "pipefail", "-c"], ["powershell", "-Command"], ["/bin/sh", "-c"]]),
        st.lists(json_item, min_size=1, max_size=3),
    ))
    return instruction(ctx, "shell", [], quote_json(argv, draw), draw), ""


@st.composite
def env_or_label(draw: st.DrawFn, ctx: Ctx) -> tuple[str, str]:
    word = draw(st.sampled_from(["env", "label"]))
    key = var_name if word == "env" else st.one_of(var_name, st.sampled_from(["com.example.v", '"my key"', "org.opencontainers.image.title"]))
    dashes = "--" if draw(st.integers(0, 7)) == 4 else ""  # a first key that reads like a flag
    if draw(st.integers(0, 3)) == 0:  # legacy `ENV key rest of line`
        name = dashes + draw(var_name)
        value = draw(shell_text(ctx))
        return instruction(ctx, word, [], dashed(f"{name}{draw(BLANK)}{value}"), draw), ""
    pairs = [f"{draw(key)}={draw(value_word(ctx))}" for _ in range(draw(st.integers(1, 3)))]
    return instruction(ctx, word, [], dashed(dashes + draw(BLANK).join(pairs)), draw), ""


PORTS = ["80", "8080/tcp", "53/udp", "1000-2000", "$PORT", "${P:-80}/tcp", "443", "$P"]


@st.composite
def simple(draw: st.DrawFn, ctx: Ctx) -> tuple[str, str]:
    word = draw(st.sampled_from(["expose", "volume", "volume", "user", "workdir", "stopsignal", "maintainer"]))
    if word == "expose":
        rest = draw(BLANK).join(draw(st.lists(st.sampled_from(PORTS), min_size=1, max_size=3)))
    elif word == "volume":
        paths = draw(st.lists(st.one_of(st.sampled_from(["/data", "/var/log", "/my data", "/x\ty", "/é", "--v"]),
                                        st.text(alphabet=SAFE, max_size=6).map(lambda s: "/" + s)), min_size=1, max_size=3))
        if draw(st.booleans()) or any(" " in p or "\t" in p for p in paths):
            rest = quote_json(paths, draw)
        else:
            rest = draw(BLANK).join(paths)
    elif word == "user":
        rest = draw(st.sampled_from(["root", "1000:1000", "app", "$UID:$GID", "josé", "nobody:nogroup"]))
    elif word == "workdir":
        rest = draw(st.sampled_from(["/app", "/my dir", "$HOME/x", "C:\\app", "/srv/日本", "relative/dir"]))
    elif word == "stopsignal":
        rest = draw(st.sampled_from(["SIGTERM", "9", "$SIG", "SIGRTMIN+3"]))
    else:
        rest = draw(st.sampled_from(["Jane Doe <jane@example.com>", "someone", "A. N. Other (a\\b)"]))
    if word != "volume":
        if draw(st.integers(0, 7)) == 4:
            rest = "--" + rest if word != "expose" else "--$P " + rest
        rest += draw(odd_end(ctx)) if word != "expose" or rest.endswith("P") else ""
    return instruction(ctx, word, [], dashed(rest), draw), ""


@st.composite
def healthcheck(draw: st.DrawFn, ctx: Ctx) -> tuple[str, str]:
    if draw(st.integers(0, 3)) == 0:
        return instruction(ctx, "healthcheck", [], draw(random_case("none")), draw), ""
    flags = []
    for name, values in (
        ("interval", ["30s", "1m30s", "0", "500ms", "$INTERVAL"]),
        ("timeout", ["3s", "1h", "1.5s"]),
        ("start-period", ["0", "10s"]),
        ("start-interval", ["5s", "1ms"]),
        ("retries", ["3", "0", "007"]),
    ):
        if draw(st.booleans()):
            flags.append(draw(flag(name, draw(st.sampled_from(values)))))
    rest = draw(random_case("cmd")) + draw(SEP) + draw(command(ctx))
    return instruction(ctx, "healthcheck", flags, rest, draw), ""


PATHS = ["src", "./app", "*.txt", "dir/", "a.tar.gz", "é.txt", "file-1", "~x", "#hash", "a,b", "--a"]
# sources that only the JSON form can carry
SPACED_PATHS = ["my file", "with\ttab", "[bracket", "quo\"te", "back\\slash", "it's", "<<EOF", "3<<x"]


@st.composite
def copy_or_add(draw: st.DrawFn, ctx: Ctx, *, heredocs: bool = True) -> tuple[str, str]:
    word = draw(st.sampled_from(["copy", "copy", "add"]))
    flags = []
    if word == "copy" and draw(st.booleans()):
        targets = ["alpine:3.19", "$STAGE"]
        if len(ctx.stages) > 1:
            targets += [*ctx.earlier, *(draw(random_case(s)) for s in ctx.earlier), str(len(ctx.stages) - 2), "0"]
        flags.append(draw(flag("from", draw(st.sampled_from(targets)))))
    if draw(st.booleans()):
        flags.append(draw(flag("chown", draw(st.sampled_from(["1000:1000", "app:app", "$UID", "app user", "josé", "Åsa:à"])))))
    if draw(st.booleans()):
        flags.append(draw(flag("chmod", draw(st.sampled_from(["755", "0644", "u+x,g-w", "$MODE", "a=rX"])))))
    if draw(st.booleans()):
        flags.append(draw(st.sampled_from(["--link", "--link", "--link=true", "--link=false"])))
    if word == "copy" and draw(st.booleans()):
        flags.append(draw(st.sampled_from(["--parents", "--parents=true", "--parents=false"])))
    for _ in range(draw(st.integers(0, 2))):
        flags.append(draw(flag("exclude", draw(st.sampled_from(["*.md", "**/node_modules", "a b", "x,y"])))))
    if word == "add":
        if draw(st.booleans()):
            flags.append(draw(flag("checksum", "sha256:" + "0123456789abcdef" * 4)))
        if draw(st.booleans()):
            flags.append(draw(st.sampled_from(["--keep-git-dir", "--keep-git-dir=true", "--keep-git-dir=false"])))
        if draw(st.integers(0, 3)) == 0:
            flags.append(draw(st.sampled_from(["--unpack", "--unpack=true", "--unpack=false"])))
    dest = draw(st.sampled_from(["/app/", "/dest", ".", "/my dest/", "/é/"]))
    if heredocs and draw(st.integers(0, 4)) == 0:
        docs = [draw(heredoc()) for _ in range(draw(st.integers(1, 2)))]
        dest = dest.replace(" ", "_")
        rest = " ".join(m for m, _ in docs) + " " + dest
        return instruction(ctx, word, flags, rest, draw), "".join(b for _, b in docs)
    sources = draw(st.lists(st.sampled_from(PATHS + SPACED_PATHS + (
        ["https://example.com/a.tar.gz", "git@github.com:o/r.git#v1"] if word == "add" else [])), min_size=1, max_size=3))
    items = [*sources, dest]
    if draw(st.booleans()) or any(p in SPACED_PATHS or " " in p for p in items):
        rest = quote_json(items, draw)
    else:
        rest = dashed(draw(BLANK).join(items))
    return instruction(ctx, word, flags, rest, draw), ""


@st.composite
def onbuild(draw: st.DrawFn, ctx: Ctx) -> tuple[str, str]:
    inner, bodies = draw(st.one_of(run(ctx), copy_or_add(ctx), env_or_label(ctx), cmd_or_entrypoint(ctx)))
    # `ONBUILD -- RUN x`: the `--` ends ONBUILD's (empty) flags and stays in the expression
    dashes = "--" + draw(SEP) if draw(st.integers(0, 7)) == 4 else ""
    return draw(random_case("onbuild")) + draw(SEP) + dashes + inner, bodies


def body_instruction(ctx: Ctx) -> st.SearchStrategy[tuple[str, str]]:
    return st.one_of(
        run(ctx), run(ctx), copy_or_add(ctx), copy_or_add(ctx), env_or_label(ctx), arg(ctx), simple(ctx),
        cmd_or_entrypoint(ctx), shell(ctx), healthcheck(ctx), onbuild(ctx),
    )


@st.composite
def split_lines(draw: st.DrawFn, line: str, ctx: Ctx) -> str:
    """`line` split by escape-newline continuations, sometimes with comments and blank lines between."""
    if len(line) < 2 or draw(st.integers(0, 3)) != 0:
        return line
    cuts = sorted(draw(st.lists(st.integers(1, len(line) - 1), min_size=1, max_size=3, unique=True)))
    out, last = [], 0
    for cut, following in zip(cuts, [*cuts[1:], len(line)]):
        piece, nxt = line[last:cut], line[cut:following]
        # the scanner drops blank and comment lines inside a continuation, and `\\` is no continuation
        if piece.endswith(ctx.escape) or not nxt.strip(GO_SPACE) or nxt.lstrip(GO_SPACE).startswith("#"):
            continue
        out.append(piece + ctx.escape + draw(st.sampled_from(["", "", " ", "\t "])) + "\n")
        out.append(draw(st.sampled_from(["", "", "", "# comment inside\n", "\n", "   \n", "  # indented\n"])))
        last = cut
    return "".join(out) + line[last:]


@st.composite
def valid_recipes(draw: st.DrawFn) -> tuple[str | bytes, int]:
    """Text that `parse` accepts, and how many instructions it holds."""
    escape = draw(st.sampled_from(["\\", "\\", "\\", "`"]))
    ctx = Ctx(escape)
    head = []
    if escape == "`":
        head.append(draw(st.sampled_from(["# escape=`", "#escape=`", "# ESCAPE = `", "#  escape=`  "])) + "\n")
    if draw(st.integers(0, 4)) == 0:
        head.append(draw(st.sampled_from(["# syntax=docker/dockerfile:1", "# check=skip=all"])) + "\n")
    head = draw(st.permutations(head))
    instructions: list[tuple[str, str]] = [draw(arg(ctx)) for _ in range(draw(st.integers(0, 2)))]
    for _ in range(draw(st.integers(1, 3))):
        instructions.append(draw(from_(ctx)))
        instructions.extend(draw(body_instruction(ctx)) for _ in range(draw(st.integers(0, 5))))
    out = ["\ufeff"] if draw(st.integers(0, 9)) == 0 else []
    out += head
    if head and draw(st.booleans()):
        out.append("\n")
    for first, bodies in instructions:
        out.append(draw(st.sampled_from(["", "", "", "\n", "# a comment\n", "  \n"])))
        out.append(draw(LEAD) + draw(split_lines(first, ctx)) + draw(st.sampled_from(["", "", " ", "\t"])) + "\n")
        out.append(bodies)
    text = "".join(out)
    if draw(st.integers(0, 5)) == 0:
        text = text.replace("\n", "\r\n")
    if draw(st.integers(0, 5)) == 0:
        text = text.removesuffix("\r\n").removesuffix("\n") if not instructions[-1][1] else text
    data: str | bytes = text.encode("utf-8") if draw(st.booleans()) else text
    return data, len(instructions)


ROUND_TRIP = settings(
    database=None, deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


@ROUND_TRIP
@given(valid_recipes())
def test_generated_recipes_are_valid(case: tuple[str | bytes, int]) -> None:
    """Guards the generator itself: what it writes parses, into as many instructions as it wrote."""
    data, count = case
    recipe = parse(data, NAME)
    assert instruction_count(recipe) == count


@ROUND_TRIP
@given(valid_recipes())
def test_canonical_round_trip(case: tuple[str | bytes, int]) -> None:
    data, count = case
    check_round_trip(data, count)


# ---------------------------------------------------------------------------
# 3. examples


def test_strip_spans_reaches_onbuild_triggers() -> None:
    one = parse("FROM a\nONBUILD RUN echo hi\n")
    two = parse("\n\nFROM a\n\n   ONBUILD    RUN echo hi\n")
    assert one != two
    assert strip_spans(one) == strip_spans(two)
    trigger = strip_spans(one).stages[0].instructions[0]
    assert type(trigger) is Onbuild and trigger.span is None and trigger.trigger.span is None


ROUND_TRIP_EXAMPLES = {
    "shell text starting with --": "FROM a\nRUN -- --version\nCMD -- --help me\nENTRYPOINT -- --x\n",
    "shell text -- after flags": "FROM a\nRUN --network=none -- --x && y\n",
    "ENV values with quotes and backslashes": 'FROM a\nENV A="x \\"y\\" z" B=\'q\\\' C=back\\\\slash D=a\\ b E=""\n',
    "LABEL values with quotes": 'FROM a\nLABEL "my key"="v \\"1\\"" com.example.x=\'a b\'\n',
    "legacy ENV": "FROM a\nENV PATH /usr/local/bin:$PATH and more  words\nLABEL legacy  value=with equals\n",
    "legacy ENV quoted first word": 'FROM a\nENV "a b" c\n',
    "exec form with unicode and controls": 'FROM a\nCMD ["é", "日本", "\\u0000", "\\u001b[0m", "\\n\\t", "\U0001f40d", "\\u2028", "\\\\"]\n',
    "exec form for RUN and ENTRYPOINT": 'FROM a\nRUN ["/bin/sh","-c","echo \\"hi\\""]\nENTRYPOINT []\n',
    "heredoc with <<- and tabs": "FROM a\nRUN <<-EOF\n\techo one\n\t\techo two\n\t\tEOF\n",
    "heredoc quoted, two heredocs": "FROM a\nRUN cat <<'A' >/a && cat <<\"B\" >/b\n$x\nA\n$y\nB\n",
    "COPY heredoc": "FROM a\nCOPY --chmod=755 <<EOF /usr/bin/hello\n#!/bin/sh\necho hello\nEOF\n",
    "ONBUILD heredoc": "FROM a\nONBUILD RUN <<EOF\necho later\nEOF\n",
    "CRLF heredoc": "FROM a\r\nRUN <<EOF\r\nline\r\nEOF\r\n",
    "COPY sources with spaces": 'FROM a\nCOPY ["my file", "it\'s", "/dest dir/"]\nADD --checksum=sha256:00 ["a b", "/c"]\n',
    "flags with quotes": 'FROM a\nCOPY --chown="app user" --exclude=\'*.md\' --exclude="a\\"b" x /y\n',
    "mount with comma in a field": "FROM a\nRUN --mount='type=cache,\"target=/a,b\"' --mount=type=secret,id=s true\n",
    "backtick escape": "# escape=`\nFROM a\nRUN dir c:\\ `\n  && echo `\n  done\nWORKDIR C:\\app\\\n",
    "healthcheck": "FROM a\nHEALTHCHECK --interval=30s --retries=007 CMD curl -f http://x/ || exit 1\nHEALTHCHECK none\n",
    "continuation with comment inside": "FROM a\nRUN echo a \\\n# skipped\n\n    b\n",
    "global ARG and stage reference": "ARG BASE=alpine\nFROM $BASE AS Build\nFROM scratch\nCOPY --from=BUILD /x /y\n",
}


@pytest.mark.parametrize("text", list(ROUND_TRIP_EXAMPLES.values()), ids=list(ROUND_TRIP_EXAMPLES))
def test_round_trip_examples(text: str) -> None:
    check_round_trip(text)


# Inputs that once crashed or hung: each must return or raise a RecipeError, in time.
# int() of more than 4300 digits raised ValueError; lone surrogates raised
# UnicodeEncodeError (flags and HEALTHCHECK are scanned as UTF-8 bytes); ARG,
# ENV and LABEL words with an unterminated quote sent a nested-quantifier regex
# into exponential backtracking (16 letters: 1.5 s, 20 letters: over a minute).
ROBUST_EXAMPLES = {
    "heredoc fd past int() digit limit": "FROM a\nRUN " + "9" * 4400 + "<<EOF cat\nx\nEOF\n",
    "--retries past int() digit limit": "FROM a\nHEALTHCHECK --retries=" + "9" * 4400 + " CMD true\n",
    "COPY --from index past int() digit limit": "FROM a\nCOPY --from=" + "9" * 4400 + " a b\n",
    "COPY --from with a non-decimal digit": "FROM a AS b\nFROM c\nCOPY --from=² a b\n",
    "RUN --mount from with a non-decimal digit": "FROM a\nFROM b\nRUN --mount=type=bind,from=²,target=/x true\n",
    "lone surrogate in a flag": "FROM a\nRUN --network=\ud800 true\n",
    "lone surrogate after flags": "FROM a\nRUN --network=none \udfff\n",
    "lone surrogate in HEALTHCHECK": "FROM a\nHEALTHCHECK --interval=1s CMD \ud800\n",
    "deep JSON nesting": "FROM a\nCMD " + "[" * 20_000 + "]" * 20_000 + "\n",
    "ONBUILD chain": "FROM a\n" + "ONBUILD " * 5000 + "RUN x\n",
    "line over 64 KiB": "FROM a\nRUN " + "é" * 40_000 + "\n",
    "heredoc at end of file": "FROM a\nRUN <<EOF",
    "continuation at end of file": "FROM a\nRUN x \\",
    "escape directive only": "# escape=`\n",
    # words with an unterminated quote (ARG, ENV, LABEL split words keeping quotes)
    "ARG word then unterminated '": "ARG " + "a" * 40 + "'\n",
    "ARG words then unterminated '": "ARG " + "a b " * 20 + "'\n",
    'ENV value then unterminated "': "FROM a\nENV k=" + "a" * 40 + '"\n',
    "LABEL value then unterminated '": "FROM a\nLABEL k=v " + "x" * 40 + "'\n",
    "ARG with backtick escape": "# escape=`\nARG " + "a`b" * 20 + "'\n",
}


@pytest.mark.parametrize("text", list(ROBUST_EXAMPLES.values()), ids=list(ROBUST_EXAMPLES))
def test_robust_examples(text: str) -> None:
    check_robust(text)


# ---------------------------------------------------------------------------
# regression tests: round-trip shapes canonical got wrong (found by the properties above)

# canonical wrote `-- ` only before shell-form commands, so every other first
# argument starting with `--` came back as a flag (HEALTHCHECK CMD, where no
# flags are read, gained an extra `-- `); once that was generalised,
# `ONBUILD -- RUN x` got a second `--` and no longer parsed.
LEADING_DASHES = {
    "HEALTHCHECK CMD": "FROM a\nHEALTHCHECK CMD --x\n",
    "USER": "FROM a\nUSER -- --u\n",
    "WORKDIR": "FROM a\nWORKDIR -- --w\n",
    "STOPSIGNAL": "FROM a\nSTOPSIGNAL -- --s\n",
    "MAINTAINER": "FROM a\nMAINTAINER -- --m\n",
    "ENV": "FROM a\nENV -- --k=v\n",
    "ENV legacy": "FROM a\nENV -- --k v\n",
    "LABEL": "FROM a\nLABEL -- --k=v\n",
    "ARG": "FROM a\nARG -- --k=v\n",
    "EXPOSE": "FROM a\nEXPOSE -- --$P\n",
    "VOLUME json": 'FROM a\nVOLUME ["--v"]\n',
    "COPY json": 'FROM a\nCOPY ["--a", "/d"]\n',
    "COPY after --": "FROM a\nCOPY -- --a /d\n",
    "ADD json": 'FROM a\nADD ["--a", "/d"]\n',
    "FROM": "FROM -- --$IMAGE\n",
    "ONBUILD expression after --": "FROM a\nONBUILD -- RUN x\n",
}


@pytest.mark.parametrize("text", list(LEADING_DASHES.values()), ids=list(LEADING_DASHES))
def test_round_trip_first_argument_starting_with_dashes(text: str) -> None:
    check_round_trip(text)


# An argument may end with the escape character when the line has a Go-only blank
# after it (`\u3000`, `\xa0`, `\x85`, `\v`, `\f`): BuildKit trims the blank but
# does not see a continuation. canonical wrote the argument at the end of its
# line, where the escape character then continued the line into the next
# instruction (which disappeared: the instruction count changed too).
TRAILING_ESCAPE = {
    "RUN": "FROM a\nRUN echo x\\\u3000\nUSER after\n",
    "CMD": "FROM a\nCMD echo x\\\xa0\nUSER after\n",
    "ENTRYPOINT": "FROM a\nENTRYPOINT echo x\\\x0b\nUSER after\n",
    "HEALTHCHECK CMD": "FROM a\nHEALTHCHECK CMD echo x\\\x0c\nUSER after\n",
    "WORKDIR": "FROM a\nWORKDIR C:\\app\\\x85\nUSER after\n",
    "USER": "FROM a\nUSER x\\\u3000\nUSER after\n",
    "STOPSIGNAL": "FROM a\nSTOPSIGNAL x\\\u3000\nUSER after\n",
    "MAINTAINER": "FROM a\nMAINTAINER x\\\u3000\nUSER after\n",
    "ENV legacy": "FROM a\nENV k v\\\u3000\nUSER after\n",
    "LABEL legacy": "FROM a\nLABEL k v\\\u3000\nUSER after\n",
    "EXPOSE": "FROM a\nEXPOSE $P\\\u3000\nUSER after\n",
    "FROM image": "FROM $IMAGE\\\u3000\nUSER after\n",
    "backtick escape": "# escape=`\nFROM a\nRUN echo x`\u3000\nUSER after\n",
}


@pytest.mark.parametrize("text", list(TRAILING_ESCAPE.values()), ids=list(TRAILING_ESCAPE))
def test_round_trip_argument_ending_with_the_escape_character(text: str) -> None:
    check_round_trip(text)


@pytest.mark.parametrize("text", ['FROM a\nCOPY ["<<EOF", "/d"]\n', 'FROM a\nADD ["3<<x", "/d"]\n'])
def test_round_trip_json_source_that_looks_like_a_heredoc(text: str) -> None:
    # canonical wrote the JSON array as plain words, and `<<EOF` then announced a heredoc
    check_round_trip(text)


@pytest.mark.parametrize(
    ("text", "field", "expected"),
    [
        ("FROM a\nCOPY --chown=josé a /b\n", "chown", "josé"),
        ('FROM a\nCOPY --chown="à" a /b\n', "chown", "à"),
        ("FROM a\nADD --checksum=sha256:é a /b\n", "checksum", "sha256:é"),
        ("FROM a\nRUN --network=$Ñ true\n", "network", "$Ñ"),
    ],
)
def test_non_ascii_flag_values(text: str, field: str, expected: str) -> None:
    # Flag values are scanned byte by byte (as BuildKit does) and were not decoded
    # back: `josé` arrived as `josÃ©`. canonical must also quote such values, as
    # `à` holds a 0xA0 byte, which ends an unquoted flag word.
    instruction = parse(text, NAME).stages[0].instructions[0]
    assert getattr(instruction, field) == expected
    check_round_trip(text)


def test_non_ascii_mount_target() -> None:
    run = parse("FROM a\nRUN --mount=type=cache,target=/données true\n", NAME).stages[0].instructions[0]
    assert run.mounts[0].fields == (("type", "cache"), ("target", "/données"))
