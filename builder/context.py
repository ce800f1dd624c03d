"""The build context: the directory COPY and ADD read from, seen through its ignore file.

Lifecycle
---------
    context = BuildContext.open("app", recipe="app/Recipefile", stat_cache=cache_file)
    matches = context.select(["src", "*.toml"], exclude=["**/*.pyc"])
    key = context.digest(matches)      # part of the COPY step's cache key
    ...                                # the engine copies matches[i].entries
    context.save()                     # keep the content digests for next time

Vocabulary
----------
root
    The context directory. Nothing outside it is ever opened: paths are
    resolved component by component from a directory fd with O_NOFOLLOW,
    and a symbolic link met on the way is followed *as if the root were
    `/`* (`etc -> /etc` leads to `<root>/etc`, `up -> ../..` to `<root>`),
    the rule R1 of design/hostile-inputs.md.
view
    The root minus what the ignore file excludes (Docker sends only the view
    to the builder). Excluded paths cannot be selected, are left out of
    directory walks, and are never read; a directory that is excluded but
    holds a re-included path (`*` then `!src/keep.txt`) is part of the view
    with just that path inside.
source
    A COPY/ADD source as the recipe writes it, relative to the root (a
    leading `/` too; `.` and `/` are the root itself). It is cleaned first and
    a path that climbs out (`../x`, `a/../../x`) is refused. Parent
    components may be symbolic links (resolved in root); the last component
    is not followed, so a symbolic link is selected as a link, unless the
    source ends with `/`, which asks for a directory.
wildcard
    A source component holding an unescaped `*`, `?` or `[` expands, with
    Go's filepath.Match per component, to every path of the view it matches
    (sorted); links are not followed below the first wildcard. Matching
    nothing is an error, as a missing literal path is.
match
    `SourceMatch`: one path a source selected, with its `entries` -- the
    path itself first, then for a directory everything beneath it, sorted.
    `rel` is always relative to the root, so `COPY --parents` can place it.
entry
    `ContextEntry`: one file, directory or symbolic link, with the content
    digest of a file. Its mtime is kept for copying but is never part of a
    digest.
exclude
    COPY --exclude patterns (dockerignore syntax, `!` included). As in
    BuildKit's copier they are matched against paths relative to the
    matched directory (`--exclude=*.md docs` drops `docs/a.md`, not
    `docs/sub/b.md`), never against a literal source itself; a wildcard
    match is tested relative to the directory the wildcard starts in, so
    `--exclude=*.txt hom*` drops `home.txt` as Docker's reference describes.
special files
    FIFOs, sockets and device nodes are never opened and never copied: a
    walk leaves them out and lists them in `SourceMatch.skipped` (for a
    warning), a wildcard does not match them, and naming one as a source is
    an error. Docker's archiver drops sockets; pybuild extends that to
    devices and FIFOs, which a context cannot be trusted with (the
    hostile-inputs decision 2 for device nodes).

Digests and the stat cache
--------------------------
`digest(matches)` is sha256 over canonical JSON of, per match, its source,
rel and kind and, per entry, rel, kind, mode, symlink target and content
digest: the same tree gives the same digest in another clone or on another
machine, while mtime, inode and ownership never count.

Hashing every file of a large context on every build would dominate a
rebuild, so content digests are remembered in the `stat_cache` file, keyed
by rel with the file's (size, mtime_ns, inode, ctime_ns). A file whose tuple
is unchanged is not read again; a touched file is re-read (and keeps its
digest if its bytes did not change). The cache is JSON written by
temp-file-and-rename; a missing, corrupt or foreign (another root) cache is
ignored. `files_hashed` counts the files actually read.

Errors are `ContextError`, one line naming the source:

    "app.log": not found in the build context: excluded by .dockerignore:2 (*.log)
    forbidden path outside the build context: ../secret
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import posixpath
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING

from builder.errors import ContextError
from builder.ignore import IgnoreRules, glob_matcher
from grammar.record import record

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from builder.ignore import IgnoreRule

__all__ = ["BuildContext", "ContextEntry", "SourceMatch"]


@record
class ContextEntry:
    """One file, directory or symbolic link of the view."""

    rel: str  # slash path relative to the root ("" is the root)
    kind: str  # "file" | "dir" | "symlink"
    mode: int  # st_mode & 0o7777
    size: int  # 0 for dirs and symlinks
    mtime_ns: int  # kept for copying; never part of a digest
    target: str | None  # a symlink's target, verbatim
    digest: str | None  # "sha256:<hex>" of a file's content


@record
class SourceMatch:
    """A path one source selected, and the entries to copy for it."""

    source: str  # the source as written
    rel: str  # the matched path relative to the root ("" is the root)
    kind: str  # "file" | "dir" | "symlink"
    entries: tuple[ContextEntry, ...]  # the match itself first, then what is beneath, sorted
    skipped: tuple[str, ...] = ()  # FIFOs, sockets and devices left out of a walk


class BuildContext:
    """A context root, its ignore rules and its content-digest cache."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        ignore: IgnoreRules | None = None,
        stat_cache: str | os.PathLike[str] | None = None,
    ) -> None:
        self.root = Path(root).absolute()
        self.ignore = ignore
        self.files_hashed = 0
        self._cache_path = None if stat_cache is None else Path(stat_cache)
        self._cache: dict[str, tuple[int, int, int, int, str]] | None = None
        self._cache_dirty = False

    @classmethod
    def open(
        cls,
        root: str | os.PathLike[str],
        *,
        recipe: str | os.PathLike[str] | None = None,
        stat_cache: str | os.PathLike[str] | None = None,
    ) -> BuildContext:
        """The context at `root` with Docker's choice of ignore file.

        `<recipe name>.dockerignore` next to the recipe wins over
        `<root>/.dockerignore`. An ignore file must be a regular file (not a
        symbolic link) of at most 1 MiB.
        """
        candidates = []
        if recipe is not None:
            recipe = Path(recipe)
            candidates.append(recipe.with_name(f"{recipe.name}.dockerignore"))
        candidates.append(Path(root) / ".dockerignore")
        for path in candidates:
            text = _read_ignore_file(path)
            if text is not None:
                return cls(root, ignore=IgnoreRules.parse(text, path.name), stat_cache=stat_cache)
        return cls(root, stat_cache=stat_cache)

    def select(
        self, sources: Sequence[str], *, exclude: Sequence[str] = (), parents: bool = False
    ) -> tuple[SourceMatch, ...]:
        """Every match of every source, in source order (wildcard matches sorted).

        `parents` (COPY --parents) changes only where the caller puts the
        matches; `rel` is always complete.
        """
        excluded = IgnoreRules.from_patterns(exclude) if exclude else None
        with self._root_fd() as root_fd:
            matches: list[SourceMatch] = []
            for source in sources:
                matches += _Selection(self, root_fd, source, excluded).run()
        return tuple(matches)

    def digest(self, matches: Sequence[SourceMatch]) -> str:
        """`sha256:<hex>` of what the matches would copy (never of mtimes or inodes)."""
        import json

        document = {
            "format": "pybuild-context-v1",
            "matches": [
                {
                    "source": match.source,
                    "rel": match.rel,
                    "kind": match.kind,
                    "entries": [[e.rel, e.kind, e.mode, e.target, e.digest] for e in match.entries],
                }
                for match in matches
            ],
        }
        payload = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return "sha256:" + hashlib.sha256(payload.encode("ascii")).hexdigest()

    def save(self) -> None:
        """Write the stat cache (temp file, then rename); nothing to do without one."""
        if self._cache_path is None or not self._cache_dirty or self._cache is None:
            return
        import json
        import tempfile

        document = {
            "format": _CACHE_FORMAT,
            "root": self._root_identity(),
            "files": {rel: list(value) for rel, value in sorted(self._cache.items())},
        }
        directory = self._cache_path.parent
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{self._cache_path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="ascii") as out:
                json.dump(document, out, separators=(",", ":"))
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self._cache_path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        self._cache_dirty = False

    # ----------------------------------------------------------------------- content digests

    def _file_digest(self, dir_fd: int, name: str, rel: str, st: os.stat_result) -> str:
        cache = self._loaded_cache()
        key = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
        known = cache.get(rel)
        if known is not None and known[:4] == key:
            return known[4]
        started = time.time_ns()
        try:
            # O_NONBLOCK: should a racer swap in a FIFO, open must not hang on it.
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError as exc:
            raise _changed(rel) if exc.errno in (errno.ELOOP, errno.ENOENT, errno.ENXIO) else _unreadable(rel, exc) from None
        try:
            opened = os.fstat(fd)
            if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
                raise _changed(rel)
            sha = hashlib.sha256()
            buffer = bytearray(min(_CHUNK, st.st_size + 1))  # one read and EOF for a small file; no 1 MiB memset each
            view = memoryview(buffer)
            while count := os.readv(fd, [buffer]):
                sha.update(view[:count])
            after = os.fstat(fd)
        except OSError as exc:
            raise _unreadable(rel, exc) from None
        finally:
            os.close(fd)
        self.files_hashed += 1
        digest = f"sha256:{sha.hexdigest()}"
        if (after.st_size, after.st_mtime_ns, after.st_ino, after.st_ctime_ns) == key and _settled(after, started):
            cache[rel] = (*key, digest)
            self._cache_dirty = True
        elif known is not None:
            del cache[rel]
            self._cache_dirty = True
        return digest

    def _loaded_cache(self) -> dict[str, tuple[int, int, int, int, str]]:
        if self._cache is None:
            self._cache = {}
            if self._cache_path is not None:
                self._cache = _read_cache(self._cache_path, self._root_identity())
        return self._cache

    def _root_identity(self) -> list[object]:
        # The path alone is not enough (a new clone at the same place reuses
        # no inode), nor the inode alone (another mount): keep all three.
        st = os.stat(self.root)
        return [os.path.realpath(self.root), st.st_dev, st.st_ino]

    @contextlib.contextmanager
    def _root_fd(self) -> Iterator[int]:
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise ContextError(f"build context {_shown(str(self.root))}: {exc.strerror.lower()}") from None
        try:
            yield fd
        finally:
            os.close(fd)


# --------------------------------------------------------------------------- selection

_CHUNK = 1 << 20
_IGNORE_FILE_LIMIT = 1 << 20
_MAX_LINK_HOPS = 40
_MAX_DEPTH = 256  # R2's depth limit; a walk holds one directory fd per level
_CACHE_FORMAT = "pybuild-stat-cache-v1"
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_COPYABLE = ("file", "dir", "symlink")
_WILDCARD = frozenset("*?[")


class _Missing(Exception):
    """A source path that is not in the view; `rule` when an ignore rule hid it."""

    def __init__(self, rule: IgnoreRule | None = None) -> None:
        super().__init__()
        self.rule = rule


@record
class _Found:
    # The directory holding the target (an fd the caller closes) and its
    # rel parts; `name` is None when the target is that directory itself.
    dir_fd: int
    dir_parts: tuple[str, ...]
    name: str | None
    st: os.stat_result
    visited: tuple[tuple[str, bool], ...]  # (rel, is a link) of every path met on the way

    @property
    def rel(self) -> str:
        return "/".join(self.dir_parts if self.name is None else (*self.dir_parts, self.name))


class _Selection:
    """The matches of one source."""

    def __init__(self, context: BuildContext, root_fd: int, source: str, exclude: IgnoreRules | None) -> None:
        self.context = context
        self.ignore = context.ignore
        self.root_fd = root_fd
        self.source = source
        self.exclude = exclude

    def run(self) -> list[SourceMatch]:
        parts = _clean(self.source)
        wild = next((i for i, part in enumerate(parts) if _has_wildcard(part)), None)
        try:
            if wild is None:
                return [self._literal(parts)]
            return self._wildcard(parts[:wild], parts[wild:])
        except _Missing as missing:
            why = f": excluded by {missing.rule}" if missing.rule is not None else ""
            raise ContextError(f"{_shown(self.source, quote=True)}: not found in the build context{why}") from None
        except OSError as exc:
            raise _unreadable(self.source, exc) from None

    def _literal(self, parts: tuple[str, ...]) -> SourceMatch:
        wants_dir = not parts or self.source.endswith(("/", "/."))
        found = self._resolve(parts, follow_last=wants_dir)
        try:
            kind = _kind(found.st.st_mode)
            if wants_dir and kind != "dir":
                raise _Missing()
            for rel, is_link in found.visited:
                if rel != found.rel:
                    self._check_passage(rel, is_link)
            rule = self._hidden_by(found.rel)
            if rule is not None and not (kind == "dir" and self._may_walk(found.rel, "")):
                raise _Missing(rule)
            if kind not in _COPYABLE:
                raise ContextError(
                    f"{_shown(self.source, quote=True)}: a {kind} cannot be copied from the build context"
                )
            match = self._match(found, hidden=rule is not None)
        finally:
            os.close(found.dir_fd)
        if match is None:
            raise _Missing(rule)
        return match

    def _wildcard(self, prefix: tuple[str, ...], pattern: tuple[str, ...]) -> list[SourceMatch]:
        try:
            matchers = [glob_matcher(part) for part in pattern]
        except ValueError as exc:
            raise ContextError(f"{_shown(self.source, quote=True)}: malformed pattern: {exc}") from None
        base = self._resolve(prefix, follow_last=True)
        matches: list[SourceMatch] = []
        first_rule: IgnoreRule | None = None
        try:
            if _kind(base.st.st_mode) != "dir":
                raise _Missing()
            for rel, is_link in base.visited:
                self._check_passage(rel, is_link)
            # A directory is resolved with name None, so base.dir_fd is the base itself.
            for below, name, st in _expand(base.dir_fd, matchers):
                parts = (*base.dir_parts, *below)
                rel = "/".join((*parts, name))
                in_base = "/".join((*below, name))
                kind = _kind(st.st_mode)
                if kind not in _COPYABLE:
                    continue
                rule = self._hidden_by(rel) or self._excluded_by(in_base)
                if rule is not None and not (kind == "dir" and self._may_walk(rel, in_base)):
                    first_rule = first_rule or rule
                    continue
                dir_fd = _open_below(base.dir_fd, below)
                if dir_fd is None:
                    continue  # gone since it was listed
                try:
                    match = self._match(_Found(dir_fd, parts, name, st, ()), hidden=rule is not None)
                finally:
                    os.close(dir_fd)
                if match is None:
                    first_rule = first_rule or rule
                else:
                    matches.append(match)
        finally:
            os.close(base.dir_fd)
        if not matches:
            why = f": excluded by {first_rule}" if first_rule is not None else ""
            raise ContextError(f"{_shown(self.source, quote=True)}: no match in the build context{why}")
        return sorted(matches, key=lambda match: match.rel)

    # ----------------------------------------------------------------------- building a match

    def _match(self, found: _Found, *, hidden: bool) -> SourceMatch | None:
        # None when the match is a hidden directory with nothing re-included beneath it.
        rel, st = found.rel, found.st
        kind = _kind(st.st_mode)
        if kind == "file":
            assert found.name is not None
            digest = self.context._file_digest(found.dir_fd, found.name, rel, st)
            entry = _entry(rel, kind, st, digest=digest)
            return SourceMatch(self.source, rel, kind, (entry,))
        if kind == "symlink":
            assert found.name is not None
            target = os.fsdecode(os.readlink(found.name, dir_fd=found.dir_fd))
            return SourceMatch(self.source, rel, kind, (_entry(rel, kind, st, target=target),))
        fd = os.dup(found.dir_fd) if found.name is None else _open_dir(found.dir_fd, found.name, st, rel)
        top = _entry(rel, "dir", st)
        entries, skipped = self._walk(fd, top, hidden)
        if not entries:
            return None
        return SourceMatch(self.source, rel, "dir", (entries[0], *sorted(entries[1:], key=lambda e: e.rel)), skipped)

    def _walk(self, fd: int, top: ContextEntry, hidden: bool) -> tuple[list[ContextEntry], tuple[str, ...]]:
        # Depth first with one directory fd per level, no recursion. A hidden
        # directory (walked only because an exception may re-include something
        # in it) is emitted when, and only if, something beneath it is.
        entries: list[ContextEntry] = []
        skipped: list[str] = []
        stack: list[_Frame] = []
        pending = 0

        def emit(entry: ContextEntry) -> None:
            nonlocal pending
            if pending:
                for frame in stack:
                    if frame.pending is not None:
                        entries.append(frame.pending)
                        frame.pending = None
                pending = 0
            entries.append(entry)

        try:
            stack.append(_Frame(fd, top.rel, [], top if hidden else None))
            stack[0].names = _listing(fd, top.rel, hidden)
            if hidden:
                pending = 1
            else:
                entries.append(top)
            start = len(top.rel) + 1 if top.rel else 0
            while stack:
                frame = stack[-1]
                if not frame.names:
                    if frame.pending is not None:
                        pending -= 1
                    os.close(stack.pop().fd)
                    continue
                name = frame.names.pop()
                rel = f"{frame.rel}/{name}" if frame.rel else name
                try:
                    st = os.stat(name, dir_fd=frame.fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                kind = _kind(st.st_mode)
                rule = self._hidden_by(rel) or self._excluded_by(rel[start:])
                if kind == "dir":
                    if rule is not None and not self._may_walk(rel, rel[start:]):
                        continue
                    if len(stack) >= _MAX_DEPTH:
                        raise ContextError(f"{_shown(rel, quote=True)}: more than {_MAX_DEPTH} directories deep")
                    try:
                        child = _open_dir(frame.fd, name, st, rel)
                    except ContextError:
                        if rule is not None:
                            continue  # an excluded directory we may not read is simply not looked into
                        raise
                    entry = _entry(rel, "dir", st)
                    try:
                        names = _listing(child, rel, rule is not None)
                    except BaseException:
                        os.close(child)
                        raise
                    stack.append(_Frame(child, rel, names, entry if rule is not None else None))
                    if rule is None:
                        emit(entry)
                    else:
                        pending += 1
                elif rule is not None:
                    continue
                elif kind == "file":
                    emit(_entry(rel, kind, st, digest=self.context._file_digest(frame.fd, name, rel, st)))
                elif kind == "symlink":
                    emit(_entry(rel, kind, st, target=os.fsdecode(os.readlink(name, dir_fd=frame.fd))))
                else:
                    skipped.append(rel)
        finally:
            for frame in stack:
                os.close(frame.fd)
        return entries, tuple(sorted(skipped))

    # ----------------------------------------------------------------------- the view

    def _hidden_by(self, rel: str) -> IgnoreRule | None:
        return None if self.ignore is None else self.ignore.excluded_by(rel)

    def _excluded_by(self, rel_in_source: str) -> IgnoreRule | None:
        if self.exclude is None or not rel_in_source:
            return None
        return self.exclude.excluded_by(rel_in_source)

    def _may_walk(self, rel: str, rel_in_source: str) -> bool:
        # A hidden directory is looked into only if every rule set hiding it
        # has an exception that may re-include something beneath it.
        ignore, exclude = self.ignore, self.exclude
        if ignore is not None and ignore.excluded_by(rel) is not None and not ignore.may_reinclude_below(rel):
            return False
        return not (
            exclude is not None
            and rel_in_source
            and exclude.excluded_by(rel_in_source) is not None
            and not exclude.may_reinclude_below(rel_in_source)
        )

    def _check_passage(self, rel: str, is_link: bool) -> None:
        # A link or directory the resolution went through must be in the view:
        # an ignored link is not there to follow, and an ignored directory is
        # there only if an exception may put something in it.
        rule = self._hidden_by(rel)
        if rule is not None and (is_link or not self.ignore.may_reinclude_below(rel)):  # type: ignore[union-attr]
            raise _Missing(rule)

    def _resolve(self, parts: tuple[str, ...], *, follow_last: bool) -> _Found:
        # In-root resolution (R1) that keeps track of the real rel: ".." never
        # leaves the root, an absolute link target starts again at the root.
        stack: list[tuple[int, str]] = []
        todo = list(reversed(parts))
        visited: list[tuple[str, bool]] = []
        hops = 0
        try:
            while todo:
                part = todo.pop()
                if part == "..":
                    if stack:
                        os.close(stack.pop()[0])
                    continue
                here = stack[-1][0] if stack else self.root_fd
                rel = "/".join([name for _, name in stack] + [part])
                try:
                    st = os.stat(part, dir_fd=here, follow_symlinks=False)
                except (FileNotFoundError, NotADirectoryError):
                    raise _Missing() from None
                last = not todo
                visited.append((rel, stat.S_ISLNK(st.st_mode)))
                if stat.S_ISLNK(st.st_mode) and (follow_last or not last):
                    hops += 1
                    if hops > _MAX_LINK_HOPS:
                        raise ContextError(f"{_shown(self.source, quote=True)}: too many levels of symbolic links")
                    target = os.fsdecode(os.readlink(part, dir_fd=here))
                    if target.startswith("/"):
                        while stack:
                            os.close(stack.pop()[0])
                    todo += reversed([c for c in target.split("/") if c not in ("", ".")])
                    continue
                if last and not (follow_last and stat.S_ISDIR(st.st_mode)):
                    return _Found(os.dup(here), tuple(n for _, n in stack), part, st, tuple(visited))
                if not stat.S_ISDIR(st.st_mode):
                    raise _Missing()
                stack.append((_open_dir(here, part, st, rel), part))
            here = stack[-1][0] if stack else self.root_fd
            return _Found(os.dup(here), tuple(n for _, n in stack), None, os.fstat(here), tuple(visited))
        finally:
            for fd, _ in stack:
                os.close(fd)


class _Frame:
    __slots__ = ("fd", "names", "pending", "rel")

    def __init__(self, fd: int, rel: str, names: list[str], pending: ContextEntry | None) -> None:
        self.fd, self.rel, self.names, self.pending = fd, rel, names, pending


def _expand(base_fd: int, matchers: list[Callable[[str], bool]]) -> Iterator[tuple[tuple[str, ...], str, os.stat_result]]:
    # Level by level below the wildcard's base, as BuildKit's filepath.Walk
    # plus Match does: only real directories are descended into. Candidates
    # are kept as names and reopened one at a time, so a wide level does not
    # hold a thousand fds.
    level: list[tuple[str, ...]] = [()]
    for depth, matches in enumerate(matchers):
        final = depth == len(matchers) - 1
        following: list[tuple[str, ...]] = []
        for below in level:
            fd = _open_below(base_fd, below)
            if fd is None:
                continue
            try:
                for name in sorted(os.listdir(fd)):
                    if not matches(name):
                        continue
                    try:
                        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if final:
                        yield below, name, st
                    elif stat.S_ISDIR(st.st_mode):
                        following.append((*below, name))
            finally:
                os.close(fd)
        level = following


def _open_below(base_fd: int, parts: tuple[str, ...]) -> int | None:
    fd = os.dup(base_fd)
    for part in parts:
        try:
            child = os.open(part, _O_DIR, dir_fd=fd)
        except OSError:
            os.close(fd)
            return None
        os.close(fd)
        fd = child
    return fd


def _open_dir(dir_fd: int, name: str, st: os.stat_result, rel: str) -> int:
    try:
        fd = os.open(name, _O_DIR, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
            raise _changed(rel) from None
        raise _unreadable(rel, exc) from None
    opened = os.fstat(fd)
    if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
        os.close(fd)
        raise _changed(rel)
    return fd


def _listing(fd: int, rel: str, hidden: bool) -> list[str]:
    try:
        return sorted(os.listdir(fd), reverse=True)
    except PermissionError:
        if hidden:
            return []
        raise ContextError(f"{_shown(rel or '.', quote=True)}: permission denied in the build context") from None


def _entry(rel: str, kind: str, st: os.stat_result, *, digest: str | None = None, target: str | None = None) -> ContextEntry:
    size = st.st_size if kind == "file" else 0
    return ContextEntry(rel, kind, stat.S_IMODE(st.st_mode), size, st.st_mtime_ns, target, digest)


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "device node"


def _clean(source: str) -> tuple[str, ...]:
    if "\0" in source:
        raise ContextError(f"{_shown(source, quote=True)}: a source path cannot hold a NUL byte")
    relative = source.lstrip("/")
    cleaned = posixpath.normpath(relative) if relative else "."
    if cleaned == ".." or cleaned.startswith("../"):
        raise ContextError(f"forbidden path outside the build context: {_shown(source)}")
    return () if cleaned == "." else tuple(cleaned.split("/"))


def _has_wildcard(part: str) -> bool:
    # BuildKit's containsWildcards: a backslash escapes the next character.
    escaped = False
    for char in part:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in _WILDCARD:
            return True
    return False


def _settled(st: os.stat_result, started_ns: int) -> bool:
    # A file changed within the same timestamp tick as our read could change
    # again without its stat tuple changing ("racily clean", as git calls
    # it): remember its digest only once its last change is safely older
    # than the read. ctime, not mtime: the kernel sets it on every write and
    # nobody can set it back. Whole seconds mean a coarse file system.
    margin = 2_000_000_000 if st.st_ctime_ns % 1_000_000_000 == 0 else 50_000_000
    return st.st_ctime_ns < started_ns - margin


def _read_cache(path: Path, identity: list[object]) -> dict[str, tuple[int, int, int, int, str]]:
    import json

    try:
        with open(path, encoding="ascii") as source:
            document = json.load(source)
    except (OSError, ValueError):
        return {}
    if not isinstance(document, dict) or document.get("format") != _CACHE_FORMAT:
        return {}
    if document.get("root") != identity or not isinstance(document.get("files"), dict):
        return {}
    cache = {}
    for rel, value in document["files"].items():
        if (
            isinstance(value, list)
            and len(value) == 5
            and all(type(number) is int for number in value[:4])
            and isinstance(value[4], str)
            and value[4].startswith("sha256:")
        ):
            cache[rel] = tuple(value)
    return cache  # type: ignore[return-value]


def _read_ignore_file(path: Path) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ContextError(f"{_shown(path.name, quote=True)}: an ignore file cannot be a symbolic link") from None
        raise ContextError(f"{_shown(path.name, quote=True)}: {exc.strerror.lower()}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ContextError(f"{_shown(path.name, quote=True)}: an ignore file must be a regular file")
        with os.fdopen(os.dup(fd), "rb") as source:
            data = source.read(_IGNORE_FILE_LIMIT + 1)
    finally:
        os.close(fd)
    if len(data) > _IGNORE_FILE_LIMIT:
        raise ContextError(f"{_shown(path.name, quote=True)}: larger than {_IGNORE_FILE_LIMIT >> 20} MiB")
    return data.decode("utf-8", "surrogateescape")


def _changed(rel: str) -> ContextError:
    return ContextError(f"{_shown(rel, quote=True)}: changed while the build context was read")


def _unreadable(rel: str, exc: OSError) -> ContextError:
    why = (exc.strerror or type(exc).__name__).lower()
    return ContextError(f"{_shown(rel, quote=True)}: cannot read from the build context: {why}")


def _shown(text: str, *, quote: bool = False) -> str:
    # One printable line whatever the name holds: control characters and
    # undecodable bytes are escaped.
    import json

    printable = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    quoted = json.dumps(printable, ensure_ascii=False)
    return quoted if quote else quoted[1:-1]
