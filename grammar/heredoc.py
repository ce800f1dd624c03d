"""Which `<<WORD` words of an instruction line open here-documents.

BuildKit's rule (`heredocsFromLine`): lex the line into words with quotes and
escapes kept and unset variables left as written; each word of the form
`[fd]<<[-]NAME` opens a heredoc whose delimiter is NAME lexed once more, and
whose body is not expanded when any part of NAME was quoted. Lines without
`$` or `\\` take a regular-expression path that gives the same words; the
rest go through the shell lexer. Bodies are the lexer's business.
"""

from __future__ import annotations

import re
from functools import lru_cache

from .blanks import GO_SPACE
from .errors import ExpansionError, RecipeSyntaxError
from .syntax import Heredoc

__all__ = ["heredocs_in"]

_MAX_FD = 2**64 - 1
_HEREDOC_WORD = re.compile(r"(\d*)<<(-?)([^<]*)", re.ASCII)
_SPACE = "".join(f"\\u{ord(c):04x}" for c in GO_SPACE)
# A word of the shell lexer's raw mode, for text without `$` and `\`: quotes
# kept and atomic, and `<<` keeps the blanks after it (BuildKit 0.22+).
_QUOTED = re.compile(r"'([^']*)'|\"([^\"]*)\"")



@lru_cache(maxsize=1)  # compiled on first use: most recipes have no heredoc
def _unquoted_heredoc() -> re.Pattern[str]:
    """In a line without quotes, and without blanks after a `<<` to join words,
    a heredoc word is a whole blank-delimited word matching _HEREDOC_WORD:
    found in one pass, without splitting the line."""
    return re.compile(rf"(?<![^{_SPACE}])(\d*+)<<(-?)([^{_SPACE}<]*+)(?![^{_SPACE}])")


@lru_cache(maxsize=1)
def _raw_patterns() -> tuple[re.Pattern[str], re.Pattern[str]]:
    """(one word, a whole line of words), possessive so a failed match cannot
    backtrack exponentially."""
    word = rf"(?:[^{_SPACE}'\"<]++|<<[ \t\r]*+|<|'[^']*+'|\"[^\"]*+\")++"
    return re.compile(word), re.compile(rf"[{_SPACE}]*+(?:{word}[{_SPACE}]*+)*+")


def heredocs_in(line: str) -> list[Heredoc]:
    """The heredocs `line` opens, in order, with empty bodies.

    RecipeSyntaxError (without location) where BuildKit fails on a delimiter.
    """
    if "$" in line or "\\" in line or "\ufeff" in line:
        matches = [_HEREDOC_WORD.fullmatch(word) for word in _lexed_words(line) if "<<" in word]
    elif "'" not in line and '"' not in line and "<< " not in line and "<<\t" not in line and "<<\r" not in line:
        matches = _unquoted_heredoc().findall(line)  # the usual line: one pass, no quotes to pair
    else:
        raw_word, raw_line = _raw_patterns()
        if not raw_line.fullmatch(line):
            return []  # an unterminated quote: BuildKit ignores the line
        matches = [_HEREDOC_WORD.fullmatch(word) for word in raw_word.findall(line) if "<<" in word]
    docs = []
    new = tuple.__new__
    for m in matches:
        if m is None:
            continue
        digits, dash, rest = m if type(m) is tuple else m.groups()
        if not rest:
            continue
        delimiter = _delimiter(rest)
        if delimiter is None:
            continue
        digits = digits.lstrip("0")
        fd = min(int(digits), _MAX_FD) if 0 < len(digits) <= 20 else _MAX_FD if digits else 0
        docs.append(new(Heredoc, (delimiter[0], fd, delimiter[1], dash == "-", "")))  # no namedtuple __new__: hot
    return docs


def _lexed_words(line: str) -> list[str]:
    from .shell import ShellLexer

    try:
        # BuildKit lexes heredoc words with `\`, whatever the escape directive.
        return ShellLexer("\\", raw_quotes=True, raw_escapes=True, skip_unset=True).split(line, {})
    except ExpansionError:
        return []  # BuildKit ignores a line it cannot lex here


@lru_cache(maxsize=256)
def _delimiter(rest: str) -> tuple[str, bool] | None:
    """(name, expand) of the heredoc word's tail, or None when it is not one word."""
    if "$" not in rest and "\\" not in rest and "\ufeff" not in rest:
        text = rest.lstrip(" \t\r")
        name = _QUOTED.sub(lambda m: m.group(1) if m.group(1) is not None else m.group(2), text)
        if not name:
            return None  # the lexer makes no word of nothing, even quoted nothing
        return name, _quote_count(name) == _quote_count(text)
    from .shell import ShellLexer

    try:
        names = ShellLexer("\\", skip_unset=True).split(rest, {})
        if len(names) != 1:
            return None
        raw = ShellLexer("\\", raw_quotes=True, skip_unset=True).split(rest, {})
    except ExpansionError as exc:
        raise RecipeSyntaxError(exc.message) from None
    if len(raw) != 1:
        raise RecipeSyntaxError(f"internal lexing of heredoc produced inconsistent results: {rest}")
    return names[0], _quote_count(names[0]) == _quote_count(raw[0])


def _quote_count(text: str) -> int:
    return text.count("'") + text.count('"')
