"""Docker's ignore files (.dockerignore) and the path patterns they are written in.

Vocabulary
----------
rel
    A path inside the build context, relative to its root: slash-separated,
    clean, no leading `./` or `/` (`src/app/main.go`). The root itself is
    `""` and is never excluded.
rule
    One line of an ignore file (`IgnoreRule`): a cleaned pattern, whether it
    is an exception (`!pattern`), and where it came from (`origin`, `line`),
    so that errors can say which line hid a file.
exclusion, exception
    A plain rule excludes the paths it matches; an exception (`!`) includes
    them again. The *last* rule that matches a path decides, so order
    matters: `*.md` then `!README.md` keeps README.md; the other way round
    it is excluded.
parent matching
    A rule that matches a directory matches everything beneath it: `build`
    excludes `build/out/app.o`, `*.log` excludes `old.log/notes.txt`.

Pattern syntax
--------------
Go's `filepath.Match` per path, as Docker (moby/patternmatcher) reads it:
`*` any run of characters except `/`; `?` one character except `/`;
`[a-c]`, `[^a-c]` a character class (only `^` negates: `[!a]` is the class
of `!` and `a`, as in Go); `\\x` the character `x`. On top of that `**`
matches any number of directories, zero included: `**/*.go` matches
`main.go` and `cmd/tool/main.go`; `a/**/b` matches `a/b` and `a/x/y/b`; a
trailing `dir/**` matches everything below `dir`.

A file is read the way moby's `ignorefile.ReadAll` reads it: a UTF-8 BOM is
dropped, a line starting with `#` (in column 1) is a comment, surrounding
whitespace is trimmed, blank lines are skipped, `!` marks an exception, the
pattern is `filepath.Clean`ed and one leading `/` is removed (`/abs` and
`abs` are the same rule). Patterns that clean to `.` or `/` match nothing,
because the root is never excluded. A malformed pattern (`[a-`, a trailing
`\\`, a reversed range `[z-a]`) is a `ContextError` naming `origin:line`.

Example
-------
    >>> rules = IgnoreRules.parse("# build output\\n*.log\\nbuild/\\n!build/keep.txt\\n", ".dockerignore")
    >>> str(rules.excluded_by("app.log"))
    '.dockerignore:2 (*.log)'
    >>> rules.excluded_by("build/keep.txt") is None
    True
    >>> rules.may_reinclude_below("build"), rules.may_reinclude_below("logs")
    (True, False)

`may_reinclude_below` is what lets a walk skip an excluded directory without
opening it. It answers BuildKit's way (tonistiigi/fsutil's
`onlyPrefixExcludeExceptions`): when some exception has a wildcard before its
last path element, any excluded directory may hold a re-included file and
must be walked; otherwise only directories that an exception's path starts
with must be.

`glob_matcher` is plain `filepath.Match` (no `**`), for COPY source wildcards.
"""

from __future__ import annotations

import functools
import posixpath
import re
from typing import TYPE_CHECKING

from builder.errors import ContextError
from grammar.record import record

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = ["IgnoreRule", "IgnoreRules", "glob_matcher"]

# Go's strings.TrimSpace (unicode.IsSpace), which is narrower than str.strip().
_GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
# fsutil's patternChars: an exception holding one of these (before a trailing
# /** or /*) may match below any directory.
_WILD_EXCEPTION = frozenset("*[]?^\\")
_MAGIC = frozenset("*?[]\\")


@record
class IgnoreRule:
    """One pattern of an ignore file; `str()` is `origin:line (pattern)`."""

    pattern: str
    negated: bool
    origin: str
    line: int

    def __str__(self) -> str:
        return f"{self.origin}:{self.line} ({'!' if self.negated else ''}{self.pattern})"

    def matches(self, rel: str) -> bool:
        """Whether the pattern matches `rel` itself (parents are the caller's business)."""
        return _matcher(self.pattern)(rel)


@record
class IgnoreRules:
    """The rules of one ignore file (or one COPY's --exclude flags), in order."""

    rules: tuple[IgnoreRule, ...] = ()

    @classmethod
    def parse(cls, text: str, origin: str) -> IgnoreRules:
        """Rules from the text of an ignore file named `origin` (moby's ReadAll)."""
        lines = text.split("\n")
        lines[0] = lines[0].removeprefix("\ufeff")
        rules = []
        for number, line in enumerate(lines, 1):
            if line.startswith("#"):
                continue
            pattern = line.strip(_GO_SPACE)
            if pattern:
                rules.append(_rule(pattern, origin, number))
        return cls(tuple(rules))

    @classmethod
    def from_patterns(cls, patterns: Iterable[str], origin: str = "--exclude") -> IgnoreRules:
        """Rules from a list of patterns (no comments); `line` is the 1-based position."""
        rules = []
        for number, raw in enumerate(patterns, 1):
            pattern = raw.strip(_GO_SPACE)
            if pattern:
                rules.append(_rule(pattern, origin, number))
        return cls(tuple(rules))

    def excluded_by(self, rel: str) -> IgnoreRule | None:
        """The rule that excludes `rel`, or None when `rel` is included.

        `rel` is excluded when the last rule matching it or one of its
        parent directories is not an exception; that rule is returned.
        """
        if rel in ("", "."):
            return None
        parents = []
        cut = rel.find("/")
        while cut != -1:
            parents.append(rel[:cut])
            cut = rel.find("/", cut + 1)
        deciding = None
        for rule in self.rules:
            if rule.matches(rel) or any(rule.matches(parent) for parent in parents):
                deciding = None if rule.negated else rule
        return deciding

    def may_reinclude_below(self, rel_dir: str) -> bool:
        """Whether an exception could include something beneath the directory `rel_dir`."""
        exceptions = [rule.pattern for rule in self.rules if rule.negated]
        if not exceptions:
            return False
        stems = [pattern.removesuffix("/**").removesuffix("/*") for pattern in exceptions]
        if any(_WILD_EXCEPTION.intersection(stem) for stem in stems):
            return True
        prefix = f"{rel_dir}/" if rel_dir else ""
        return any(f"{stem}/".startswith(prefix) for stem in stems)


def glob_matcher(pattern: str) -> Callable[[str], bool]:
    """A predicate for Go's `filepath.Match(pattern, name)`; ValueError if malformed."""
    if not _MAGIC.intersection(pattern):
        return pattern.__eq__
    return _compiled(_translate(pattern, double_star=False))


# --------------------------------------------------------------------------- internals


def _rule(pattern: str, origin: str, line: int) -> IgnoreRule:
    negated = pattern.startswith("!")
    if negated:
        pattern = pattern[1:].strip(_GO_SPACE)
        if not pattern:
            raise ContextError(f'{origin}:{line}: illegal exclusion pattern "!"')
    pattern = _go_clean(pattern)
    if len(pattern) > 1 and pattern.startswith("/"):
        pattern = pattern[1:]
    try:
        _matcher(pattern)
    except ValueError as exc:
        raise ContextError(f"{origin}:{line}: malformed pattern {_shown(pattern)}: {exc}") from None
    return IgnoreRule(pattern, negated, origin, line)


@functools.lru_cache(maxsize=4096)  # bounded: a build script may build many contexts in one process
def _matcher(pattern: str) -> Callable[[str], bool]:
    return _dockerignore_matcher(pattern)


def _go_clean(path: str) -> str:
    # Go's filepath.Clean, except that POSIX normpath keeps a leading "//".
    cleaned = posixpath.normpath(path)
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    return cleaned


def _dockerignore_matcher(pattern: str) -> Callable[[str], bool]:
    if not _MAGIC.intersection(pattern):
        return pattern.__eq__
    rest = pattern[2:]
    if pattern.startswith("**") and not _MAGIC.intersection(rest):
        # moby's "suffix match": a leading ** before a literal tail is a
        # plain string suffix test (so `**foo` matches `barfoo`), and
        # `**/foo` also matches `foo` at the root.
        if rest.startswith("/"):
            return lambda rel: rel.endswith(rest) or rel == rest[1:]
        return lambda rel: rel.endswith(rest)
    return _compiled(_translate(pattern, double_star=True))


def _compiled(regex: str) -> Callable[[str], bool]:
    fullmatch = re.compile(regex, re.DOTALL).fullmatch
    return lambda rel: fullmatch(rel) is not None


def _translate(pattern: str, *, double_star: bool) -> str:
    out = []
    i, n = 0, len(pattern)
    while i < n:
        char = pattern[i]
        if char == "*":
            if double_star and pattern.startswith("**", i):
                i += 2
                if pattern.startswith("/", i):
                    i += 1
                out.append(".*" if i == n else "(?:.*/)?")
                continue
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "\\":
            if i + 1 == n:
                raise ValueError("trailing backslash")
            i += 1
            out.append(re.escape(pattern[i]))
        elif char == "[":
            regex, i = _character_class(pattern, i)
            out.append(regex)
            continue
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out)


def _character_class(pattern: str, start: int) -> tuple[str, int]:
    # Go's grammar: '[' [ '^' ] { lo [ '-' hi ] } ']', at least one range,
    # where '-' and ']' must be escaped to stand for themselves.
    i = start + 1
    negated = pattern.startswith("^", i)
    if negated:
        i += 1
    ranges = []
    while True:
        if i >= len(pattern):
            raise ValueError("unterminated character class")
        if pattern[i] == "]" and ranges:
            i += 1
            break
        lo, i = _class_char(pattern, i)
        hi = lo
        if pattern.startswith("-", i):
            hi, i = _class_char(pattern, i + 1)
            if hi < lo:
                raise ValueError(f"character range {lo}-{hi} is out of order")
        ranges.append(re.escape(lo) if lo == hi else f"{re.escape(lo)}-{re.escape(hi)}")
    return f"[{'^' if negated else ''}{''.join(ranges)}]", i


def _class_char(pattern: str, i: int) -> tuple[str, int]:
    if i >= len(pattern):
        raise ValueError("unterminated character class")
    char = pattern[i]
    if char == "\\":
        if i + 1 >= len(pattern):
            raise ValueError("trailing backslash")
        return pattern[i + 1], i + 2
    if char in "-]":
        raise ValueError(f"unexpected {char!r} in character class")
    return char, i + 1


def _shown(text: str) -> str:
    return repr(text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"))
