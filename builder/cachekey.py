"""Build-cache keys: which earlier result a build step may reuse, and why one could not be.

A step's key is the sha256 of canonical JSON (sorted keys, no spaces) of

    {"v": CACHE_KEY_VERSION, "parent": <the key of the step before, or null>,
     "op": <the fields that change the step's result>}

`op` holds only what reaches the result, never where the instruction sits
in the recipe: moving a line keeps its cache. For RUN that is the argv (shell
form: with its SHELL), the environment the command sees (ENV and the ARGs in
scope), working directory, user, network and mount specs; for COPY and ADD
the destination, ownership and mode flags and the digest of the selected
source content (paths, types, modes, link targets, bytes: never mtimes); for
FROM the base image's manifest digest. Secrets reach a key only by id and
target, never by content. Config-only instructions (LABEL, CMD, EXPOSE...)
make no layer and have no key: they reach later keys only through fields
that change execution (ENV does, through the environment).

Changing what goes into `op`, or how, means bumping CACHE_KEY_VERSION;
tests pin literal keys so that an accidental change fails loudly.

    >>> step_key(None, {"kind": "from", "image": "sha256:..."})
    'sha256:...'
    >>> changes({"argv": ["sh", "-c", "make"]}, {"argv": ["sh", "-c", "make all"]})
    ['argv: ["sh","-c","make"] -> ["sh","-c","make all"]']
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["CACHE_KEY_VERSION", "canonical", "changes", "file_changes", "step_key"]

CACHE_KEY_VERSION = 1


def canonical(value: Any) -> str:
    """`value` as canonical JSON text: sorted keys, no spaces, no NaN."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def step_key(parent: str | None, op: Mapping[str, Any]) -> str:
    """The cache key of a step whose result depends on `parent`'s result and on `op`."""
    text = canonical({"v": CACHE_KEY_VERSION, "parent": parent, "op": dict(op)})
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def changes(
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    *,
    files_before: Mapping[str, str] | None = None,
    files_after: Mapping[str, str] | None = None,
) -> list[str]:
    """One phrase per `op` field that differs, for a person.

    Environment values are named one by one; a changed `content` digest is
    explained by the source files (path -> content identity) when given.
    """
    out = []
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name), after.get(name)
        if old == new:
            continue
        if name == "env" and isinstance(old, list) and isinstance(new, list):
            out.extend(_env_changes(old, new))
        elif name == "content" and files_before is not None and files_after is not None:
            out.extend(file_changes(files_before, files_after) or [f"{name}: {_short(old)} -> {_short(new)}"])
        else:
            out.append(f"{name}: {_short(old)} -> {_short(new)}")
    return out


def file_changes(before: Mapping[str, str], after: Mapping[str, str], *, limit: int = 5) -> list[str]:
    """Which source paths were added, removed or changed (path -> content identity), at most `limit` named."""
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(p for p in set(before) & set(after) if before[p] != after[p])
    out = [f"file changed: {p}" for p in changed] + [f"file added: {p}" for p in added]
    out += [f"file removed: {p}" for p in removed]
    if len(out) > limit:
        out = [*out[:limit], f"and {len(out) - limit} more file change(s)"]
    return out


def _env_changes(old: list[str], new: list[str]) -> list[str]:
    before = dict(item.partition("=")[::2] for item in old)
    after = dict(item.partition("=")[::2] for item in new)
    out = []
    for name in sorted(set(before) | set(after)):
        if name not in before:
            out.append(f"env {name} added: {_short(after[name])}")
        elif name not in after:
            out.append(f"env {name} removed")
        elif before[name] != after[name]:
            out.append(f"env {name}: {_short(before[name])} -> {_short(after[name])}")
    return out


def _short(value: Any, width: int = 80) -> str:
    text = value if isinstance(value, str) else canonical(value)
    return text if len(text) <= width else text[: width - 1] + "…"
