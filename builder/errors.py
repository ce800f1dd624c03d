"""Errors of the builder package, each with a one-line message for the user.

    BuilderError              anything pybuild cannot do for the user here
    └── SandboxError          a sandbox that cannot be set up on this machine
        │                     (no user namespaces, no overlay): exit status 4
        └── CgroupError       a cgroup that cannot be made or limited

Recipe errors are grammar.RecipeError; store errors store.StoreError.
"""

from __future__ import annotations

__all__ = ["BuilderError", "CgroupError", "SandboxError"]


class BuilderError(Exception):
    """Something the builder cannot do; `str()` is one line for the user."""


class SandboxError(BuilderError):
    """A sandbox that cannot be set up as asked."""


class CgroupError(SandboxError):
    """A cgroup that cannot be made, limited or removed."""
