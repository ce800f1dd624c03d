"""Instruction flags (`--name=value`, `--name`) checked against what each instruction takes.

The rules are BuildKit's `BFlags`: a bool flag is `--x`, `--x=true` or
`--x=false`; a string flag needs a value and may appear once; a strings flag
may repeat. Anything else is a RecipeValidationError at the flag.
"""

from __future__ import annotations

from .errors import RecipeValidationError
from .source import Span
from .suggest import did_you_mean

__all__ = ["BOOL", "STRING", "STRINGS", "parse_flags"]

BOOL, STRING, STRINGS = "bool", "string", "strings"


def parse_flags(
    keyword: str,
    flags: tuple[str, ...],
    spans: tuple[Span, ...],
    accepted: dict[str, str],
) -> dict[str, object]:
    """Values of `flags` by name; absent flags are missing from the result.

    `accepted` maps each flag name the instruction takes to BOOL, STRING or
    STRINGS. STRINGS values come back as tuples in the order given.
    """
    values: dict[str, object] = {}
    for text, span in zip(flags, spans):
        name, eq, value = _unicode(text, span)[2:].partition("=")
        kind = accepted.get(name)
        if kind is None:
            hint = did_you_mean(name, accepted)
            takes = ", ".join(f"--{n}" for n in sorted(accepted)) or "no flags"
            raise RecipeValidationError(
                f"unknown flag for {keyword}: --{name}",
                span,
                hint=f"did you mean --{hint}?" if hint else f"{keyword} takes {takes}",
            )
        if kind == STRINGS:
            if not eq:
                raise RecipeValidationError(f"missing a value on flag: --{name}", span)
            values[name] = (*values.get(name, ()), value)  # type: ignore[misc]
            continue
        if name in values:
            raise RecipeValidationError(f"duplicate flag specified: --{name}", span)
        if kind == STRING:
            if not eq:
                raise RecipeValidationError(f"missing a value on flag: --{name}", span, hint=f"write --{name}=VALUE")
            values[name] = value
        elif not eq or value.lower() == "true":
            values[name] = True
        elif value.lower() == "false":
            values[name] = False
        else:
            raise RecipeValidationError(f"expecting boolean value for flag --{name}, not: {value}", span)
    return values


def _unicode(text: str, span: Span) -> str:
    """The flag as the user wrote it: BuildKit's parser hands over flags read
    byte by byte (each byte a Latin-1 character); turn them back into text."""
    if text.isascii():
        return text
    try:
        return text.encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise RecipeValidationError(
            "flag text is cut inside a character: BuildKit reads flags byte by byte and a "
            "non-breaking space byte (0xA0) or NEL byte (0x85) ends the word there",
            span,
            hint='put the flag value in double quotes, e.g. --chown="à"',
        ) from None
