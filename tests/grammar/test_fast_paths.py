"""The parser's fast paths give exactly what the general code gives.

Plain-string JSON arrays, `parse_words` on well-formed text, heredoc words in
lines without `$` or `\\` (and, without quotes, found in one pass) and plain
instruction lines in the lexer skip the general code for speed; hypothesis
checks they never disagree with it.
"""

from __future__ import annotations

import json
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from grammar import arguments, heredoc, jsonarray, lexer
from grammar.errors import RecipeError
from grammar.shell import ShellLexer

_WORDS_TEXT = st.text(alphabet=st.sampled_from(list("ab=\"' \\`\t\u00a0x$")), max_size=16)
_LINE_TEXT = st.text(alphabet=st.sampled_from(list("ab< <'\"-\t\r12xE\u00a0")), max_size=18)


@settings(max_examples=3000, deadline=None)
@given(text=_WORDS_TEXT, escape=st.sampled_from(["\\", "`"]))
def test_parse_words_fast_path(text: str, escape: str) -> None:
    assert arguments.parse_words(text, escape) == arguments._parse_words_slowly(text, escape)


@settings(max_examples=3000, deadline=None)
@given(line=_LINE_TEXT)
def test_heredoc_words_fast_path(line: str) -> None:
    word, whole = heredoc._raw_patterns()
    fast = word.findall(line) if whole.fullmatch(line) else []
    assert fast == heredoc._lexed_words(line)


@settings(max_examples=3000, deadline=None)
@given(line=st.text(alphabet=st.sampled_from(list("ab< <-\t\r12xE\u00a0\x0b\n")), max_size=18))
def test_unquoted_heredoc_words_fast_path(line: str) -> None:
    if "<< " in line or "<<\t" in line or "<<\r" in line:
        return  # blanks after `<<` join words: those lines take the general path
    word, _ = heredoc._raw_patterns()
    general = [heredoc._HEREDOC_WORD.fullmatch(w) for w in word.findall(line) if "<<" in w]
    assert heredoc._unquoted_heredoc().findall(line) == [m.groups() for m in general if m is not None]


@settings(max_examples=3000, deadline=None)
@given(tail=st.text(alphabet=st.sampled_from(list("ab '\"\t\r-xE")), min_size=1, max_size=8))
def test_heredoc_delimiter_fast_path(tail: str) -> None:
    word, whole = heredoc._raw_patterns()
    words = word.findall("<<" + tail) if whole.fullmatch("<<" + tail) else []
    match = heredoc._HEREDOC_WORD.fullmatch(words[0]) if words else None
    if match is None or not match.group(3):
        return
    rest = match.group(3)
    fast = heredoc._delimiter.__wrapped__(rest)

    names = ShellLexer("\\", skip_unset=True).split(rest, {})
    raw = ShellLexer("\\", raw_quotes=True, skip_unset=True).split(rest, {})
    slow = None if len(names) != 1 else (names[0], heredoc._quote_count(names[0]) == heredoc._quote_count(raw[0]))
    assert fast == slow


_JSON_ITEM = st.text(alphabet=st.characters(max_codepoint=0x2030), max_size=6)


@settings(max_examples=2000, deadline=None)
@given(items=st.lists(_JSON_ITEM, max_size=4), spacing=st.sampled_from(["", " ", "\t", "\n "]), tail=st.sampled_from(["", " x", "]"]))
def test_plain_json_arrays_decode_as_json_does(items: list[str], spacing: str, tail: str) -> None:
    text = "[" + spacing + ("," + spacing).join(json.dumps(i) for i in items) + spacing + "]" + tail
    assert jsonarray.parse_json_array(text) == jsonarray._decode_json_array(text) == items


_NEVER = re.compile(r"(?!)")


@settings(max_examples=3000, deadline=None)
@given(line=st.text(alphabet=st.sampled_from(list("RUNrunOBILD -=\t\x0b\x85\u00a0ab\"'[]\\<")), max_size=16))
def test_plain_line_fast_path(line: str) -> None:
    text = f"FROM x\n{line}\n"

    def tokens() -> list[object]:
        try:
            return [(kinds, tuple(batch)) for kinds, batch in lexer.tokenize(text)]
        except RecipeError as exc:
            return [str(exc)]

    fast = tokens()
    plain, lexer._PLAIN_LINE = lexer._PLAIN_LINE, _NEVER
    try:
        assert tokens() == fast
    finally:
        lexer._PLAIN_LINE = plain
