"""Dockerfile variable substitution and word splitting, as BuildKit's shell lexer does it.

Expands `$VAR` and the `${VAR...}` forms, removes quotes and escapes, and splits words
after expansion, reproducing BuildKit's ProcessWord/ProcessWords, quirks included. It is
not a shell: no command substitution, arithmetic, globbing, `${#VAR}` or `${VAR:1:2}`.
"""

from __future__ import annotations

import re

from .blanks import GO_SPACE
from .errors import ExpansionError
from .record import record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["ShellLexer"]

_MAX_DEPTH = 64
_SPECIAL_PARAMS = frozenset("@*#?-$!")  # and $0, which is read as a run of digits

_BLANKS = re.compile(f"[{GO_SPACE}]+")
_FIELDS = re.compile(f"[^{GO_SPACE}]+")
_NEEDS_LEXING = {"\\": re.compile(r"[$'\"\\]|^\ufeff"), "`": re.compile(r"[$'\"`]|^\ufeff")}
_NEEDS_SPLITTING = {esc: re.compile(f"{regex.pattern}|<<[ \t\r]") for esc, regex in _NEEDS_LEXING.items()}
_MISSING_BRACE = "syntax error: missing '}'"


def _is_name_char(ch: str) -> bool:
    # Go's unicode.IsLetter / IsDigit: letters (L*) and decimal digits (Nd), nothing else numeric.
    return ch.isalpha() or ch.isdecimal() or ch == "_"


@record
class ShellLexer:
    """BuildKit's `shell.Lex`; `escape` is the Dockerfile escape character, `\\` or `` ` ``.

    raw_quotes keeps quote characters in the output, raw_escapes keeps the escape
    character, skip_unset leaves references to unset variables as written, and
    skip_quotes makes quotes ordinary characters.
    """

    escape: str = "\\"
    raw_quotes: bool = False
    raw_escapes: bool = False
    skip_unset: bool = False
    skip_quotes: bool = False

    def expand(self, word: str, env: Mapping[str, str]) -> str:
        """`word` with variables substituted and quotes and escapes removed."""
        return self.expand_tracking(word, env)[0]

    def expand_tracking(self, word: str, env: Mapping[str, str]) -> tuple[str, frozenset[str], frozenset[str]]:
        """`expand`, plus the names found in `env` and the names looked up but unset."""
        if not _pattern(_NEEDS_LEXING, self.escape).search(word):
            return word, frozenset(), frozenset()
        run = _Run(self, word, env)
        result = run.word("", self.raw_escapes)[0]
        return result, frozenset(run.found), frozenset(run.unset)

    def split(self, text: str, env: Mapping[str, str]) -> list[str]:
        """`text` expanded and cut into words; unquoted expansion results split on blanks."""
        if not _pattern(_NEEDS_SPLITTING, self.escape).search(text):
            return _FIELDS.findall(text)
        return _Run(self, text, env).word("", self.raw_escapes)[1]


def _pattern(patterns: dict[str, re.Pattern[str]], escape: str) -> re.Pattern[str]:
    try:
        return patterns[escape]
    except KeyError:
        raise ValueError(f"escape must be '\\' or '`', not {escape!r}") from None


class _Run:
    """One expansion in progress: input position, names looked up, the word being built."""

    __slots__ = ("lex", "text", "pos", "env", "found", "unset", "depth")

    def __init__(self, lex: ShellLexer, text: str, env: Mapping[str, str]) -> None:
        self.lex, self.text, self.env, self.depth = lex, text, env, 0
        self.pos = 1 if text.startswith("\ufeff") else 0  # Go's text/scanner skips a leading BOM
        self.found: set[str] = set()
        self.unset: set[str] = set()

    def peek(self) -> str:
        return self.text[self.pos : self.pos + 1]

    def next(self) -> str:
        ch = self.text[self.pos : self.pos + 1]
        self.pos += len(ch)
        return ch

    def word(self, stop: str, raw: bool) -> tuple[str, list[str]]:
        """Read up to `stop` ("" = end of input): the expanded text, and its words."""
        esc, quotes = self.lex.escape, not self.lex.skip_quotes
        plain = _plain_run(esc, quotes, stop)
        text = self.text
        out: list[str] = []
        words: list[str] = []
        word: list[str] = []  # the word being built, in pieces
        while True:
            run = plain.match(text, self.pos)
            if run is not None:  # ordinary characters: take them in one piece
                self.pos = run.end()
                out.append(run.group())
                _add(words, word, run.group(), True)
                continue
            if (ch := self.next()) == stop:
                break
            if not ch:
                raise ExpansionError(f"unexpected end of statement while looking for matching {stop}")
            if ch == "$":
                piece, split = self.dollar(), True
            elif quotes and ch in "'\"":
                piece, split = self.single() if ch == "'" else self.double(raw), False
            elif ch == esc:  # the next character is literal; a lone escape at the end vanishes
                piece, split = (ch if raw else "") + self.next(), False
            elif ch == "<" and self.peek() == "<":  # heredoc start: `<< EOF` stays one word
                piece, split = "<" + self.next(), False
                while self.peek() in (" ", "\t", "\r"):
                    piece += self.next()
            else:
                piece, split = ch, True
            out.append(piece)
            _add(words, word, piece, split)
        _add(words, word, " ", True)  # reaching `stop` ends the last word too
        return "".join(out), words

    def single(self) -> str:
        start, end = self.pos - 1, self.text.find("'", self.pos)
        if end < 0:
            self.pos = len(self.text)  # BuildKit has read to the end, and nested() checks that
            raise ExpansionError("unexpected end of statement while looking for matching single-quote")
        self.pos = end + 1
        return self.text[start : end + 1] if self.lex.raw_quotes else self.text[start + 1 : end]

    def double(self, raw: bool) -> str:
        esc, keep = self.lex.escape, self.lex.raw_quotes
        out = ['"'] if keep else []
        while (ch := self.next()) != '"':
            if not ch:
                raise ExpansionError("unexpected end of statement while looking for matching double-quote")
            if ch == "$":
                ch = self.dollar()
            elif ch == esc:
                if raw:  # then written again below if it escapes nothing, as BuildKit does
                    out.append(ch)
                if self.peek() in ('"', "$", esc):
                    ch = self.next()
            out.append(ch)
        return "".join(out) + ('"' if keep else "")

    def name(self) -> str:
        start, ch = self.pos, self.peek()
        if ch in _SPECIAL_PARAMS:
            self.pos += 1
        elif ch.isdecimal():  # positional parameters: digits only, so $1x is $1 then x
            while self.peek().isdecimal():
                self.pos += 1
        else:
            while self.pos < len(self.text) and _is_name_char(self.text[self.pos]):
                self.pos += 1
        return self.text[start : self.pos]

    def lookup(self, name: str) -> tuple[str, bool]:
        is_set = name in self.env
        (self.found if is_set else self.unset).add(name)
        return (self.env[name] if is_set else ""), is_set

    def nested(self, stop: str, raw: bool, missing: str) -> str:
        if self.depth >= _MAX_DEPTH:  # bounds the recursion on hostile input
            raise ExpansionError("variable substitution nested too deeply")
        self.depth += 1
        try:
            return self.word(stop, raw)[0]
        except ExpansionError:
            if self.pos >= len(self.text):
                raise ExpansionError(missing) from None
            raise
        finally:
            self.depth -= 1

    def dollar(self) -> str:
        skip = self.lex.skip_unset
        if self.peek() != "{":
            name = self.name()
            if not name:
                return "$"
            value, is_set = self.lookup(name)
            return "$" + name if skip and not is_set else value
        self.pos += 1
        if self.peek() in ("{", "}", ":"):
            raise ExpansionError("syntax error: bad substitution")
        name = self.name()
        op = mod = self.next()
        if not op:  # BuildKit reports "unsupported modifier (\ufffd)" here
            raise ExpansionError(_MISSING_BRACE)
        if op == "}":
            value, is_set = self.lookup(name)
            return f"${{{name}}}" if skip and not is_set else value
        if op == "/":
            return self.replace(name)
        colon = op == ":"
        if colon:
            op = self.next()
            mod += op or "\ufffd"
        pattern = op in ("#", "%")
        if (colon and pattern) or mod[0] not in ":+-?#%":
            raise ExpansionError(f"unsupported modifier ({mod}) in substitution")
        word = self.nested("}", pattern, _MISSING_BRACE)
        value, is_set = self.lookup(name)
        if skip and not is_set:
            return f"${{{name}{mod}{word}}}"
        empty = not is_set or (colon and not value)
        if op == "-":
            return word if empty else value
        if op == "+":
            return "" if empty else word
        if op == "?":
            if empty:
                reason = "is not allowed to be " + ("empty" if is_set else "unset")
                raise ExpansionError(f"{name}: {word or reason}")
            return value
        if pattern:
            greedy = word.startswith(op)
            return _trim(word[greedy:], value, greedy, suffix=op == "%")
        raise ExpansionError(f"unsupported modifier ({mod}) in substitution")

    def replace(self, name: str) -> str:
        every = self.peek() == "/"
        self.pos += every
        pattern = self.nested("/", True, "syntax error: missing '/' in ${}")
        replacement = self.nested("}", True, _MISSING_BRACE)
        value, is_set = self.lookup(name)
        if self.lex.skip_unset and not is_set:
            return f"${{{name}/{pattern}/{replacement}}}"  # one '/' even for '//', as BuildKit
        glob = _Glob(pattern)
        if not every:
            found = glob.search(value, 0)
            return value if found is None else value[: found[0]] + replacement + value[found[1] :]
        out, last, pos = [], 0, 0
        while pos <= len(value) and (found := glob.search(value, pos)) is not None:
            start, end = found
            out.append(value[last:start])
            if end > last or start == 0:  # Go skips an empty match right after a match
                out.append(_go_template(replacement, value[start:end]))
            last, pos = end, end if end > pos else pos + 1
        return "".join(out) + value[last:]


_PLAIN_RUNS: dict[tuple[str, bool, str], re.Pattern[str]] = {}


def _plain_run(escape: str, quotes: bool, stop: str) -> re.Pattern[str]:
    """A run of characters that need no special handling before `stop`."""
    key = (escape, quotes, stop)
    pattern = _PLAIN_RUNS.get(key)
    if pattern is None:
        special = "$<" + escape + stop + ("'\"" if quotes else "")
        pattern = _PLAIN_RUNS[key] = re.compile("[^" + re.escape(special) + "]+")
    return pattern


def _add(words: list[str], word: list[str], piece: str, split: bool) -> None:
    """BuildKit's word building: unquoted blanks end a word, and no word is empty."""
    first, *rest = _BLANKS.split(piece) if split else (piece,)
    word.extend((first,) if first else ())
    for field in rest:  # each blank run ends the current word, if there is one
        if word:
            words.append("".join(word))
            word.clear()
        word.extend((field,) if field else ())


def _go_template(template: str, match: str) -> str:
    # Go's ReplaceAllString reads $0 / ${0} as the match, $$ as $ and other names as ""
    # (the pattern has no groups); a malformed reference keeps its '$'.
    out, i = [], 0
    while (j := template.find("$", i)) >= 0:
        out.append(template[i:j])
        i = j + 1
        if template.startswith("$", i):
            out.append("$")
            i += 1
            continue
        brace = template.startswith("{", i)
        end = start = i + brace
        while end < len(template) and _is_name_char(template[end]):
            end += 1
        if end == start or (brace and not template.startswith("}", end)):
            out.append("$")
            continue
        out.append(match if template[start:end] == "0" else "")
        i = end + brace
    return "".join(out) + template[i:]


def _trim(pattern: str, value: str, greedy: bool, suffix: bool) -> str:
    if suffix:  # BuildKit trims a suffix as a prefix of the reversed value and pattern
        pattern, value = "".join(reversed(re.findall(r"\\.|.", pattern, re.DOTALL))), value[::-1]
    glob = _Glob(pattern)
    found = (glob.greedy if greedy else glob.lazy).match(value)
    value = value[found.end() :] if found else value
    return value[::-1] if suffix else value


class _Glob:
    """A BuildKit pattern (`*`, `?`, literals, `\\` escaping `*`, `?` or `\\`) as regexes.

    BuildKit compiles it to a Go regexp: leftmost-first, `*` and `?` never match a newline,
    and all `*` greedy or all lazy. A backtracking engine finds the same match if each `*`
    but the last commits (atomic group) to the earliest place where the text after it
    matches, which leaves the most room for the rest. Only the last `*` may backtrack, so
    matching stays linear where the plain translation can take exponential time.
    """

    __slots__ = ("first", "first_has_newline", "greedy", "lazy")

    def __init__(self, pattern: str) -> None:
        parts: list[list[str | None]] = [[]]  # runs between stars: characters, None for '?'
        i, text = 0, pattern.removeprefix("\ufeff")  # Go's text/scanner drops it here too
        while i < len(text):
            ch, i = text[i], i + 1
            if ch == "\\" and text[i : i + 1] in ("}", "/"):
                continue  # an escaped '}' or '/' only protects the ${} syntax
            if ch == "\\":
                ch, i = text[i : i + 1], i + 1
                if ch not in ("*", "?", "\\"):
                    bad = ch or "\ufffd"  # what Go prints for "no character"
                    message = f"invalid pattern ({pattern}) in substitution: invalid escape '\\{bad}'"
                    raise ExpansionError(message)
                parts[-1].append(ch)
            elif ch == "*":
                parts.append([])
            else:
                parts[-1].append(None if ch == "?" else ch)
        first, *middle = ["".join("[^\n]" if c is None else re.escape(c) for c in part) for part in parts]
        self.first, self.first_has_newline = re.compile(first), "\n" in parts[0]
        self.greedy = self.lazy = self.first
        if middle:
            head = first + "".join(f"(?>[^\n]*?{segment})" for segment in middle[:-1])
            self.greedy = re.compile(f"{head}[^\n]*{middle[-1]}")
            self.lazy = re.compile(f"{head}[^\n]*?{middle[-1]}")

    def search(self, text: str, pos: int) -> tuple[int, int] | None:
        """(start, end) of the leftmost greedy match at or after `pos`, or None."""
        while pos <= len(text) and (candidate := self.first.search(text, pos)):
            if found := self.greedy.match(text, candidate.start()):
                return found.span()
            if self.first_has_newline:
                pos = candidate.start() + 1
            elif (pos := text.find("\n", candidate.start()) + 1) == 0:  # the rest of its line fails too
                return None
        return None
