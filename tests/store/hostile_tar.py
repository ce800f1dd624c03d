"""Tar streams built byte by byte, including the malformed ones no tar writer would make.

Independent of store.archive on purpose: a bug in the writer must not hide a
bug in the reader. `header()` takes raw field bytes, so a NUL inside a name,
a bad checksum or a huge size field is one argument away.
"""

from __future__ import annotations

BLOCK = 512


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\x00" % (width - 1, value)


def header(
    name: bytes,
    *,
    typeflag: bytes = b"0",
    size: int = 0,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    mtime: int = 1_600_000_000,
    linkname: bytes = b"",
    devmajor: int = 0,
    devminor: int = 0,
    size_field: bytes | None = None,
    bad_checksum: bool = False,
) -> bytes:
    """One ustar header block; `name` and `linkname` are raw field contents (may hold NULs)."""
    block = bytearray(BLOCK)
    block[0:100] = name[:100].ljust(100, b"\0")
    block[100:108] = _octal(mode, 8)
    block[108:116] = _octal(uid, 8)
    block[116:124] = _octal(gid, 8)
    block[124:136] = size_field if size_field is not None else _octal(size, 12)
    block[136:148] = _octal(mtime, 12)
    block[148:156] = b" " * 8
    block[156:157] = typeflag
    block[157:257] = linkname[:100].ljust(100, b"\0")
    block[257:265] = b"ustar\x0000"
    block[329:337] = _octal(devmajor, 8)
    block[337:345] = _octal(devminor, 8)
    checksum = sum(block) + (1 if bad_checksum else 0)
    block[148:156] = b"%06o\x00 " % checksum
    return bytes(block)


def pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


def pax(records: dict[bytes, bytes] | list[tuple[bytes, bytes]], *, global_: bool = False) -> bytes:
    """A PAX extended header block with its records."""
    items = records.items() if isinstance(records, dict) else records
    body = b""
    for key, value in items:
        rest = b" %s=%s\n" % (key, value)
        length = len(rest) + 1
        while len(b"%d" % length) + len(rest) != length:
            length += 1
        body += b"%d%s" % (length, rest)
    return header(b"././@PaxHeader", typeflag=b"g" if global_ else b"x", size=len(body)) + pad(body)


def longname(name: bytes) -> bytes:
    """A GNU 'L' header giving the next entry's name."""
    data = name + b"\0"
    return header(b"././@LongLink", typeflag=b"L", size=len(data)) + pad(data)


def file(name: bytes, data: bytes = b"", **fields: object) -> bytes:
    return header(name, size=len(data), **fields) + pad(data)  # type: ignore[arg-type]


def directory(name: bytes, mode: int = 0o755) -> bytes:
    return header(name.rstrip(b"/") + b"/", typeflag=b"5", mode=mode)


def symlink(name: bytes, target: bytes) -> bytes:
    return header(name, typeflag=b"2", linkname=target, mode=0o777)


def hardlink(name: bytes, target: bytes) -> bytes:
    return header(name, typeflag=b"1", linkname=target)


def archive(*members: bytes, end: bool = True) -> bytes:
    return b"".join(members) + (bytes(2 * BLOCK) if end else b"")
