"""COPY and ADD: putting selected source files into a step's root filesystem, with BuildKit's rules.

The engine resolves the sources (builder.context) and the --chown owner, then
calls `copy_into` in the child process where the step's root filesystem is
mounted. Everything here works on plain directories.

Vocabulary
    root          the directory holding the step's root filesystem. Every
                  destination path resolves in it as if it were `/`: `..`
                  stops at it, and symbolic links, absolute or relative,
                  lead to paths inside it (design rule R1)
    source root   the build context, or another stage's root: where the
                  matches are read, never leaving it either
    match         one selected source (`Match`): a file, a symbolic link or a
                  directory with every entry beneath it, already filtered
    entry         one path of a match (`Entry`), with the mode, size and
                  modification time the selection saw (its cache key)
    destination   `dest` as written, against WORKDIR unless absolute; it is a
                  directory when it ends with `/` (or is `.`), when the
                  destination path already is one, and for --parents
    target dir    where one match's entries land: the destination for a
                  directory match, the destination or its parent for a file

Docker's rules, as BuildKit applies them (tonistiigi/fsutil copy and
solver/llbsolver/file):
  * More than one match, or a wildcard source, needs a destination ending
    with `/`, in Docker's words.
  * A file goes to the destination, or into it when that is a directory; a
    directory's contents (not the directory) go into the destination; a
    symbolic link is copied as a link, its target verbatim (builder.context
    selects a link as a link, where BuildKit would follow a top-level one).
  * The destination path is resolved whole, its last component too: a link
    there is followed, inside root. Below it nothing is followed.
  * Missing directories on the way are made 0755 and owned by the --chown
    owner (0:0 without it); a destination directory made for a directory
    match also takes --chmod. Existing directories on the way keep their
    metadata. Directories *inside* a copied tree take the source's mode,
    owner and time even when they exist already (fsutil's
    overwriteTargetMetadata), as BuildKit does.
  * Files keep mode and modification time; their owner is the --chown owner
    or 0:0, never the source's. --chmod replaces (octal) or edits (symbolic,
    chmod(1) syntax as in dockerfile 1.14) the mode of files and directories.
  * A file or link replaces a file or link; over a directory it is an error
    ("cannot replace to directory X with file"), and a directory over a
    non-directory too ("cannot copy to non-directory: X").
  * ADD with `unpack` extracts a local tar (plain, gzip, bzip2, xz or zstd,
    judged by content) into the destination, always a directory; the
    archive's owners, modes and times are kept (--chmod does not apply),
    owners replaced by --chown when given. Extraction is store.tarapply's
    (through /proc/self/fd), after a first pass that refuses what must not
    land in an image: absolute names and `..` (which BuildKit would trim),
    writes through the archive's own links out of the destination, device
    nodes, fifos, whiteout names, oversized or corrupt input.
  * Hard links in a source tree are copied as independent files; xattrs
    are not copied.
  * A source that changed since it was listed (another kind, another size)
    fails the step: "context changed during COPY".

Example:

    >>> spec = CopySpec(dest="bin/", workdir="/app", owner=resolve_owner("app", root),
    ...                 chmod=parse_chmod("u=rwX,go=rX"))
    >>> copy_into(root, context_dir, matches, spec)     # /app/bin/<each match>
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import posixpath
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from .errors import ContextError

if TYPE_CHECKING:
    import tarfile
    from collections.abc import Sequence
    from typing import BinaryIO

    from store.inroot import Resolver

__all__ = [
    "ArchiveKind",
    "CopySpec",
    "Entry",
    "Match",
    "SymbolicMode",
    "archive_kind",
    "copy_into",
    "parse_chmod",
    "resolve_owner",
]

ArchiveKind = Literal["tar", "gzip", "bzip2", "xz", "zstd"]

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_O_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_SYMLINKS = 40
_MAX_ID = 0xFFFFFFFE  # (uid_t)-1 means "no change" to chown
_ACCOUNTS_CAP = 4 << 20  # an image's /etc/passwd or /etc/group (R4)
_CHUNK = 1 << 20
_XZ_MEMLIMIT = 1 << 28  # xz's largest presets need 65 MiB; a hostile header may ask for 4 GiB
_NOT_OCTAL = "invalid chmod parameter: '{}'. it should be octal string and between 0 and 07777"
_MANY_SOURCES = "When using {} with more than one source file, the destination must be a directory and end with a /"


class Entry(Protocol):
    """What copying reads of one listed path (builder.context.ContextEntry)."""

    @property
    def rel(self) -> str: ...  # slash path under the source root
    @property
    def kind(self) -> str: ...  # "file", "dir" or "symlink"
    @property
    def mode(self) -> int: ...  # st_mode & 0o7777
    @property
    def size(self) -> int: ...
    @property
    def mtime_ns(self) -> int: ...
    @property
    def target(self) -> str | None: ...  # a symbolic link's


class Match(Protocol):
    """What copying reads of one selected source (builder.context.SourceMatch)."""

    @property
    def source(self) -> str: ...  # as written in the recipe
    @property
    def rel(self) -> str: ...  # the matched path; "" is the source root itself
    @property
    def kind(self) -> str: ...
    @property
    def entries(self) -> Sequence[Entry]: ...  # the match first, then all beneath it


# --------------------------------------------------------------------------- --chmod


@dataclass(frozen=True, slots=True)
class _Action:
    who: int  # permission bits the clause names; 0 = none named (all, umask ignored)
    op: str  # "+", "-" or "="
    perm: int  # r, w, x, s, t bits asked for
    copy: str  # "u", "g" or "o" to copy that class's bits, else ""
    conditional_x: bool  # X: execute only for directories or already executable files


@dataclass(frozen=True, slots=True)
class SymbolicMode:
    """A symbolic --chmod (`u=rwX,go=rX`, `+x`, `g=u`), applied to each copied path's own mode."""

    text: str
    actions: tuple[_Action, ...]

    def apply(self, mode: int, *, is_dir: bool) -> int:
        """`mode` (permission bits) after the clauses, in order, as BSD chmod(1) with umask 0 does."""
        for action in self.actions:
            who = action.who or 0o6777
            bits = action.perm
            if action.copy:
                shift = {"u": 6, "g": 3, "o": 0}[action.copy]
                bits = ((mode >> shift) & 0o7) * 0o111
            if action.conditional_x and (is_dir or mode & 0o111):
                bits |= 0o111
            value = bits & who
            # Sticky is nobody's class bit: set unless only "o" is named (BSD setmode).
            if action.perm & 0o1000 and (not action.who or action.who & 0o6770):
                value |= 0o1000
            if action.op == "+":
                mode |= value
            elif action.op == "-":
                mode &= ~value
            else:
                mode = (mode & ~who) | value
        return mode & 0o7777


_WHO = {"u": 0o4700, "g": 0o2070, "o": 0o0007, "a": 0o6777}
_PERM = {"r": 0o444, "w": 0o222, "x": 0o111, "s": 0o6000, "t": 0o1000}


def parse_chmod(text: str) -> int | SymbolicMode:
    """The --chmod value: an int for octal (`755`, `0644`, at most 07777), a SymbolicMode otherwise.

    BuildKit's rule (dockerfile2llb): a value starting with a digit must be
    octal, else "invalid chmod parameter: '64a'. it should be octal string
    and between 0 and 07777"; anything else is chmod(1)'s symbolic syntax.
    """
    if not text or text[0].isdigit():
        if not text or any(c not in "01234567" for c in text) or int(text, 8) > 0o7777:
            raise ContextError(_NOT_OCTAL.format(text))
        return int(text, 8)
    actions = []
    for clause in text.split(","):
        at, who = 0, 0
        while at < len(clause) and clause[at] in _WHO:
            who |= _WHO[clause[at]]
            at += 1
        if at == len(clause):
            raise ContextError(f"invalid chmod parameter: '{text}': {clause!r} has no +, - or =")
        while at < len(clause):
            op = clause[at]
            if op not in "+-=":
                raise ContextError(f"invalid chmod parameter: '{text}': unexpected {op!r} in {clause!r}")
            at += 1
            perm, copy, conditional_x = 0, "", False
            while at < len(clause) and clause[at] not in "+-=":
                letter = clause[at]
                if copy:
                    raise ContextError(f"invalid chmod parameter: '{text}': {clause!r} mixes {copy!r} with other letters")
                if letter in _PERM:
                    perm |= _PERM[letter]
                elif letter == "X":
                    conditional_x = True
                elif letter in "ugo" and not (perm or conditional_x):
                    copy = letter
                else:
                    raise ContextError(f"invalid chmod parameter: '{text}': unexpected {letter!r} in {clause!r}")
                at += 1
            actions.append(_Action(who, op, perm, copy, conditional_x))
    return SymbolicMode(text, tuple(actions))


# --------------------------------------------------------------------------- --chown


def resolve_owner(spec: str, root: str | os.PathLike[str]) -> tuple[int, int]:
    """The uid and gid of `--chown=user[:group]`, names looked up in root's /etc/passwd and /etc/group.

    Numbers need no entry. Without a group part a number is its own gid and
    a name takes its passwd entry's primary group (BuildKit's readUser; the
    reference's "the GID is set to the same numeric value as the UID" holds
    for numbers). Unknown names are errors in the classic builder's words,
    where BuildKit would silently use 0.
    """
    from .users import UserError, resolve_user

    user, colon, group = spec.partition(":")
    if not user or (colon and not group) or ":" in group:
        raise ContextError(f"invalid chown string format: {spec}")
    uid = _id_number(user, spec)
    if uid is None:
        try:
            credentials = resolve_user(user, _image_text(root, ("etc", "passwd")), "")
        except UserError as exc:
            if str(exc).startswith("unable to find user"):
                raise ContextError(f"can't find uid for user {user}: no such user: {user}") from None
            raise ContextError(f"--chown={spec}: {exc}") from None
        uid, gid = credentials.uid, credentials.gid
    else:
        gid = uid
    if group:
        number = _id_number(group, spec)
        if number is None:
            try:
                number = resolve_user("0:" + group, "", _image_text(root, ("etc", "group"))).gid
            except UserError:
                raise ContextError(f"can't find gid for group {group}: no such group: {group}") from None
        gid = number
    return uid, gid


def _id_number(text: str, spec: str) -> int | None:
    if not (text.isascii() and text.isdigit()):
        return None
    if int(text) > _MAX_ID:
        raise ContextError(f"invalid chown string format: {spec}: {text} is out of range")
    return int(text)


def _image_text(root: str | os.PathLike[str], path: tuple[str, ...]) -> str:
    """A small regular file of the image, resolved inside `root`; '' when it is missing."""
    from store.errors import UnsafeArchiveEntry
    from store.inroot import Resolver

    shown = "/" + "/".join(path)
    parts = [os.fsencode(part) for part in path]
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        resolver = Resolver(root_fd, "image", None)
        for _ in range(_MAX_SYMLINKS):
            try:
                dir_fd = resolver.open_dir(tuple(parts[:-1]), shown, create=False)
            except UnsafeArchiveEntry:
                return ""  # a parent is not a directory: no such file
            if dir_fd is None:
                return ""
            try:
                fd = os.open(parts[-1], _O_READ, dir_fd=dir_fd)
            except FileNotFoundError:
                return ""
            except OSError as exc:
                if exc.errno != errno.ELOOP:
                    raise
                # The link itself, re-rooted: the next round resolves its target inside root.
                target = os.readlink(parts[-1], dir_fd=dir_fd).split(b"/")
                parts = target if target[0] == b"" else parts[:-1] + target
                continue
            finally:
                os.close(dir_fd)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise ContextError(f"{shown} in the image is not a regular file")
                data = _read_capped(fd, _ACCOUNTS_CAP, shown)
            finally:
                os.close(fd)
            return data.decode("utf-8", "surrogateescape")
        raise ContextError(f"{shown} in the image: too many symbolic links")
    finally:
        os.close(root_fd)


def _read_capped(fd: int, cap: int, shown: str) -> bytes:
    chunks, total = [], 0
    while chunk := os.read(fd, _CHUNK):
        total += len(chunk)
        if total > cap:
            raise ContextError(f"{shown} in the image is larger than {cap} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


# --------------------------------------------------------------------------- archives


def archive_kind(source: int | str | os.PathLike[str]) -> ArchiveKind | None:
    """What a local ADD source is, judged by content: a tar, plain or compressed, or None.

    `source` is a path (opened without following a link or blocking on a
    fifo) or an open fd (read with pread, its offset untouched). As
    BuildKit's isArchivePath: it must decompress and start with a valid tar
    header, so an empty tar or a gzipped text file is not an archive.
    """
    if isinstance(source, int):
        return _archive_kind(source)
    try:
        fd = os.open(source, _O_READ)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None  # a symbolic link is never an archive: it is not followed
        raise
    try:
        return _archive_kind(fd)
    finally:
        os.close(fd)


def _archive_kind(fd: int) -> ArchiveKind | None:
    from store.errors import StoreError

    if not stat.S_ISREG(os.fstat(fd).st_mode):
        return None
    compression = _compression_of(os.pread(fd, 6, 0))
    try:
        with _plain(fd, compression, 1 << 20, "archive") as stream:
            block = stream.read(512)
    except (StoreError, OSError, EOFError, ValueError):  # corrupt: not an archive, copied as it is
        return None
    if not _is_tar_header(block):
        return None
    return compression or "tar"


def _compression_of(head: bytes) -> Literal["gzip", "bzip2", "xz", "zstd"] | None:
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:3] == b"BZh" and head[3:4] in b"123456789" and len(head) > 3:
        return "bzip2"
    if head[:6] == b"\xfd7zXZ\x00":
        return "xz"
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return "zstd"
    return None


def _is_tar_header(block: bytes) -> bool:
    if len(block) < 512:
        return False
    digits = block[148:156].strip(b" \0")
    if not digits or any(c not in b"01234567" for c in digits):
        return False
    expected = int(digits, 8)
    unsigned = sum(block[:148]) + 8 * 0x20 + sum(block[156:512])
    signed = unsigned - 256 * sum(1 for b in block[:148] + block[156:512] if b > 127)
    return expected in (unsigned, signed)


def _plain(fd: int, compression: str | None, limit: int, what: str) -> BinaryIO:
    """The decompressed bytes of the file at `fd`, from its start, at most `limit` of them."""
    raw: BinaryIO = io.BufferedReader(_PositionalReader(fd), _CHUNK)  # type: ignore[arg-type]
    if compression in ("gzip", "zstd"):
        from store.compression import Compression, decompressor

        kind = Compression.GZIP if compression == "gzip" else Compression.ZSTD
        return decompressor(kind, raw, limit=limit, what=what)
    if compression in ("bzip2", "xz"):
        return io.BufferedReader(_Inflated(raw, compression, limit, what), _CHUNK)  # type: ignore[return-value]
    return raw


class _PositionalReader(io.RawIOBase):
    """An fd read from offset 0 with pread, so the fd's own offset does not matter or move."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd
        self._offset = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = os.pread(self._fd, len(buffer), self._offset)
        memoryview(buffer).cast("B")[: len(data)] = data
        self._offset += len(data)
        return len(data)


class _Inflated(io.RawIOBase):
    """bzip2 or xz decompressed, streams one after another, stopping past `limit` bytes.

    store.compression covers gzip and zstd only; bz2.BZ2File and
    lzma.LZMAFile take no memory limit for a hostile xz dictionary size.
    """

    def __init__(self, source: BinaryIO, compression: str, limit: int, what: str) -> None:
        super().__init__()
        self._source = source
        self._xz = compression == "xz"
        self._limit = limit
        self._what = what
        self._count = 0
        self._streams = 0
        self._done = False
        self._decoder = self._new()

    def _new(self) -> Any:
        import bz2
        import lzma

        self._streams += 1
        return lzma.LZMADecompressor(memlimit=_XZ_MEMLIMIT) if self._xz else bz2.BZ2Decompressor()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        import lzma

        from store.errors import LimitExceeded, MalformedDocument

        view = memoryview(buffer).cast("B")
        pending = b""
        while not self._done:
            if self._decoder.eof:
                pending = self._decoder.unused_data or self._source.read(_CHUNK)
                if not pending:
                    return 0
                self._decoder = self._new()
            if pending:
                data, pending = pending, b""
            elif self._decoder.needs_input:
                data = self._source.read(_CHUNK)
                if not data:
                    raise MalformedDocument(f"{self._what}: compressed data ends early (truncated?)")
            else:
                data = b""
            try:
                out = self._decoder.decompress(data, len(view))
            except (OSError, EOFError, lzma.LZMAError) as exc:
                if "memory" in str(exc).lower():
                    raise LimitExceeded(f"{self._what}: xz needs more than {_XZ_MEMLIMIT} bytes of memory",
                                        limit=_XZ_MEMLIMIT) from None
                if self._streams > 1 and self._count:
                    self._done = True  # what follows a complete stream is padding or trailing bytes, as lzma.open has it
                    return 0
                raise MalformedDocument(f"{self._what}: corrupt compressed data: {exc}") from None
            if out:
                self._count += len(out)
                if self._count > self._limit:
                    raise LimitExceeded(
                        f"{self._what}: decompresses to more than {self._limit} bytes (a decompression bomb?)",
                        limit=self._limit,
                    )
                view[: len(out)] = out
                return len(out)
        return 0


class _Vetting:
    """The first pass over an archive: refuse, before any effect, what must not land in an image."""

    def __init__(self, what: str) -> None:
        from store.archive import DEFAULT_LIMITS
        from store.entrynames import EntryNames

        self._names = EntryNames(DEFAULT_LIMITS, what)
        self._what = what

    def entry(self, info: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        from store.archive import WH
        from store.errors import UnsafeArchiveEntry

        parts, _ = self._names.check(info)
        why = ""
        if any(part.startswith(WH) for part in parts):
            why = "a whiteout name, which no layer can hold as a file"
        elif info.ischr() or info.isblk():
            why = "a device node"
        elif info.isfifo():
            why = "a fifo"
        elif not (info.isreg() or info.isdir() or info.issym() or info.islnk()):
            why = f"unsupported entry type {info.type!r}"
        if why:
            raise UnsafeArchiveEntry(f"{self._what}: entry {info.name!r}: {why}", entry=info.name)


class _Owning:
    """The last pass with --chown: the owner replaces the archive's, entry by entry, inside the target."""

    def __init__(self, resolver: Resolver, owner: tuple[int, int], what: str) -> None:
        from store.archive import DEFAULT_LIMITS
        from store.entrynames import EntryNames

        self._names = EntryNames(DEFAULT_LIMITS, what)
        self._resolver = resolver
        self._owner = owner

    def entry(self, info: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        parts, _ = self._names.check(info)
        if not parts:
            return
        dir_fd = self._resolver.open_dir(parts[:-1], info.name, create=False)
        if dir_fd is None:
            return
        try:
            try:
                os.chown(parts[-1], *self._owner, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                return
            if info.isreg() and info.mode & 0o6000:  # chown cleared set-id bits the archive asked for
                fd = os.open(parts[-1], _O_READ, dir_fd=dir_fd)
                try:
                    if stat.S_ISREG(os.fstat(fd).st_mode):
                        os.fchmod(fd, info.mode & 0o7777)
                finally:
                    os.close(fd)
        finally:
            os.close(dir_fd)


# --------------------------------------------------------------------------- copying


@dataclass(frozen=True, slots=True)
class CopySpec:
    """How one COPY or ADD places its matches."""

    dest: str  # as written, variables expanded
    workdir: str = "/"  # the stage's WORKDIR, for a relative dest
    owner: tuple[int, int] | None = None  # resolved --chown; None is 0:0
    chmod: int | SymbolicMode | None = None  # parse_chmod's; for files and directories copied
    parents: bool = False  # COPY --parents: keep each match's path (below a `/./` pivot)
    unpack: bool = False  # ADD: extract local tar archives instead of copying them
    instruction: str = "COPY"  # for messages


def copy_into(
    root: str | os.PathLike[str],
    source_root: str | os.PathLike[str],
    matches: Sequence[Match],
    spec: CopySpec,
) -> None:
    """Copy (or, for ADD, unpack) every match from `source_root` into `root` at `spec.dest`.

    Raises ContextError, one line naming the path, for destinations Docker
    refuses, hostile archives and sources that changed since they were listed.
    """
    if not matches:
        return
    dest = "/" + posixpath.normpath(posixpath.join("/", spec.workdir or "/", spec.dest)).lstrip("/")
    directory = spec.dest.endswith("/") or posixpath.basename(spec.dest) in (".", "..")
    if not directory and (len(matches) > 1 or any(_has_wildcard(m.source) for m in matches)):
        raise ContextError(_MANY_SOURCES.format(spec.instruction))
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        source_fd = os.open(source_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            copier = _Copier(root_fd, source_fd, spec)
            for match in matches:
                copier.copy(match, dest, directory)
        finally:
            os.close(source_fd)
    finally:
        os.close(root_fd)


def _has_wildcard(source: str) -> bool:
    """Whether `source` holds an unescaped `*`, `?` or `[` (Go's filepath.Match syntax)."""
    escaped = False
    for char in source:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in "*?[":
            return True
    return False


def _parts(path: str) -> tuple[str, ...]:
    return tuple(part for part in path.split("/") if part)


@dataclass(frozen=True, slots=True)
class _Frame:
    """One directory being filled: its destination and source fds, and what to set when it is done."""

    parts: tuple[str, ...]  # under the target dir
    dest_fd: int
    source_fd: int
    shown: str  # its path in the image, for messages
    source: str  # its path in the source root, for messages
    finish: tuple[int, int] | None  # mode and mtime to set once its children are in
    fresh: bool = False  # made by this copy: nothing in it to replace


class _Copier:
    def __init__(self, root_fd: int, source_fd: int, spec: CopySpec) -> None:
        from store.inroot import Resolver

        self._root = root_fd
        self._spec = spec
        self._owner = spec.owner or (0, 0)
        self._dest_resolver = Resolver(root_fd, "destination", None)
        self._source_resolver = Resolver(source_fd, "source", None)

    # -- one match
    def copy(self, match: Match, dest: str, directory: bool) -> None:
        rel = _parts(match.rel)
        if match.kind not in ("file", "dir", "symlink"):
            raise ContextError(f"{match.source}: cannot copy a {match.kind}")
        if self._spec.unpack and match.kind == "file" and self._unpacked(match, rel, dest):
            return
        if self._spec.parents:
            pivot, kept = _pivot(match, rel)
            items = [(kept + _under(e, rel, match), _base(e), e) for e in match.entries]
            if not kept and match.kind != "dir":
                raise ContextError(f"{match.source}: nothing of {match.rel!r} is left below the /./ pivot")
            target, shown, _ = self._dest_dir(_parts(dest))
            self._fill(target, shown, pivot, match, [item for item in items if item[0]])
        elif match.kind == "dir":
            items = [(_under(e, rel, match), _base(e), e) for e in match.entries if e.rel != match.rel]
            target, shown, created = self._dest_dir(_parts(dest))
            self._fill(target, shown, rel, match, items, made=created)
        else:
            entry = next((e for e in match.entries if e.rel == match.rel), None)
            if entry is None or not rel:
                raise ContextError(f"{match.source}: the selection does not list {match.rel!r} itself")
            if directory:
                target, shown, _ = self._dest_dir(_parts(dest))
                name = rel[-1]
            else:
                target, shown, named = self._dest_file(_parts(dest))
                name = named or rel[-1]
            self._fill(target, shown, rel[:-1], match, [((name,), rel[-1], entry)])

    # -- the destination: resolved in root, made where missing
    def _dest_dir(self, parts: tuple[str, ...]) -> tuple[int, str, bool]:
        """An fd of directory `parts` in root, links followed inside it, missing ones made; and if the last was made."""
        from store.errors import UnsafeArchiveEntry

        shown = "/" + "/".join(parts)
        try:
            fd = self._dest_resolver.open_dir(tuple(os.fsencode(p) for p in parts), shown, create=False)
        except UnsafeArchiveEntry:
            fd = None  # the walk below names the component that is in the way
        if fd is not None:
            return fd, shown, False
        return self._walk(parts)

    def _walk(self, parts: tuple[str, ...]) -> tuple[int, str, bool]:
        # Component by component from directory fds, never letting the kernel
        # follow a link: links are read and re-rooted here, as store.inroot does.
        stack: list[tuple[int, str]] = []
        todo = list(reversed(parts))
        hops, created = 0, False
        try:
            while todo:
                part = todo.pop()
                if part in ("", "."):
                    continue
                if part == "..":
                    if stack:
                        os.close(stack.pop()[0])
                    created = False
                    continue
                here = stack[-1][0] if stack else self._root
                shown = "/" + "/".join([name for _, name in stack] + [part])
                try:
                    fd = os.open(part, _O_DIR, dir_fd=here)
                    created = False
                except FileNotFoundError:
                    try:
                        os.mkdir(part, 0o700, dir_fd=here)
                    except FileExistsError:
                        todo.append(part)  # made meanwhile: look again
                        continue
                    stack.append((os.open(part, _O_DIR, dir_fd=here), part))
                    os.fchown(stack[-1][0], *self._owner)
                    os.fchmod(stack[-1][0], 0o755)
                    created = True
                    continue
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    if not stat.S_ISLNK(os.stat(part, dir_fd=here, follow_symlinks=False).st_mode):
                        raise ContextError(f"cannot copy to non-directory: {shown}") from None
                    hops += 1
                    if hops > _MAX_SYMLINKS:
                        raise ContextError(f"{shown}: too many symbolic links") from None
                    target = os.readlink(part, dir_fd=here)
                    if target.startswith("/"):  # absolute: from root again
                        while stack:
                            os.close(stack.pop()[0])
                    todo.extend(reversed(target.split("/")))
                    continue
                stack.append((fd, part))
            shown = "/" + "/".join(name for _, name in stack)
            return (stack.pop()[0] if stack else os.dup(self._root)), shown, created
        finally:
            for fd, _ in stack:
                os.close(fd)

    def _dest_file(self, parts: tuple[str, ...]) -> tuple[int, str, str | None]:
        """Where a file named by `parts` goes: its directory fd and name, or (name None) into the directory it names.

        The last component is followed too when it is a link (BuildKit's
        fs.RootPath of the whole destination), inside root.
        """
        for _ in range(_MAX_SYMLINKS):
            if not parts or parts[-1] in ("", ".", ".."):
                return (*self._dest_dir(parts)[:2], None)
            dir_fd, shown, _ = self._dest_dir(parts[:-1])
            name = parts[-1]
            try:
                mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
            except FileNotFoundError:
                return dir_fd, shown, name
            if stat.S_ISLNK(mode):
                target = os.readlink(name, dir_fd=dir_fd)
                os.close(dir_fd)
                parts = _parts(target) if target.startswith("/") else (*parts[:-1], *target.split("/"))
                continue
            if stat.S_ISDIR(mode):
                try:
                    fd = os.open(name, _O_DIR, dir_fd=dir_fd)
                finally:
                    os.close(dir_fd)
                return fd, posixpath.join(shown, name), None
            return dir_fd, shown, name
        raise ContextError(f"{'/' + '/'.join(parts)}: too many symbolic links")

    # -- the source: resolved in the source root
    def _source_dir(self, parts: tuple[str, ...], match: Match) -> int:
        """Directory `parts` of the source root: its parents resolved inside it, itself never a link."""
        from store.errors import UnsafeArchiveEntry

        try:
            parent = self._source_resolver.open_dir(tuple(os.fsencode(p) for p in parts[:-1]), match.source, create=False)
        except UnsafeArchiveEntry:
            parent = None
        if parent is None:
            raise self._changed("/".join(parts))
        if not parts:
            return parent
        try:
            return os.open(parts[-1], _O_DIR, dir_fd=parent)
        except OSError:
            raise self._changed("/".join(parts)) from None  # gone, or swapped for a link or a file
        finally:
            os.close(parent)

    # -- entries into a target dir
    def _fill(
        self,
        target: int,
        shown: str,
        source_parts: tuple[str, ...],
        match: Match,
        items: list[tuple[tuple[str, ...], str, Entry]],
        *,
        made: bool = False,
    ) -> None:
        """Copy `items`, (path under the target dir, source name, entry), parents before children.

        `target` (the target dir, which this closes) pairs with the source
        directory `source_parts`; below them the two trees have the same names.
        `made`: the target dir was made for a directory match, so --chmod is its.
        """
        try:
            source = self._source_dir(source_parts, match)
        except BaseException:
            os.close(target)
            raise
        frames = [_Frame((), target, source, shown, "/".join(source_parts), None, made)]
        try:
            if made and self._spec.chmod is not None:
                os.fchmod(target, self._mode(0o755, is_dir=True))
            for parts, source_name, entry in sorted(items, key=lambda item: item[0]):
                parent = parts[:-1]
                while frames[-1].parts != parent[: len(frames[-1].parts)]:
                    self._leave(frames.pop())
                while len(frames[-1].parts) < len(parent):  # a directory the selection skipped, e.g. above a --parents match
                    name = parent[len(frames[-1].parts)]
                    frames.append(self._enter(frames[-1], name, name, None))
                top, name = frames[-1], parts[-1]
                if entry.kind == "dir":
                    frames.append(self._enter(top, name, source_name, entry))
                elif entry.kind == "file":
                    self._file(top, name, source_name, entry)
                elif entry.kind == "symlink":
                    self._symlink(top, name, source_name, entry)
                else:
                    raise ContextError(f"{entry.rel}: cannot copy a {entry.kind}")
            while len(frames) > 1:
                self._leave(frames.pop())
        finally:
            for frame in frames:
                os.close(frame.dest_fd)
                os.close(frame.source_fd)

    def _enter(self, top: _Frame, name: str, source_name: str, entry: Entry | None) -> _Frame:
        shown, source = posixpath.join(top.shown, name), posixpath.join(top.source, source_name)
        try:
            source_fd = os.open(source_name, _O_DIR, dir_fd=top.source_fd)
        except OSError:
            raise self._changed(source) from None
        try:
            if entry is None:
                info = os.fstat(source_fd)
                mode, mtime = stat.S_IMODE(info.st_mode), info.st_mtime_ns
            else:
                mode, mtime = entry.mode, entry.mtime_ns
            fresh = top.fresh  # in a directory this copy made, nothing is there yet
            if not fresh:
                try:
                    dest_fd = os.open(name, _O_DIR, dir_fd=top.dest_fd)
                except FileNotFoundError:
                    fresh = True
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    raise ContextError(f"cannot copy to non-directory: {shown}") from None
            if fresh:
                os.mkdir(name, 0o700, dir_fd=top.dest_fd)
                dest_fd = os.open(name, _O_DIR, dir_fd=top.dest_fd)
        except BaseException:
            os.close(source_fd)
            raise
        try:
            os.fchown(dest_fd, *self._owner)
        except BaseException:
            os.close(dest_fd)
            os.close(source_fd)
            raise
        return _Frame((*top.parts, name), dest_fd, source_fd, shown, source, (self._mode(mode, is_dir=True), mtime), fresh)

    def _leave(self, frame: _Frame) -> None:
        try:
            if frame.finish is not None:
                mode, mtime = frame.finish
                os.fchmod(frame.dest_fd, mode)
                os.utime(frame.dest_fd, ns=(mtime, mtime))
        finally:
            os.close(frame.dest_fd)
            os.close(frame.source_fd)

    def _file(self, top: _Frame, name: str, source_name: str, entry: Entry) -> None:
        source = posixpath.join(top.source, source_name)
        try:
            source_fd = os.open(source_name, _O_READ, dir_fd=top.source_fd)
        except OSError:
            raise self._changed(source) from None
        try:
            info = os.fstat(source_fd)
            if not stat.S_ISREG(info.st_mode) or info.st_size != entry.size:
                raise self._changed(source)
            if not top.fresh:
                self._make_room(top, name)
            fd = os.open(name, _O_NEW_FILE, 0o600, dir_fd=top.dest_fd)
            try:
                self._copy_bytes(source_fd, fd, entry.size, source)
                os.fchown(fd, *self._owner)
                os.fchmod(fd, self._mode(entry.mode, is_dir=False))  # after chown, which clears set-id bits
                os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
            finally:
                os.close(fd)
        finally:
            os.close(source_fd)

    def _symlink(self, top: _Frame, name: str, source_name: str, entry: Entry) -> None:
        source = posixpath.join(top.source, source_name)
        try:
            target = os.readlink(source_name, dir_fd=top.source_fd)
        except OSError:
            raise self._changed(source) from None
        if entry.target is not None and target != entry.target:
            raise self._changed(source)
        if not top.fresh:
            self._make_room(top, name)
        os.symlink(target, name, dir_fd=top.dest_fd)
        os.chown(name, *self._owner, dir_fd=top.dest_fd, follow_symlinks=False)
        os.utime(name, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=top.dest_fd, follow_symlinks=False)

    def _make_room(self, top: _Frame, name: str) -> None:
        """Unlink what a file or link replaces; a directory in the way is Docker's error."""
        try:
            mode = os.stat(name, dir_fd=top.dest_fd, follow_symlinks=False).st_mode
        except FileNotFoundError:
            return
        if stat.S_ISDIR(mode):
            raise ContextError(f"cannot replace to directory {posixpath.join(top.shown, name)} with file")
        os.unlink(name, dir_fd=top.dest_fd)

    def _copy_bytes(self, source_fd: int, fd: int, size: int, source: str) -> None:
        """Exactly `size` bytes, in the kernel where it can; a source of another length has changed."""
        done, how = 0, "copy_file_range"
        while done < size:
            want = min(size - done, 1 << 30)
            try:
                if how == "copy_file_range":
                    count = os.copy_file_range(source_fd, fd, want, done)
                elif how == "sendfile":
                    count = os.sendfile(fd, source_fd, done, want)
                else:
                    view = memoryview(os.pread(source_fd, min(want, _CHUNK), done))
                    count = len(view)
                    while view:
                        view = view[os.write(fd, view) :]
            except OSError as exc:
                if how == "read" or exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                how = "sendfile" if how == "copy_file_range" else "read"  # across file systems, or not supported
                continue
            if count == 0:
                raise self._changed(source)
            done += count
        if os.pread(source_fd, 1, size):
            raise self._changed(source)

    def _mode(self, mode: int, *, is_dir: bool) -> int:
        chmod = self._spec.chmod
        if chmod is None:
            return mode
        if isinstance(chmod, int):
            return chmod
        return chmod.apply(mode, is_dir=is_dir)

    def _changed(self, source: str) -> ContextError:
        return ContextError(f"context changed during {self._spec.instruction}: {source!r}")

    # -- ADD of a local archive
    def _unpacked(self, match: Match, rel: tuple[str, ...], dest: str) -> bool:
        """Extract the match into the destination directory if it is a tar archive; False if it is not."""
        if not rel:
            return False
        parent = self._source_dir(rel[:-1], match)
        try:
            try:
                fd = os.open(rel[-1], _O_READ, dir_fd=parent)
            except OSError:
                raise self._changed(match.rel) from None
        finally:
            os.close(parent)
        try:
            kind = _archive_kind(fd)
            if kind is None:
                return False
            target, _, _ = self._dest_dir(_parts(dest))
            try:
                self._extract(fd, kind, target, match.source)
            finally:
                os.close(target)
            return True
        finally:
            os.close(fd)

    def _extract(self, fd: int, kind: ArchiveKind, target: int, source: str) -> None:
        from store.archive import DEFAULT_LIMITS, TarGuard
        from store.errors import StoreError
        from store.inroot import Resolver
        from store.tarapply import apply_tar

        what = f"archive {source!r}"
        compression = None if kind == "tar" else kind
        limit = DEFAULT_LIMITS.max_size
        vetted, applied, owned = hashlib.sha256(), hashlib.sha256(), hashlib.sha256()

        def unchanged(digest: Any = applied) -> None:
            # Each pass reads the file anew; the digests tie them to the bytes vetted first.
            if digest.digest() != vetted.digest():
                raise ContextError(f"{what}: changed while it was read")

        try:
            with _plain(fd, compression, limit, what) as stream:
                TarGuard(stream, DEFAULT_LIMITS, vetted, what).visit(_Vetting(what).entry)
            with _plain(fd, compression, limit, what) as stream:
                apply_tar(stream, f"/proc/self/fd/{target}", limits=DEFAULT_LIMITS, digester=applied,  # type: ignore[arg-type]
                          verify=unchanged, what=what)
            if self._spec.owner is not None:
                owning = _Owning(Resolver(target, what, None), self._spec.owner, what)
                with _plain(fd, compression, limit, what) as stream:
                    TarGuard(stream, DEFAULT_LIMITS, owned, what).visit(owning.entry)
                unchanged(owned)
        except StoreError as exc:
            raise ContextError(str(exc)) from exc


def _base(entry: Entry) -> str:
    return entry.rel.rpartition("/")[2]


def _under(entry: Entry, rel: tuple[str, ...], match: Match) -> tuple[str, ...]:
    """`entry`'s path below the match's own path."""
    parts = _parts(entry.rel)
    if parts[: len(rel)] != rel or any(part in (".", "..") for part in parts):
        raise ContextError(f"{match.source}: the selection lists {entry.rel!r}, which is not under {match.rel!r}")
    return parts[len(rel) :]


def _pivot(match: Match, rel: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """COPY --parents: the match's path split at the source's first `/./` (rsync's pivot); all kept without one.

    `rel` is the real path (the selection resolved links), so it is cut where
    the part before the pivot ends when that part still lines up with it, and
    else as many components from the end as follow the pivot.
    """
    before, pivot, after = match.source.partition("/./")
    if not pivot:
        return (), rel
    head = _parts(posixpath.normpath("/" + before))
    tail = _parts(posixpath.normpath("/" + after))
    lined_up = all(_has_wildcard(part) or part == real for part, real in zip(head, rel))
    if len(head) <= len(rel) and not any("**" in part for part in head) and lined_up:
        return rel[: len(head)], rel[len(head) :]
    if not any("**" in part for part in tail) and len(tail) <= len(rel):
        return rel[: len(rel) - len(tail)], rel[len(rel) - len(tail) :]
    raise ContextError(f"{match.source}: cannot tell where {match.rel!r} crosses the /./ pivot")
