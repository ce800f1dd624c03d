"""Recipe source text and positions inside it.

`Source` holds a recipe's name and text and hands out physical lines for error
rendering; `Span` is a 1-based region of it. Nothing here parses anything.
"""

from __future__ import annotations

from .record import record

__all__ = ["Source", "Span"]


@record
class Span:
    """A region of a recipe: 1-based lines and columns, end inclusive.

    Columns count characters (not bytes) of the physical line. `end_column`
    is the column of the last character covered.
    """

    file: str
    line: int
    column: int
    end_line: int
    end_column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@record
class Source:
    """A recipe's name (as shown in messages) and its decoded text."""

    name: str
    text: str

    def line(self, number: int) -> str:
        """Physical line `number` (1-based) without its line ending; '' past the end."""
        lines = self.text.split("\n")
        if 1 <= number <= len(lines):
            return lines[number - 1].rstrip("\r")
        return ""
