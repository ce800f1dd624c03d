"""How BuildKit's parser splits one logical instruction line into values.

Each function here reproduces one of BuildKit's per-instruction line parsers
(`frontend/dockerfile/parser/line_parsers.go`, `split_command.go`), quirks
included, because `pybuild parse --json` promises BuildKit's syntax tree. They
are pure and know nothing of typed instructions, expansion or the store.
"""

from __future__ import annotations

import re
from functools import lru_cache

from .blanks import GO_SPACE
from .errors import RecipeSyntaxError
from .jsonarray import parse_json_array

__all__ = [
    "Arguments",
    "dispatch",
    "extract_flags",
    "parse_json_array",
    "parse_words",
    "split_command",
]

# unicode.IsSpace applied to a single byte, as extractBuilderFlags does.
_BYTE_SPACE = frozenset("\t\n\v\f\r \x85\xa0")
_ASCII_BLANKS = re.compile(r"[\t\v\f\r ]+")
_SIMPLE_FLAG = re.compile("--[^\t\n\v\f\r \x85\xa0'\"\\\\]*")



# Values of one instruction as BuildKit's node chain holds them, and whether
# they came from a JSON array (exec form).
Arguments = tuple[tuple[str, ...], bool]

_NO_ARGS: Arguments = ((), False)


def split_command(line: str) -> tuple[str, int, list[tuple[int, str]], str, int]:
    """Split a logical line into (word, word offset, flags, rest, rest offset).

    `flags` holds (offset, text) for each leading `--name=value` word, quotes
    and backslashes already resolved. Offsets index into `line`; the rest
    offset is -1 when there is no rest.
    """
    stripped = line.strip(GO_SPACE)
    lead = len(line) - len(line.lstrip(GO_SPACE)) if line[:1] in GO_SPACE else 0
    m = _ASCII_BLANKS.search(stripped)
    if m is None:
        return stripped, lead, [], "", -1
    word, after = stripped[: m.start()], m.end()
    if stripped.startswith("--", after):
        flags, rest, rest_off = extract_flags(stripped[after:])
        flags = [(lead + after + o, f) for o, f in flags]
    else:
        flags, rest, rest_off = [], stripped[after:], 0
    if rest[:1] in GO_SPACE:  # also "": no rest at all
        trimmed = rest.lstrip(GO_SPACE)
        if not trimmed:
            return word, lead, flags, "", -1
        rest_off += len(rest) - len(trimmed)
        rest = trimmed.rstrip(GO_SPACE)
    return word, lead, flags, rest, lead + after + rest_off


def extract_flags(text: str) -> tuple[list[tuple[int, str]], str, int]:
    """Leading `--flag` words of `text`, then the rest and its offset (-1: none).

    BuildKit scans bytes here, not characters: a non-ASCII byte becomes the
    Latin-1 character of the same value and the bytes 0x85 and 0xA0 count as
    blanks. Emulating that keeps `--json` output identical for such input.
    """
    if not text.startswith("--"):
        return [], text, 0
    raw = text if text.isascii() else text.encode("utf-8").decode("latin-1")
    flags: list[tuple[int, str]] = []
    n = len(raw)
    pos = 0
    while True:
        while pos < n and raw[pos] in _BYTE_SPACE:
            pos += 1
        if pos == n:
            return flags, "", -1
        if not raw.startswith("--", pos):
            return flags, _rest_from(raw, text, pos), _char_offset(raw, text, pos)
        start = pos
        simple = _SIMPLE_FLAG.match(raw, pos)
        if simple.end() == n or raw[simple.end()] in _BYTE_SPACE:
            value = simple.group()  # no quotes or backslashes: the common case
            pos = simple.end()
            blank_ok = False
        else:
            value, pos, blank_ok = _quoted_flag(raw, pos)
        if value == "--":
            if pos == n:
                return flags, "", -1
            return flags, _rest_from(raw, text, pos), _char_offset(raw, text, pos)
        if blank_ok or value:
            flags.append((_char_offset(raw, text, start), value))


def _quoted_flag(raw: str, pos: int) -> tuple[str, int, bool]:
    """One flag word with quotes and backslashes resolved: (text, end, had quotes)."""
    n = len(raw)
    word: list[str] = []
    blank_ok = False
    quote = ""
    while pos < n:
        ch = raw[pos]
        if quote:
            if ch == quote:
                quote = ""
                pos += 1
                continue
            if ch == "\\":
                if pos + 1 == n:
                    quote = ""
                    pos += 1
                    continue
                pos += 1
                ch = raw[pos]
            word.append(ch)
            pos += 1
            continue
        if ch in _BYTE_SPACE:
            break
        if ch in "'\"":
            quote = ch
            blank_ok = True
            pos += 1
            continue
        if ch == "\\":
            if pos + 1 == n:
                pos += 1
                continue
            pos += 1
            ch = raw[pos]
        word.append(ch)
        pos += 1
    return "".join(word), pos, blank_ok


def _rest_from(raw: str, text: str, pos: int) -> str:
    if raw is text:
        return text[pos:]
    return raw[pos:].encode("latin-1").decode("utf-8", "replace")


def _char_offset(raw: str, text: str, pos: int) -> int:
    if raw is text:
        return pos
    return len(raw[:pos].encode("latin-1").decode("utf-8", "ignore"))


@lru_cache(maxsize=2)  # compiled on first use: recipes rarely need both escapes
def _words_pattern(escape: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    e = re.escape(escape)
    space = "".join(f"\\u{ord(c):04x}" for c in GO_SPACE)
    # Possessive quantifiers: a failed match must not backtrack exponentially.
    word = rf"(?:[^{space}'\"{e}]++|{e}[\s\S]|\"(?:[^\"{e}]++|{e}[\s\S])*+\"|'[^']*+')++"
    return re.compile(word), re.compile(rf"[{space}]*+(?:{word}[{space}]*+)*+")


def parse_words(rest: str, escape: str) -> list[str]:
    """Blank-separated words with quotes and escapes kept verbatim (ENV, LABEL, ARG)."""
    word, whole = _words_pattern(escape)
    if whole.fullmatch(rest):  # no unterminated quote, no trailing escape: the common case
        return word.findall(rest)
    return _parse_words_slowly(rest, escape)


def _parse_words_slowly(rest: str, escape: str) -> list[str]:
    words: list[str] = []
    word: list[str] = []
    blank_ok = False
    quote = ""
    in_word = False
    n = len(rest)
    pos = 0
    while pos < n:
        ch = rest[pos]
        if not in_word:
            if ch in GO_SPACE:
                pos += 1
                continue
            in_word = True
        if quote:
            if ch == quote:
                quote = ""
            if ch == escape and quote != "'":
                if pos + 1 == n:
                    quote = ""
                    pos += 1
                    continue
                pos += 1
                word.append(ch)
                ch = rest[pos]
            word.append(ch)
            pos += 1
            continue
        if ch in GO_SPACE:
            in_word = False
            if blank_ok or word:
                words.append("".join(word))
            word = []
            blank_ok = False
            pos += 1
            continue
        if ch in "'\"":
            quote = ch
            blank_ok = True
        if ch == escape:
            if pos + 1 == n:
                pos += 1
                continue
            word.append(ch)
            pos += 1
            ch = rest[pos]
        word.append(ch)
        pos += 1
    if in_word and (blank_ok or word):
        words.append("".join(word))
    return words


# --- one function per instruction kind; each takes (rest, escape) -----------


def _ignore(rest: str, escape: str) -> Arguments:
    return ("",), False


def _whitespace_list(rest: str, escape: str) -> Arguments:
    if not rest:
        return _NO_ARGS
    return tuple(_ASCII_BLANKS.split(rest)), False


def _single_string(rest: str, escape: str) -> Arguments:
    return ((rest,), False) if rest else _NO_ARGS


def _maybe_json(rest: str, escape: str) -> Arguments:
    if not rest:
        return _NO_ARGS
    values = parse_json_array(rest)
    return (tuple(values), True) if values is not None else ((rest,), False)


def _maybe_json_list(rest: str, escape: str) -> Arguments:
    values = parse_json_array(rest)
    return (tuple(values), True) if values is not None else _whitespace_list(rest, escape)


def _name_or_name_value(rest: str, escape: str) -> Arguments:
    return tuple(parse_words(rest, escape)), False


def _name_value(keyword: str):  # noqa: ANN202 - returns one line parser
    def parse(rest: str, escape: str) -> Arguments:
        words = parse_words(rest, escape)
        if not words:
            return _NO_ARGS
        if "=" not in words[0]:
            parts = _ASCII_BLANKS.split(rest, maxsplit=1)
            if len(parts) < 2:
                raise RecipeSyntaxError(f"{keyword} must have two arguments")
            return (parts[0], parts[1], ""), False
        out: list[str] = []
        for word in words:
            key, eq, value = word.partition("=")
            if not eq:
                raise RecipeSyntaxError(
                    f"Syntax error - can't find = in {go_quote(word)}. Must be of the form: name=value",
                    hint=f'quote values that contain blanks: {keyword} name="two words"',
                )
            out += (key, value, "=")
        return tuple(out), False

    return parse


def _healthcheck(rest: str, escape: str) -> Arguments:
    # BuildKit finds the type word by testing single bytes for blanks.
    raw = rest if rest.isascii() else rest.encode("utf-8").decode("latin-1")
    sep = 0
    while sep < len(raw) and raw[sep] not in _BYTE_SPACE:
        sep += 1
    if sep == 0:
        return _NO_ARGS
    nxt = sep
    while nxt < len(raw) and raw[nxt] in _BYTE_SPACE:
        nxt += 1
    kind, tail = raw[:sep], raw[nxt:]
    if raw is not rest:
        kind = kind.encode("latin-1").decode("utf-8", "replace")
        tail = tail.encode("latin-1").decode("utf-8", "replace")
    command, is_json = _maybe_json(tail, escape)
    return (kind, *command), is_json


_DISPATCH = {
    "add": _maybe_json_list,
    "arg": _name_or_name_value,
    "cmd": _maybe_json,
    "copy": _maybe_json_list,
    "entrypoint": _maybe_json,
    "env": _name_value("ENV"),
    "expose": _whitespace_list,
    "from": _whitespace_list,
    "healthcheck": _healthcheck,
    "label": _name_value("LABEL"),
    "maintainer": _single_string,
    "run": _maybe_json,
    "shell": _maybe_json,
    "stopsignal": _single_string,
    "user": _single_string,
    "volume": _maybe_json_list,
    "workdir": _single_string,
}

INSTRUCTIONS = frozenset(_DISPATCH) | {"onbuild"}


def dispatch(keyword: str, rest: str, escape: str) -> Arguments:
    """Split `rest` the way BuildKit splits arguments of instruction `keyword`.

    Unknown words keep a single empty argument; ONBUILD is handled by the
    caller, which parses its rest as a whole instruction.
    """
    return _DISPATCH.get(keyword.lower(), _ignore)(rest, escape)


def go_quote(s: str) -> str:
    """`s` as Go's strconv.Quote writes it (BuildKit's dump format)."""
    if s.isascii() and s.isprintable() and '"' not in s and "\\" not in s:
        return f'"{s}"'
    out = ['"']
    for ch in s:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        elif ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}
