"""Errors raised for a recipe that cannot be used, with their source location.

    RecipeError                      any problem with a recipe; .span, .message, .hint
    ├── RecipeSyntaxError            the text is not a Dockerfile: BuildKit's parser
    │                                rejects it too (unterminated heredoc, ENV key
    │                                without value, non-string JSON array, ...)
    ├── RecipeValidationError        it parses, but an instruction is wrong: argument
    │   │                            counts, flags, FROM first, stage names
    │   └── UnknownInstructionError  an instruction word that does not exist
    └── ExpansionError               variable substitution failed (${X:?msg},
                                     bad substitution, unterminated quote)

The first line of ``str(error)`` is always a single line, in the compiler form
``FILE:LINE:COL: error: message`` when the location is known. ``render(source)``
adds the offending source line, a caret under the fault and a hint.
"""

from __future__ import annotations

from .source import Source, Span

__all__ = [
    "ExpansionError",
    "RecipeError",
    "RecipeSyntaxError",
    "RecipeValidationError",
    "UnknownInstructionError",
]


class RecipeError(Exception):
    """A recipe problem that a user must fix; never a bug in pybuild."""

    def __init__(self, message: str, span: Span | None = None, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.span = span
        self.hint = hint
        self.source: Source | None = None  # set by grammar.parse*, for render()

    def with_span(self, span: Span) -> RecipeError:
        """Attach a location if none is known yet; returns self for `raise ... from`."""
        if self.span is None:
            self.span = span
        return self

    def __str__(self) -> str:
        if self.span is None:
            return f"error: {self.message}"
        return f"{self.span}: error: {self.message}"

    def render(self, source: Source | None = None) -> str:
        """The one-line message, then the source line with a caret, then the hint."""
        out = [str(self)]
        source = source or self.source
        span = self.span
        if source is not None and span is not None and span.line >= 1:
            text = source.line(span.line)
            if text or span.column <= 1:
                display = text.replace("\t", " ")
                gutter = f"{span.line:5d} | "
                out.append(gutter + display)
                start = max(span.column, 1)
                if span.end_line == span.line and span.end_column >= start:
                    end = min(span.end_column, max(len(display), start))
                else:
                    end = max(len(display), start)
                marker = "^" + "~" * (end - start)
                out.append(" " * (len(gutter) - 2) + "| " + " " * (start - 1) + marker)
        if self.hint:
            out.append(f"  hint: {self.hint}")
        return "\n".join(out)


class RecipeSyntaxError(RecipeError):
    """The text is not a Dockerfile at all, as BuildKit's own parser would say."""


class RecipeValidationError(RecipeError):
    """The recipe parses, but an instruction or the stage structure is wrong."""


class UnknownInstructionError(RecipeValidationError):
    """An instruction word that is not part of the Dockerfile language."""


class ExpansionError(RecipeError):
    """Variable substitution in an instruction argument failed."""
