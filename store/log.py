"""Loggers made on first use: `import logging` costs more than a `pybuild run` spends on most steps, and most runs log nothing.

    log = lazy_logger(__name__)
    log.warning("...")     # imports logging and gets the logger now
"""

from __future__ import annotations

__all__ = ["lazy_logger"]


class _LazyLogger:
    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> object:
        import logging

        return getattr(logging.getLogger(self._name), attribute)


def lazy_logger(name: str) -> _LazyLogger:
    """A stand-in for logging.getLogger(name) that imports logging when a message is first logged."""
    return _LazyLogger(name)
