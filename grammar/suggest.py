""""Did you mean ...?" for misspelled instruction, flag and stage names."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["did_you_mean"]


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """The choice closest to `word` (case-insensitive), or None if none is close."""
    import difflib  # only errors pay for it

    by_lower = {c.lower(): c for c in choices}
    match = difflib.get_close_matches(word.lower(), by_lower, n=1, cutoff=0.6)
    return by_lower[match[0]] if match else None
