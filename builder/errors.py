"""Errors of the builder package, each with a one-line message for the user.

    BuilderError              anything pybuild cannot do for the user here
    ├── SandboxError          a sandbox that cannot be set up on this machine
    │   │                     (no user namespaces, no overlay): exit status 4
    │   └── CgroupError       a cgroup that cannot be made or limited
    └── BuildError            a build that cannot go on; `span` is the
        │                     instruction at fault when there is one
        ├── StepFailed        a RUN that exited non-zero: exit status 1
        ├── ContextError      a COPY/ADD source that is missing, ignored or
        │                     outside the build context
        └── BaseImageError    a FROM image that is not in the store

Recipe errors are grammar.RecipeError; store errors store.StoreError.
A BuildError's `str()` is its message alone; `located()` prefixes the
instruction's `file:line:col: error:` the way grammar errors print.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from grammar import Span

__all__ = [
    "BaseImageError",
    "BuildError",
    "BuilderError",
    "CgroupError",
    "ContextError",
    "SandboxError",
    "StepFailed",
    "with_environment_hint",
]

# What a failed set-up system call says about the machine, and what to change (the message's start -> hint).
_HINTS = (
    (
        ("unshare: Operation not permitted", "unshare: Invalid argument", "unshare: No space left on device"),
        (
            "this user may not create namespaces: run pybuild as root, or allow unprivileged user namespaces "
            "(sysctl kernel.unprivileged_userns_clone=1 and user.max_user_namespaces=15000)"
        ),
    ),
    (
        ("mount: No such device",),
        "OverlayFS is not available: load it (modprobe overlay)",
    ),
    (
        ("mount: Operation not permitted", "mount: Invalid argument"),
        (
            "the kernel refused an OverlayFS or bind mount: pybuild needs root, or Linux 5.11 or later for "
            "OverlayFS in a user namespace, and a store on a filesystem OverlayFS accepts as upper (ext4, xfs, btrfs)"
        ),
    ),
)


class BuilderError(Exception):
    """Something the builder cannot do; `str()` is one line for the user."""


class SandboxError(BuilderError):
    """A sandbox that cannot be set up as asked."""


class CgroupError(SandboxError):
    """A cgroup that cannot be made, limited or removed."""


class BuildError(BuilderError):
    """A build step that cannot be done; `span` locates its instruction when known."""

    def __init__(self, message: str, span: Span | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.span = span

    def located(self) -> str:
        """`file:line:col: error: message`, or `error: message` without a span."""
        if self.span is None:
            return f"error: {self.message}"
        return f"{self.span}: error: {self.message}"

    def render(self) -> str:
        """The located one-line message, then any detail lines (indented)."""
        return self.located()


class StepFailed(BuildError):
    """A RUN step that exited non-zero (or was killed): `output` is its last lines, `log` its whole log."""

    def __init__(self, message: str, span: Span | None = None, *, output: tuple[str, ...] = (), log: str | None = None) -> None:
        super().__init__(message, span)
        self.output = output
        self.log = log

    def render(self) -> str:
        lines = [self.located()]
        if self.output:
            lines.append(f"  output (last {len(self.output)} lines):")
            lines += [f"    {line}" for line in self.output]
        if self.log:
            lines.append(f"  full log: {self.log}")
        return "\n".join(lines)


class ContextError(BuildError):
    """A COPY or ADD source that is missing, excluded by an ignore rule, or escapes its root."""


class BaseImageError(BuildError):
    """A FROM image that is neither in the store nor an earlier stage."""


def with_environment_hint(message: str) -> str:
    """`message` from a failed sandbox set-up, with what to change on this machine when it is a known cause."""
    for starts, hint in _HINTS:
        if message.startswith(starts):
            return f"{message} (hint: {hint})"
    return message
