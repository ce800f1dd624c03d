"""Layer tar vocabulary and the guarded reader.

OCI whiteout names, the caps every reader enforces (`Limits`), and `TarGuard`,
which checks each header against them before CPython's `tarfile` sees it:
tarfile would read any PAX block whole and takes a bad header in mid-stream
for the end of the archive. Writing is store.tarwriter, applying
store.tarapply (with store.inroot's path resolution), blobs store.layer.
"""

from __future__ import annotations

import os
import re
import zlib
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, Literal, Protocol

from .errors import LimitExceeded, MalformedDocument, UnsafeArchiveEntry

if TYPE_CHECKING:
    import tarfile
    from collections.abc import Callable

__all__ = ["DEFAULT_LIMITS", "WHITEOUT_OPAQUE", "WHITEOUT_PREFIX", "Limits", "TarGuard", "Whiteouts"]


WHITEOUT_PREFIX = ".wh."
WHITEOUT_OPAQUE = ".wh..wh..opq"
WH = b".wh."
WH_META = b".wh..wh."
WH_OPAQUE = b".wh..wh..opq"

Whiteouts = Literal["delete", "overlay"]

BLOCK = 512
ZEROS = bytes(BLOCK)
PAD = tuple(bytes(n) for n in range(BLOCK))  # PAD[n]: n zero bytes
END_OF_ARCHIVE = bytes(2 * BLOCK)  # end-of-archive marker
CHUNK = 1 << 20
# tarfile's stream reader copies what is left of its buffer on every read, so a
# small buffer is cheaper than a large one for layers of many small files.
_TAR_BUFFER = 64 << 10



@dataclass(frozen=True, slots=True)
class Limits:
    """Caps on what one layer may ask of the reader (hostile-inputs R2, R7)."""

    max_entries: int = 1_000_000
    max_path: int = 4096  # bytes of a cleaned entry name or link target
    max_component: int = 255
    max_depth: int = 256
    max_header: int = 1 << 20  # one PAX or GNU long-name block
    max_size: int = 8 << 30  # uncompressed bytes of the whole layer


DEFAULT_LIMITS = Limits()
O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
OVERLAY_XATTR = re.compile(rb"(trusted|user)\.overlay\.(.*)", re.DOTALL)



# --------------------------------------------------------------------------- reading

_META_TYPES = frozenset({b"x", b"g", b"L", b"K"})
_HEADER_ONLY = frozenset({b"1", b"2", b"3", b"4", b"5", b"6"})
_REGULAR = frozenset({b"0", b"\0", b"7"})
_LONG_DIGITS = re.compile(rb"[0-9]{65}")
_PAX_INTEGER = re.compile(rb"[0-9]{1,20}")  # tarfile's int() would also take "+1", " 1" and "1_0"
_PAX_TIME = re.compile(rb"-?[0-9]{1,20}(\.[0-9]{1,9})?")  # and float() "nan", "1e999"
_PAX_NUMBERS = {
    b"size": _PAX_INTEGER,
    b"uid": _PAX_INTEGER,
    b"gid": _PAX_INTEGER,
    b"mtime": _PAX_TIME,
    b"atime": _PAX_TIME,
    b"ctime": _PAX_TIME,
}
_GLOBAL_KEYS = frozenset({b"comment"})


@dataclass(frozen=True, slots=True)
class _Expect:
    """What the guard saw of one entry, to check tarfile read the same."""

    data_offset: int
    size: int
    name: str


class ByteSink(Protocol):
    """Where the guard hands every byte it reads: a Digester, or anything else with `update`."""

    def update(self, data: bytes, /) -> None: ...


class TarGuard:
    """A reader of a tar stream that vets every header before a tar parser reads it.

    It hashes every byte into `digester`, counts entries, caps PAX and GNU
    long-name blocks, checks header checksums and numeric fields, refuses
    sparse files, unknown entry types, NULs hidden in names and odd PAX
    records (tarfile's PAX regular expressions backtrack badly on long digit
    runs), and raises MalformedDocument at an end of stream that is not an
    end-of-archive marker. `visit()` parses the vetted stream, checking
    entry by entry that the parser saw each entry's data where the guard did.
    """

    def __init__(self, source: BinaryIO, limits: Limits, digester: ByteSink | None = None, what: str = "layer") -> None:
        self._source = source
        self._limits = limits
        self._digester = digester
        self._what = what
        self._buf = bytearray()
        self._base = 0  # stream offset of _buf[0]
        self._pos = 0  # next byte to hand out (index into _buf)
        self._scan = 0  # bytes before this index are vetted
        self._data_left = 0  # payload bytes still to pass before the next header
        self._pax: dict[bytes, bytes] = {}  # the pending 'x' header's records
        self._long: dict[bytes, bytes] = {}  # pending GNU 'L' / 'K' names
        self._source_done = False
        self.ended = False  # an end-of-archive block was seen
        self.entries = 0
        self.size = 0  # bytes read from source
        self._expected: deque[_Expect] = deque()
        self._current = ""  # name of the entry being read, for messages

    # -- the reader side
    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        want = n if n is not None and n >= 0 else 1 << 62
        while self._scan - self._pos < want and self._more():
            pass
        end = min(self._scan, self._pos + want)
        out = bytes(self._buf[self._pos : end])
        self._pos = end
        if self._pos > CHUNK:
            del self._buf[: self._pos]
            self._base += self._pos
            self._scan -= self._pos
            self._pos = 0
        return out

    def visit(self, visitor: Callable[[tarfile.TarInfo, tarfile.TarFile], None]) -> None:
        """Parse the guarded stream with CPython's tarfile, calling `visitor(info, tar)` for each entry.

        Each entry's data offset and size are checked against what the guard
        saw; tarfile errors (the visitor's reads included) become
        MalformedDocument naming the entry; at the end the rest of the stream
        is drained, so the digester has seen all of it.
        """
        import tarfile

        try:
            with tarfile.open(  # type: ignore[call-overload]
                fileobj=self, mode="r|", bufsize=_TAR_BUFFER, encoding="utf-8", errors="surrogateescape"
            ) as tar:
                while (info := tar.next()) is not None:
                    tar.members.clear()  # stream mode would keep every header in memory
                    seen = self._expected.popleft()
                    if info.offset_data != seen.data_offset or (info.isreg() and info.size != seen.size):
                        raise MalformedDocument(f"{self._what}: tar readers disagree about entry {seen.name!r}")
                    visitor(info, tar)
        except tarfile.TarError as exc:
            where = f" in entry {self._current!r}" if self._current else ""
            raise MalformedDocument(f"{self._what}: malformed tar{where}: {exc}") from None
        self.drain()

    def drain(self) -> None:
        """Read the rest of the stream (after the end marker) so it is hashed and verified."""
        while self._more():
            self._pos = self._scan
            if self._pos > CHUNK:
                del self._buf[: self._pos]
                self._base += self._pos
                self._scan = self._pos = 0
        if not self.ended:
            self._truncated()

    # -- vetting
    def _more(self) -> bool:
        """Vet more bytes; False once nothing more can be vetted."""
        if self.ended:
            if self._scan < len(self._buf):
                self._scan = len(self._buf)
                return True
            return self._fill()
        progressed = False
        while True:
            if self._data_left:
                step = min(self._data_left, len(self._buf) - self._scan)
                self._scan += step
                self._data_left -= step
                progressed = progressed or step > 0
                if self._data_left:
                    break
            if len(self._buf) - self._scan < BLOCK:
                break
            consumed = self._header()
            if consumed == 0:
                break  # needs more bytes
            self._scan += consumed
            progressed = True
            if self.ended:
                self._scan = len(self._buf)
                return True
        if progressed:
            return True
        if self._fill():
            return True
        if len(self._buf) > self._scan or self._data_left or not self.ended:
            self._truncated()
        return False

    def _fill(self) -> bool:
        if self._source_done:
            return False
        try:
            chunk = self._source.read(CHUNK)
        except LimitExceeded as exc:  # a decompression bomb: say where it went off
            if not self._current:
                raise
            raise LimitExceeded(f"{exc} (in entry {self._current!r})", limit=exc.limit) from None
        except MalformedDocument as exc:
            if not self._current:
                raise
            raise MalformedDocument(f"{exc} (in entry {self._current!r})") from None
        if not chunk:
            self._source_done = True
            return False
        if self._digester is not None:
            self._digester.update(chunk)
        self.size += len(chunk)
        self._buf += chunk
        return True

    def _truncated(self) -> None:
        if self.size == 0:
            raise MalformedDocument(f"{self._what}: empty, not a tar archive")
        where = f" in entry {self._current!r}" if self._current else ""
        raise MalformedDocument(
            f"{self._what}: tar stream ends at offset {self.size} without an end-of-archive marker{where} (truncated?)"
        )

    def _header(self) -> int:
        """Vet the header at _scan; return the bytes it covers (with its meta data), 0 if more are needed."""
        start = self._scan
        block = bytes(self._buf[start : start + BLOCK])
        offset = self._base + start
        if block == ZEROS:
            if self._pax or self._long:
                self._malformed(offset, "extended header without an entry")
            self.ended = True
            return BLOCK
        self._check_block(block, offset)
        typeflag = block[156:157]
        name_field = _nts_strict(block[0:100], "name", offset, self._raw_name(block))
        if typeflag in _META_TYPES:
            size = _nti(block[124:136], offset, self)
            if size < 0 or size > self._limits.max_header:
                raise LimitExceeded(
                    f"{self._what}: tar header block at offset {offset} is {size} bytes "
                    f"(more than the {self._limits.max_header} allowed)",
                    limit=self._limits.max_header,
                )
            total = BLOCK + size + (-size % BLOCK)
            if len(self._buf) - start < total:
                return 0
            data = bytes(self._buf[start + BLOCK : start + BLOCK + size])
            if typeflag in (b"L", b"K"):
                if typeflag in self._long:
                    self._malformed(offset, "two GNU long names for one entry")
                self._long[typeflag] = _nts_strict(data, "long name", offset, self._raw_name(block))
            else:
                self._vet_pax(data, typeflag == b"g", offset)
            return total
        if typeflag == b"\0" and name_field.endswith(b"/"):
            typeflag = b"5"  # as tarfile: an old-style directory
        if typeflag not in _REGULAR and typeflag not in _HEADER_ONLY:
            self._current = self._display(block)
            kind = "sparse file" if typeflag == b"S" else f"entry type {typeflag!r}"
            raise UnsafeArchiveEntry(f"{self._what}: entry {self._current!r}: unsupported {kind}", entry=self._current)
        self.entries += 1
        if self.entries > self._limits.max_entries:
            raise LimitExceeded(
                f"{self._what}: more than {self._limits.max_entries} entries", limit=self._limits.max_entries
            )
        size = 0
        if typeflag in _REGULAR:
            size = int(self._pax[b"size"]) if b"size" in self._pax else _nti(block[124:136], offset, self)
            if size < 0:
                self._malformed(offset, f"negative size {size}")
            if size > self._limits.max_size:
                shown = self._display(block)
                raise LimitExceeded(
                    f"{self._what}: entry {shown!r} declares {size} bytes, more than the {self._limits.max_size} "
                    "allowed for a whole layer",
                    limit=self._limits.max_size,
                )
        self._current = self._display(block)
        self._expected.append(_Expect(offset + BLOCK, size, self._current))
        self._pax = {}
        self._long = {}
        self._data_left = size + (-size % BLOCK)
        return BLOCK

    def _check_block(self, block: bytes, offset: int) -> None:
        try:
            stored = _nti(block[148:156], offset, self)
        except MalformedDocument:
            stored = -1
        # adler32's low half is 1 + the byte sum for up to 255 bytes: three parts.
        unsigned = 253 + sum(zlib.adler32(part) & 0xFFFF for part in (block[:148], block[156:356], block[356:]))
        if stored != unsigned:
            signed = 256 + sum(b - 256 if b > 127 else b for b in block[:148] + block[156:])
            if stored != signed:
                if offset == 0:
                    raise MalformedDocument(f"{self._what}: not a tar archive (no valid tar header at its start)")
                self._malformed(offset, "bad header checksum")
        for field in (block[100:108], block[108:116], block[116:124], block[136:148], block[329:337], block[337:345]):
            _nti(field, offset, self)
        raw = self._raw_name(block)
        _nts_strict(block[157:257], "link name", offset, raw)
        _nts_strict(block[345:500], "name prefix", offset, raw)

    def _vet_pax(self, data: bytes, is_global: bool, offset: int) -> None:
        if _LONG_DIGITS.search(data):
            self._malformed(offset, "PAX header with a run of more than 64 digits")
        records: dict[bytes, bytes] = {}
        pos = 0
        while pos < len(data):
            space = data.find(b" ", pos, pos + 21)
            digits = data[pos:space] if space > pos else b""
            if not digits.isdigit() or not digits.isascii():
                if not data[pos:].strip(b"\0"):
                    break  # padding some writers leave
                self._malformed(offset, "malformed PAX record")
            length = int(digits)
            end = pos + length
            if length <= len(digits) + 3 or end > len(data) or data[end - 1 : end] != b"\n":
                self._malformed(offset, "malformed PAX record")
            key, eq, value = data[space + 1 : end - 1].partition(b"=")
            if not eq or not key or b"\0" in key:
                self._malformed(offset, "malformed PAX record")
            if key in records:
                self._malformed(offset, f"PAX key {key.decode(errors='replace')!r} given twice")
            records[key] = value
            pos = end
        for key, value in records.items():
            self._vet_pax_record(key, value, is_global, offset)
        if is_global:
            return
        if self._pax:
            self._malformed(offset, "two PAX headers for one entry")
        self._pax = records

    def _vet_pax_record(self, key: bytes, value: bytes, is_global: bool, offset: int) -> None:
        name = key.decode(errors="replace")
        if is_global and key not in _GLOBAL_KEYS:
            self._malformed(offset, f"global PAX header with {name!r} (only 'comment' is accepted)")
        if key.startswith(b"GNU.sparse."):
            raise UnsafeArchiveEntry(f"{self._what}: sparse files are not supported (PAX {name})", entry=name)
        pattern = _PAX_NUMBERS.get(key)
        if pattern is not None and not pattern.fullmatch(value):
            self._malformed(offset, f"PAX {name} {value[:40]!r}")
        if key in (b"path", b"linkpath") and b"\0" in value:
            shown = value.decode(errors="replace")
            raise UnsafeArchiveEntry(f"{self._what}: entry {shown!r}: NUL byte in a name", entry=shown)
        elif key == b"hdrcharset" and value not in (b"BINARY", b"ISO-IR 10646 2000 UTF-8"):
            self._malformed(offset, f"PAX hdrcharset {value[:40]!r}")

    def _raw_name(self, block: bytes) -> bytes:
        if b"path" in self._pax:
            return self._pax[b"path"]
        if b"L" in self._long:
            return self._long[b"L"]
        return block[0:100].rstrip(b"\0")

    def _display(self, block: bytes) -> str:
        name = self._raw_name(block)
        if b"path" not in self._pax and b"L" not in self._long:
            prefix = block[345:500].split(b"\0", 1)[0]
            name = name.split(b"\0", 1)[0]
            if prefix:
                name = prefix + b"/" + name
        return os.fsdecode(name)

    def _malformed(self, offset: int, why: str) -> None:
        where = f" (after entry {self._current!r})" if self._current else ""
        raise MalformedDocument(f"{self._what}: malformed tar header at offset {offset}{where}: {why}")


def _nts_strict(field: bytes, what: str, offset: int, raw: bytes) -> bytes:
    """The bytes up to the first NUL; anything but NULs after it is a hidden name."""
    cut = field.find(b"\0")
    if cut < 0:
        return field
    if field[cut:].strip(b"\0"):
        shown = os.fsdecode(raw).replace("\0", "\\x00")
        raise UnsafeArchiveEntry(f"entry {shown!r}: NUL byte in the {what} (header at offset {offset})", entry=shown)
    return field[:cut]


def _nti(field: bytes, offset: int, guard: TarGuard) -> int:
    # Mirrors tarfile.nti, so both read the same number from the same field.
    if field[0] in (0o200, 0o377):
        n = int.from_bytes(field[1:], "big")
        return n - 256 ** (len(field) - 1) if field[0] == 0o377 else n
    try:
        text = field.split(b"\0", 1)[0].decode("ascii")
        return int(text.strip() or "0", 8)
    except ValueError:
        guard._malformed(offset, f"bad numeric field {field!r}")
        raise  # unreachable
