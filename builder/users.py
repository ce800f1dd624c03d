"""USER specs (`name`, `uid`, `name:group`, `uid:gid`) resolved against an image's /etc/passwd and /etc/group.

Docker's rules: a name must be in passwd (a group name in group); a number
needs no entry; without a group part the primary group is the passwd
entry's (or gid 0 for a uid without one), and the supplementary groups are
those listing the user by name. Pure functions: the sandbox reads the files
inside the container's root, so a symlinked /etc/passwd cannot lead out.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Credentials", "UserError", "resolve_user"]

_MAX_ID = 0xFFFFFFFE


class UserError(Exception):
    """A USER spec that does not resolve; the message is Docker's wording."""


class Credentials(NamedTuple):
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str
    name: str | None


def _entries(text: str, fields: int) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) >= fields:
            rows.append(parts)
    return rows


def _number(text: str) -> int | None:
    if text.isascii() and text.isdigit():
        value = int(text)
        if value <= _MAX_ID:
            return value
    return None


def resolve_user(spec: str, passwd: str = "", group: str = "") -> Credentials:
    """Credentials for `spec` given the image's passwd and group texts ('' when a file is missing)."""
    user_part, _, group_part = (spec or "0").partition(":")
    users = _entries(passwd, 7)
    uid = _number(user_part)
    entry = next((u for u in users if (u[0] == user_part if uid is None else _number(u[2]) == uid)), None)
    if uid is None:
        if entry is None or _number(entry[2]) is None:
            raise UserError(f"unable to find user {user_part}: no matching entries in passwd file")
        uid = _number(entry[2])
        assert uid is not None
    name = entry[0] if entry is not None else None
    home = entry[5] if entry is not None and entry[5] else "/"
    groups_rows = _entries(group, 4)
    if group_part:
        gid = _number(group_part)
        if gid is None:
            row = next((g for g in groups_rows if g[0] == group_part and _number(g[2]) is not None), None)
            if row is None:
                raise UserError(f"unable to find group {group_part}: no matching entries in group file")
            gid = _number(row[2])
            assert gid is not None
    else:
        gid = _number(entry[3]) if entry is not None else 0
        if gid is None:
            raise UserError(f"user {user_part}: invalid primary group {entry[3]!r} in passwd file")  # type: ignore[index]
    supplementary = []
    if name is not None and not group_part:
        for row in groups_rows:
            number = _number(row[2])
            if number is not None and number != gid and name in row[3].split(","):
                supplementary.append(number)
    return Credentials(uid, gid, (gid, *supplementary), home, name)
