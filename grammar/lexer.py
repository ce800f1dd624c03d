"""The recipe lexer: physical lines to the tokens of recipe.lark.

This is BuildKit's line scanner (`parser.Parse`) turned into a token stream:
parser directives, comments, line continuations with the escape character,
CRLF, the byte-order mark, heredoc bodies and BuildKit's 64 KiB line limit.
It decides nothing about what an instruction means.
"""

from __future__ import annotations

import re

from .arguments import split_command
from .blanks import GO_SPACE
from .jsonarray import parse_json_array
from .errors import RecipeSyntaxError
from .heredoc import heredocs_in
from .record import record
from .source import Span

from .syntax import Heredoc

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["MAX_LINE_BYTES", "Token", "tokenize"]

MAX_LINE_BYTES = 65535  # bufio.Scanner's limit as BuildKit uses it, newline excluded

_KEYWORDS = {
    word: word.upper()
    for word in (
        "from arg run copy add workdir cmd entrypoint shell env label maintainer "
        "expose volume user stopsignal healthcheck onbuild"
    ).split()
}
_VALID_DIRECTIVES = frozenset({"syntax", "escape", "check"})
_DIRECTIVE = re.compile(r"([a-zA-Z][a-zA-Z0-9]*)[\t\n\f\r ]*=[\t\n\f\r ]*(.+?)[\t\n\f\r ]*")
_HEREDOC_TARGETS = frozenset({"run", "copy", "add"})
# An instruction word, ASCII blanks, then arguments that are not flags (nor,
# checked after the match, blank): what split_command would find, in one match.
_PLAIN_LINE = re.compile(r"([A-Za-z]+)[\t\v\f\r ]+(?!--)")
_PLAIN_KINDS = {kind: (kind, "ARGS", "EOL") for kind in (*_KEYWORDS.values(), "UNKNOWN")}
_PLAIN_HEREDOC_KINDS = {kind: (kind, "ARGS", "HEREDOCS", "EOL") for kind in (*_KEYWORDS.values(), "UNKNOWN")}
_DIRECTIVE_KINDS = ("DIRECTIVE",)


@record
class Token:
    """One token for the recipe.lark parser; 1-based positions.

    `data` carries what a string cannot: the escape character on EOL, the
    `Heredoc`s on HEREDOCS.
    """

    type: str
    value: str
    line: int
    column: int
    end_line: int
    end_column: int
    data: object = None


def _error(message: str, line: int, end_line: int | None = None, hint: str | None = None) -> RecipeSyntaxError:
    # The file name is filled in by grammar.parser once the error surfaces.
    return RecipeSyntaxError(message, Span("", line, 1, end_line or line, 1 << 30), hint=hint)


def tokenize(text: str) -> Iterator[tuple[tuple[str, ...], list[Token]]]:
    """The recipe.lark tokens of one recipe (BOM already removed), one batch per line: (kinds, tokens).

    A batch holds a directive, or one instruction's tokens up to its EOL;
    `kinds` are the tokens' types, which the parser plans by. The parser
    reduces each instruction before asking for the next batch, so errors come
    in line order, as BuildKit reports them.
    """
    return _Scan(text).batches()


class _Scan:
    """One pass over one recipe's physical lines."""

    def __init__(self, text: str) -> None:
        lines = text.split("\n")
        if lines[-1] == "":
            lines.pop()  # the text ended with a newline
        self.too_long_at = 0
        # A character is at most 4 bytes: only long lines need encoding.
        if lines and max(map(len, lines)) > MAX_LINE_BYTES // 4:
            for index, line in enumerate(lines):
                if len(line) > MAX_LINE_BYTES // 4 and len(line.encode("utf-8", "surrogatepass")) > MAX_LINE_BYTES:
                    self.too_long_at = index + 1
                    del lines[index:]
                    break
        self.lines = lines
        self.has_cr = "\r" in text
        self.escape = "\\"

    def batches(self) -> Iterator[tuple[tuple[str, ...], list[Token]]]:
        lines = self.lines
        count = len(lines)
        i = 0
        directives_done = False
        seen: set[str] = set()
        instructions = 0
        cr = self.has_cr
        escape = self.escape
        while i < count:
            raw = lines[i]
            i += 1
            token = (raw.rstrip("\r") if cr else raw).lstrip(GO_SPACE)
            if not directives_done:
                found = self._directive(token, i, seen)
                if found is None:
                    directives_done = True
                else:
                    yield _DIRECTIVE_KINDS, [Token("DIRECTIVE", found, i, 1, i, len(raw))]
                    escape = self.escape
            if not token or token[0] == "#":
                continue
            start = i
            segments = [(0, i, len(raw) - len(token) - (len(raw) - len(raw.rstrip("\r")) if cr else 0) + 1)]
            if token[-1] in " \t" or token[-1] == escape:
                line, more = self._continued(token)
                if more:
                    line, i = self._join(line, i, segments)
            else:  # the usual last character: no continuation
                line = token
            batch: list[Token] = []
            word, rest, plain = self._instruction(line, segments, batch)
            kinds = _PLAIN_KINDS.get(batch[0][0]) if plain else None
            original = line
            if "<<" in line and word in _HEREDOC_TARGETS and not _is_json(word, rest):
                try:
                    heredocs = heredocs_in(line)
                except RecipeSyntaxError as exc:
                    raise exc.with_span(Span("", start, 1, i, 1 << 30)) from None
                if heredocs:
                    first = i + 1
                    i, bodies = self._heredoc_bodies(heredocs, i, start)
                    texts = "".join([f"{h.content}{h.name}\n" for h in bodies])
                    original = line + "\n" + texts
                    batch.append(tuple.__new__(Token, ("HEREDOCS", texts, first, 1, i, 1, bodies)))
                    kinds = _PLAIN_HEREDOC_KINDS.get(batch[0][0]) if plain else None
            batch.append(tuple.__new__(Token, ("EOL", original, start, 1, i, 1, self.escape)))
            yield kinds or tuple([token[0] for token in batch]), batch
            instructions += 1
        if instructions == 0:
            raise _error("file with no instructions", max(count, 1), hint="a recipe starts with FROM IMAGE")
        if self.too_long_at:
            raise _error(f"dockerfile line greater than max allowed size of {MAX_LINE_BYTES}", self.too_long_at)

    def _join(self, line: str, i: int, segments: list[tuple[int, int, int]]) -> tuple[str, int]:
        """The logical line continued from `line` over the lines from index `i` on,
        and the index after it; records where each piece came from in `segments`."""
        lines, count = self.lines, len(self.lines)
        parts = [line]
        size = len(line)
        more = True
        while more and i < count:
            raw = lines[i]
            i += 1
            if raw.lstrip(GO_SPACE)[:1] == "#":
                continue  # comment lines vanish inside a continuation
            piece = raw.rstrip("\r")
            if not piece.strip(GO_SPACE):
                continue  # so do blank ones (BuildKit warns)
            piece, more = self._continued(piece)
            segments.append((size, i, 1))
            parts.append(piece)
            size += len(piece)
        return "".join(parts), i

    def _continued(self, line: str) -> tuple[str, bool]:
        """Strip a trailing continuation character; True when the line continues."""
        escape = self.escape
        stripped = line.rstrip(" \t")
        if stripped[-1:] == escape and (len(stripped) == 1 or stripped[-2] != escape):
            return stripped[:-1], True
        return line, False

    def _directive(self, token: str, line: int, seen: set[str]) -> str | None:
        """`name=value` when `token` is a parser directive, else None (directives end)."""
        if token[:1] != "#":
            return None
        m = _DIRECTIVE.fullmatch(token[1:].lstrip(GO_SPACE))
        if m is None:
            return None
        name = m.group(1).lower()
        if name not in _VALID_DIRECTIVES:
            return None
        if name in seen:
            raise _error(f"only one {name} parser directive can be used", line)
        seen.add(name)
        value = m.group(2)
        if name == "escape":
            if value not in ("\\", "`"):
                raise _error(f"invalid escape token '{value}' does not match ` or \\", line)
            self.escape = value
        return f"{name}={value}"

    def _instruction(self, line: str, segments: list[tuple[int, int, int]], out: list[Token]) -> tuple[str, str, bool]:
        """Append the tokens of one logical line; return the (word, rest) heredocs would belong to,
        and whether the line was plain (a word and its arguments: tokens of kinds _PLAIN_KINDS)."""
        new = tuple.__new__
        m = _PLAIN_LINE.match(line) if len(segments) == 1 else None
        if m is not None:
            # The usual line: one physical line, a keyword, blanks, arguments and no flags.
            end = m.end()
            word = m.group(1)
            lower = word.lower()
            if lower != "onbuild" and line[end : end + 1] not in GO_SPACE:  # "" too: no arguments
                _, ln, col = segments[0]
                rest = line[end:].rstrip(GO_SPACE)
                out.append(new(Token, (_KEYWORDS.get(lower, "UNKNOWN"), word, ln, col, ln, col + len(word) - 1, None)))
                col += end
                out.append(new(Token, ("ARGS", rest, ln, col, ln, col + len(rest) - 1, None)))
                return lower, rest, True
        base = 0
        levels: list[tuple[str, str]] = []
        # One physical line (the usual case): offsets map to columns directly.
        single = segments[0] if len(segments) == 1 else None
        while True:
            word, word_at, flags, rest, rest_at = split_command(line)
            lower = word.lower()
            levels.append((lower, rest))
            ln, col = (single[1], single[2] + base + word_at) if single else _position(segments, base + word_at)
            # tuple.__new__ skips namedtuple's Python-level __new__: this is the hot path.
            out.append(new(Token, (_KEYWORDS.get(lower, "UNKNOWN"), word, ln, col, ln, col + len(word) - 1, None)))
            for at, flag in flags:
                ln, col = (single[1], single[2] + base + at) if single else _position(segments, base + at)
                out.append(new(Token, ("FLAG", flag, ln, col, ln, col + len(flag) - 1, None)))
            if lower == "onbuild":
                if not rest:
                    break
                line, base = rest, base + rest_at
                continue
            if rest:
                ln, col = (single[1], single[2] + base + rest_at) if single else _position(segments, base + rest_at)
                out.append(new(Token, ("ARGS", rest, ln, col, ln, col + len(rest) - 1, None)))
            break
        # BuildKit looks through one ONBUILD only.
        return (*(levels[1] if levels[0][0] == "onbuild" and len(levels) > 1 else levels[0]), False)

    def _heredoc_bodies(self, heredocs: list[Heredoc], i: int, start: int) -> tuple[int, tuple[Heredoc, ...]]:
        """Read the bodies of `heredocs` from line index `i` on: the index after them,
        and the heredocs with their bodies."""
        bodies = []
        for doc in heredocs:
            end = self._terminator(doc, i)
            if end < 0:
                raise _error(
                    "unterminated heredoc",
                    start,
                    len(self.lines),
                    hint=f"end the here-document with a line that is exactly {doc.name}"
                    + (" (leading tabs allowed with <<-)" if doc.chomp else ""),
                )
            body = self.lines[i:end]
            content = "\n".join(body) + "\n" if body else ""
            full = tuple.__new__(Heredoc, (*doc[:4], content))  # doc with its body; no _replace: hot path
            bodies.append(full)
            i = end + 1
        return i, tuple(bodies)

    def _terminator(self, doc: Heredoc, i: int) -> int:
        """Index of the line that ends heredoc `doc`, searching from `i`; -1 if none."""
        lines = self.lines
        if not doc.chomp and not self.has_cr:
            try:
                return lines.index(doc.name, i)
            except ValueError:
                return -1
        for j in range(i, len(lines)):
            candidate = lines[j].rstrip("\r")
            if doc.chomp:
                candidate = candidate.lstrip("\t")
            if candidate == doc.name:
                return j
        return -1


def _is_json(word: str, rest: str) -> bool:
    if word == "run" and not rest:
        return False
    return parse_json_array(rest) is not None


def _position(segments: list[tuple[int, int, int]], offset: int) -> tuple[int, int]:
    """(line, column) of a logical-line offset, through the physical segments."""
    for start, line, column in reversed(segments):
        if offset >= start:
            return line, column + offset - start
    return segments[0][1], segments[0][2]
