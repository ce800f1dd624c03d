"""Where a layer entry may go, judged from tar headers alone, before anything is written (design rule R2).

`EntryNames.check(info)` takes a layer's entries in order and returns each
one's cleaned path (and a hard link's cleaned target), or refuses, naming the
entry: absolute names, `..` above the root, NUL or newline, names beyond the
`Limits`, a whiteout name used as a directory or naming no file, a non-directory
replacing the root, and any path through a symbolic link this same layer made
that leads out of the root (absolute, or `..` too far). A tar of a real tree
never writes through its own links; an attack does (CVE-2014-9356 and kin).

Applying a layer (store.tarapply) and importing a root filesystem
(store.rootfs) both use it, so what is imported is what unpacks. What is on
disk, such as links from lower layers, is store.inroot's to resolve.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .archive import WH, WH_META, WH_OPAQUE, Limits
from .errors import LimitExceeded, UnsafeArchiveEntry

if TYPE_CHECKING:
    import tarfile

__all__ = ["EntryNames", "clean_name"]

Parts = tuple[bytes, ...]


def clean_name(name: str, entry: str, limits: Limits, what: str, *, link: bool = False) -> Parts:
    """The components of entry `name` (or of a hard `link` target), lexically cleaned.

    `.` and empty components go and `..` takes one back; absolute names, `..`
    above the root, NUL, newline and names beyond `limits` are refused, naming
    `entry`.
    """
    raw = os.fsencode(name)
    its = f"its hard link target {name[:200]!r}" if link else "its name"
    if raw.startswith(b"/"):
        raise UnsafeArchiveEntry(f"{what}: entry {entry!r}: {its} is absolute", entry=entry)
    if b"\0" in raw:
        raise UnsafeArchiveEntry(f"{what}: entry {entry!r}: {its} holds a NUL byte", entry=entry)
    if b"\n" in raw:
        raise UnsafeArchiveEntry(f"{what}: entry {entry!r}: {its} holds a newline", entry=entry)
    if len(raw) > limits.max_path:
        raise LimitExceeded(f"{what}: entry {entry!r}: {its} is longer than {limits.max_path} bytes", limit=limits.max_path)
    parts: list[bytes] = []
    for part in raw.split(b"/"):
        if part in (b"", b"."):
            continue
        if part == b"..":
            if not parts:
                raise UnsafeArchiveEntry(f"{what}: entry {entry!r}: {its} leaves the root", entry=entry)
            parts.pop()
            continue
        # A whiteout of a NAME_MAX-long name is longer by its `.wh.` prefix.
        if len(part) > limits.max_component + (len(WH) if part.startswith(WH) and not link else 0):
            raise LimitExceeded(
                f"{what}: entry {entry!r}: {its} has a component longer than {limits.max_component} bytes",
                limit=limits.max_component,
            )
        parts.append(part)
    if len(parts) > limits.max_depth:
        raise LimitExceeded(
            f"{what}: entry {entry!r}: {its} is deeper than {limits.max_depth} directories", limit=limits.max_depth
        )
    return tuple(parts)


class EntryNames:
    """The path policy for one layer's entries, which must be checked in archive order."""

    def __init__(self, limits: Limits, what: str) -> None:
        self._limits = limits
        self._what = what
        self._links_out: dict[Parts, str] = {}  # this layer's symlinks leading out of the root -> target

    def check(self, info: tarfile.TarInfo) -> tuple[Parts, Parts | None]:
        """The entry's cleaned path, () for the root directory, and a hard link's cleaned target."""
        name = info.name
        parts = clean_name(name, name, self._limits, self._what)
        if not parts:
            if info.isdir():
                return (), None
            self._refuse(name, "it would replace the layer root")
        for part in parts[:-1]:
            if part.startswith(WH):
                self._refuse(name, "a whiteout name used as a directory")
        self._not_through_links_out(parts, name)
        base = parts[-1]
        if base.startswith(WH):
            if base != WH_OPAQUE:
                victim = base[len(WH) :]
                if base.startswith(WH_META):
                    self._refuse(name, "a whiteout of a whiteout")
                if victim in (b"", b".", b".."):
                    self._refuse(name, "a whiteout that names no file")
                self._links_out.pop((*parts[:-1], victim), None)
            return parts, None
        if info.issym():
            self._symlink(parts, name, info.linkname)
            return parts, None
        self._links_out.pop(parts, None)
        if not info.islnk():
            return parts, None
        target = clean_name(info.linkname, name, self._limits, self._what, link=True) if info.linkname else ()
        if not target:
            self._refuse(name, f"hard link to {info.linkname!r}")
        self._not_through_links_out(target, name)
        return parts, target

    def _symlink(self, parts: Parts, entry: str, target: str) -> None:
        raw = os.fsencode(target)
        if not raw or b"\0" in raw:
            self._refuse(entry, "empty symbolic link target")
        if len(raw) > self._limits.max_path:
            raise LimitExceeded(
                f"{self._what}: entry {entry!r}: link target longer than {self._limits.max_path} bytes",
                limit=self._limits.max_path,
            )
        if _leads_out(parts, raw):
            self._links_out[parts] = target
        else:
            self._links_out.pop(parts, None)

    def _not_through_links_out(self, parts: Parts, entry: str) -> None:
        if not self._links_out:
            return
        for depth in range(1, len(parts)):
            target = self._links_out.get(parts[:depth])
            if target is not None:
                link = os.fsdecode(b"/".join(parts[:depth]))
                self._refuse(entry, f"it goes through the symbolic link {link!r} -> {target!r}, which leads out of the root")

    def _refuse(self, entry: str, why: str) -> None:
        raise UnsafeArchiveEntry(f"{self._what}: entry {entry!r}: {why}", entry=entry)


def _leads_out(parts: Parts, target: bytes) -> bool:
    """Whether symlink `parts` -> `target` points out of the root, read lexically (absolute or `..` too far)."""
    if target.startswith(b"/"):
        return True
    depth = len(parts) - 1
    for part in target.split(b"/"):
        if part == b"..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in (b"", b"."):
            depth += 1
    return False
