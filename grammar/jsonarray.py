"""JSON arrays in exec-form instructions, read as Go's json.Decoder reads them.

`RUN ["a", "b"]` is exec form only when the text is a JSON array of strings
by Go's rules: one value is read and the rest of the line ignored, NaN and
out-of-range numbers are errors, an unpaired surrogate escape becomes U+FFFD,
nesting deeper than 10,000 is an error. A valid array holding anything but
strings is a syntax error; anything else is simply not exec form.
"""

from __future__ import annotations

import re
from functools import lru_cache

from .blanks import GO_SPACE
from .errors import RecipeSyntaxError

__all__ = ["NOT_STRING_ARRAY", "parse_json_array"]

NOT_STRING_ARRAY = "when using JSON array syntax, arrays must be comprised of strings only"

# Arrays of plain strings (no escapes) are decoded here; anything else goes to
# the json module, which `pybuild parse` would otherwise import for nothing.
_PLAIN_ARRAY = re.compile(
    r'\[[ \t\n\r]*(?:"[^"\\\x00-\x1f]*"(?:[ \t\n\r]*,[ \t\n\r]*"[^"\\\x00-\x1f]*")*[ \t\n\r]*)?\]'
)
_PLAIN_STRING = re.compile(r'"([^"\\\x00-\x1f]*)"')


def parse_json_array(rest: str) -> list[str] | None:
    """The strings of a JSON array at the start of `rest`, or None if it is not one.

    Go's json.Decoder reads one value and ignores what follows it. A valid
    array holding anything but strings is a syntax error (NOT_STRING_ARRAY).
    """
    text = rest.lstrip(GO_SPACE)
    if not text.startswith("["):
        return None
    plain = _PLAIN_ARRAY.match(text)
    if plain is not None:
        return _PLAIN_STRING.findall(plain.group())
    return _decode_json_array(text)


class _Reject(Exception):
    """A JSON document Go's decoder would refuse (NaN, number out of range)."""


def _go_number(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _Reject(text)
    return value


def _reject_constant(text: str) -> float:
    raise _Reject(text)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _decode_json_array(text: str) -> list[str] | None:
    import json

    decoder = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_go_number, parse_int=_go_number)
    try:
        value, _ = decoder.raw_decode(text)
    except (ValueError, _Reject):
        return None
    except RecursionError:
        if _nested_json_is_valid(text):
            raise RecipeSyntaxError(NOT_STRING_ARRAY) from None
        return None
    for item in value:
        if not isinstance(item, str):
            raise RecipeSyntaxError(NOT_STRING_ARRAY)
    if any(_SURROGATE.search(item) for item in value):
        # Go decodes an unpaired surrogate escape to U+FFFD.
        value = [_SURROGATE.sub("\ufffd", item) for item in value]
    return value


@lru_cache(maxsize=1)
def _json_token() -> re.Pattern[str]:
    return re.compile(
        r'[ \t\n\r]*(?:(?P<open>[\[{])|(?P<close>[\]}])|(?P<sep>[,:])|'
        r'(?P<scalar>"(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*"'
        r"|-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|true|false|null))"
    )


def _nested_json_is_valid(text: str, max_depth: int = 10000) -> bool:
    """Whether one JSON value starts `text`, with Go's nesting limit of 10000.

    Only reached for arrays nested too deeply for Python's recursive decoder;
    the grammar is checked loosely (token order), which is all Go reports on.
    """
    token = _json_token()
    stack: list[str] = []
    pos = 0
    expect_value = True
    while True:
        m = token.match(text, pos)
        if m is None:
            return False
        pos = m.end()
        if m.group("open"):
            if not expect_value or len(stack) >= max_depth:
                return False
            stack.append("]" if m.group("open") == "[" else "}")
            continue
        if m.group("close"):
            if not stack or stack.pop() != m.group("close"):
                return False
            expect_value = False
        elif m.group("sep"):
            if expect_value:
                return False
            expect_value = True
            continue
        else:
            if not expect_value:
                return False
            expect_value = False
        if not stack:
            return True
