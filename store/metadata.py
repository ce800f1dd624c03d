"""Metadata: leases, cache records and snapshot records in `<root>/pybuild.db` (sqlite3, WAL).

Every write is one transaction. A corrupt database is moved aside and recreated
with a warning: lost cache records are cache misses, lost leases fail their
holders' next call. How leases and garbage collection fit together: store.gc.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Self

from .descriptor import Descriptor
from .digest import Digest
from .errors import AlreadyExists, NotFound, StoreError
from .log import lazy_logger

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping
    from types import TracebackType

    from .content import Info, Writer

__all__ = ["CacheRecord", "Lease", "LeaseInfo", "Metadata", "SnapshotRecord"]

log = lazy_logger(__name__)

DB_NAME = "pybuild.db"
GC_LOCK = "gc.lock"
LEASE_DIR = "leases"
DEFAULT_TTL = 3600.0
BUSY_TIMEOUT = 30.0
SNAPSHOT_KINDS = frozenset({"active", "view", "committed"})

_SCHEMA_VERSION = 1
_SCHEMA = """
BEGIN IMMEDIATE;
CREATE TABLE leases (id TEXT PRIMARY KEY, created REAL NOT NULL, expires REAL NOT NULL,
                     heartbeat REAL NOT NULL, pid INTEGER NOT NULL);
CREATE TABLE lease_blobs (lease TEXT NOT NULL REFERENCES leases(id) ON DELETE CASCADE,
                          digest TEXT NOT NULL, PRIMARY KEY (lease, digest)) WITHOUT ROWID;
CREATE INDEX lease_blobs_by_digest ON lease_blobs(digest);
CREATE TABLE lease_snapshots (lease TEXT NOT NULL REFERENCES leases(id) ON DELETE CASCADE,
                              key TEXT NOT NULL, PRIMARY KEY (lease, key)) WITHOUT ROWID;
CREATE TABLE cache (key TEXT PRIMARY KEY, record TEXT NOT NULL, created REAL NOT NULL,
                    last_used REAL NOT NULL);
CREATE TABLE cache_refs (key TEXT NOT NULL REFERENCES cache(key) ON DELETE CASCADE,
                         digest TEXT NOT NULL, media_type TEXT NOT NULL, size INTEGER NOT NULL,
                         PRIMARY KEY (key, digest)) WITHOUT ROWID;
CREATE INDEX cache_refs_by_digest ON cache_refs(digest);
CREATE TABLE snapshots (key TEXT PRIMARY KEY, parent TEXT REFERENCES snapshots(key),
                        kind TEXT NOT NULL, created REAL NOT NULL);
PRAGMA user_version = 1;
COMMIT;
"""


class LeaseInfo(NamedTuple):
    """A lease as stored: times are Unix seconds; `pid` is the holder's, for humans."""

    id: str
    created: float
    expires: float
    heartbeat: float
    pid: int
    blobs: frozenset[Digest]
    snapshots: frozenset[str]


class CacheRecord(NamedTuple):
    """A cache record: the caller's JSON object plus the blobs it keeps alive."""

    key: str
    record: Mapping[str, Any]
    refs: tuple[Descriptor, ...]
    created: float
    last_used: float


class SnapshotRecord(NamedTuple):
    """Bookkeeping of one snapshot: `kind` is active, view or committed."""

    key: str
    parent: str | None
    kind: str
    created: float


class Metadata:
    """The metadata database of one store root. One instance per process (not fork-safe)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.path = self.root / DB_NAME
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)  # R12, when we create it
        (self.root / LEASE_DIR).mkdir(mode=0o700, exist_ok=True)
        self._lock = threading.RLock()
        # Opening (and any recovery) is serialised across processes, so two of
        # them never both move a corrupt file aside, the second one a fresh file.
        with _flocked(self.root / f"{DB_NAME}.lock", fcntl.LOCK_EX):
            try:
                self._db = self._connect()
            except (sqlite3.DatabaseError, _Corrupt) as exc:
                if isinstance(exc, sqlite3.DatabaseError) and not _is_corruption(exc):
                    raise
                aside = self._move_aside()
                log.warning("metadata %s is corrupt (%s): moved to %s, starting empty", self.path, exc, aside)
                self._db = self._connect()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- leases ------------------------------------------------------------

    def lease(self, ttl: float = DEFAULT_TTL) -> Lease:
        """A new lease held by this process for `ttl` seconds; use it as a context manager."""
        if not ttl > 0:
            raise ValueError(f"lease ttl must be positive, not {ttl!r}")
        lease_id = os.urandom(16).hex()
        fd = _locked_file(self.root / LEASE_DIR, f"{lease_id}.lock")
        now = time.time()
        try:
            with self._write() as db:
                db.execute("INSERT INTO leases VALUES (?, ?, ?, ?, ?)", (lease_id, now, now + ttl, now, os.getpid()))
        except BaseException:
            os.unlink(self.root / LEASE_DIR / f"{lease_id}.lock")
            os.close(fd)
            raise
        return Lease(self, lease_id, ttl, fd)

    def leases(self) -> list[LeaseInfo]:
        """Every lease in the database, live or not yet reaped."""
        with self._read() as db:
            rows = db.execute("SELECT id, created, expires, heartbeat, pid FROM leases ORDER BY created").fetchall()
            blobs = db.execute("SELECT lease, digest FROM lease_blobs").fetchall()
            snaps = db.execute("SELECT lease, key FROM lease_snapshots").fetchall()
        return [
            LeaseInfo(
                *row,
                blobs=frozenset(Digest.parse(d) for lid, d in blobs if lid == row[0]),
                snapshots=frozenset(k for lid, k in snaps if lid == row[0]),
            )
            for row in rows
        ]

    def reap_leases(self, *, dry_run: bool = False) -> list[str]:
        """Delete leases that expired or whose holder process is gone; returns their ids."""
        now = time.time()
        with self._read() as db:
            rows = db.execute("SELECT id, expires FROM leases").fetchall()
        dead = [lid for lid, expires in rows if expires <= now or not self._holder_alive(lid)]
        if dry_run:
            return dead
        with self._write() as db:
            for lid in dead:
                db.execute("DELETE FROM leases WHERE id = ?", (lid,))
        known = {lid for lid, _ in rows}
        for entry in os.scandir(self.root / LEASE_DIR):
            lid, _, suffix = entry.name.partition(".")
            if suffix != "lock" or (lid in known and lid not in dead):
                continue
            if lid in dead or not self._holder_alive(lid):  # an orphan: its holder died before or after its row
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
        if dead:
            log.info("reaped %d lease(s): %s", len(dead), ", ".join(dead))
        return dead

    def leased_blobs(self, *, excluding: Iterable[str] = ()) -> set[Digest]:
        """Digests named by any lease still in the database (but the `excluding` lease ids)."""
        skip = set(excluding)
        with self._read() as db:
            rows = db.execute("SELECT lease, digest FROM lease_blobs").fetchall()
        return {Digest.parse(d) for lid, d in rows if lid not in skip}

    def leased_snapshots(self) -> set[str]:
        """Snapshot keys named by any lease still in the database."""
        with self._read() as db:
            return {k for (k,) in db.execute("SELECT DISTINCT key FROM lease_snapshots")}

    @contextlib.contextmanager
    def protected(
        self, digests: Iterable[Digest], *, excluding: Iterable[str] = (), excluding_cache: Iterable[str] = ()
    ) -> Iterator[set[Digest]]:
        """The subset of `digests` that a lease or a cache record names (but those excluded).

        The block runs inside a write transaction: no lease can add a digest
        until it ends, so deleting the others inside the block is race-free.
        """
        skip_leases, skip_cache = set(excluding), set(excluding_cache)
        found: set[Digest] = set()
        with self._write() as db:
            for digest in set(digests):
                leases = {r for (r,) in db.execute("SELECT lease FROM lease_blobs WHERE digest = ?", (str(digest),))}
                keys = {k for (k,) in db.execute("SELECT key FROM cache_refs WHERE digest = ?", (str(digest),))}
                if leases - skip_leases or keys - skip_cache:
                    found.add(digest)
            yield found

    @contextlib.contextmanager
    def gc_lock(self, *, exclusive: bool) -> Iterator[None]:
        """`<root>/gc.lock`: exclusive for a collection, shared for a lease release."""
        with _flocked(self.root / GC_LOCK, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH):
            yield

    def _holder_alive(self, lease_id: str) -> bool:
        try:
            fd = os.open(self.root / LEASE_DIR / f"{lease_id}.lock", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    # -- cache records -----------------------------------------------------

    def put_cache(self, key: str, record: Mapping[str, Any], *, refs: Iterable[Descriptor] = ()) -> None:
        """Store (or replace) the record under `key`; `refs` are the blobs it keeps alive."""
        _check_key(key)
        text = json.dumps(dict(record), sort_keys=True, separators=(",", ":"), allow_nan=False)
        refs = {r.digest: r for r in refs}.values()
        now = time.time()
        with self._write() as db:
            db.execute("DELETE FROM cache WHERE key = ?", (key,))
            db.execute("INSERT INTO cache VALUES (?, ?, ?, ?)", (key, text, now, now))
            db.executemany(
                "INSERT INTO cache_refs VALUES (?, ?, ?, ?)",
                [(key, str(r.digest), r.media_type, r.size) for r in refs],
            )

    def get_cache(self, key: str) -> CacheRecord | None:
        """The record under `key` (its last use becomes now), or None."""
        _check_key(key)
        with self._write() as db:
            row = db.execute("SELECT key, record, created FROM cache WHERE key = ?", (key,)).fetchone()
            if row is None:
                return None
            now = time.time()
            db.execute("UPDATE cache SET last_used = ? WHERE key = ?", (now, key))
            refs = db.execute("SELECT key, digest, media_type, size FROM cache_refs WHERE key = ?", (key,)).fetchall()
        return _cache_record(row + (now,), refs)

    def delete_cache(self, key: str, *, created: float | None = None) -> bool:
        """Delete the record (only if still the one created at `created`, when given)."""
        with self._write() as db:
            if created is None:
                cursor = db.execute("DELETE FROM cache WHERE key = ?", (key,))
            else:
                cursor = db.execute("DELETE FROM cache WHERE key = ? AND created = ?", (key, created))
            return cursor.rowcount > 0

    def cache_records(self) -> list[CacheRecord]:
        """Every well-formed cache record (malformed ones are logged and skipped)."""
        with self._read() as db:
            rows = db.execute("SELECT key, record, created, last_used FROM cache ORDER BY key").fetchall()
            refs = db.execute("SELECT key, digest, media_type, size FROM cache_refs").fetchall()
        by_key: dict[str, list[tuple[Any, ...]]] = {}
        for ref in refs:
            by_key.setdefault(ref[0], []).append(ref)
        records = (_cache_record(row, by_key.get(row[0], [])) for row in rows)
        return [r for r in records if r is not None]

    # -- snapshot records --------------------------------------------------

    def put_snapshot(self, key: str, *, parent: str | None = None, kind: str = "active") -> SnapshotRecord:
        """Record a new snapshot; its parent must be a committed snapshot."""
        _check_key(key)
        if kind not in SNAPSHOT_KINDS:
            raise ValueError(f"snapshot {key}: kind {kind!r} is not one of {sorted(SNAPSHOT_KINDS)}")
        record = SnapshotRecord(key, parent, kind, time.time())
        with self._write() as db:
            if db.execute("SELECT 1 FROM snapshots WHERE key = ?", (key,)).fetchone():
                raise AlreadyExists(f"snapshot {key}: already exists")
            if parent is not None:
                row = db.execute("SELECT kind FROM snapshots WHERE key = ?", (parent,)).fetchone()
                if row is None:
                    raise NotFound(f"snapshot {key}: parent {parent}: not found")
                if row[0] != "committed":
                    raise StoreError(f"snapshot {key}: parent {parent} is {row[0]}, not committed")
            db.execute("INSERT INTO snapshots VALUES (?, ?, ?, ?)", (key, parent, kind, record.created))
        return record

    def get_snapshot(self, key: str) -> SnapshotRecord:
        with self._read() as db:
            row = db.execute("SELECT key, parent, kind, created FROM snapshots WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise NotFound(f"snapshot {key}: not found")
        return SnapshotRecord(*row)

    def commit_snapshot(self, key: str, name: str) -> SnapshotRecord:
        """Turn active `key` into committed `name`; leases on `key` move to `name`."""
        _check_key(name)
        with self._write() as db:
            row = db.execute("SELECT parent, kind FROM snapshots WHERE key = ?", (key,)).fetchone()
            if row is None:
                raise NotFound(f"snapshot {key}: not found")
            if row[1] != "active":
                raise StoreError(f"snapshot {key}: is {row[1]}, only an active snapshot can be committed")
            if db.execute("SELECT 1 FROM snapshots WHERE key = ?", (name,)).fetchone():
                raise AlreadyExists(f"snapshot {name}: already exists")
            record = SnapshotRecord(name, row[0], "committed", time.time())
            db.execute("INSERT INTO snapshots VALUES (?, ?, ?, ?)", (name, row[0], "committed", record.created))
            db.execute("DELETE FROM snapshots WHERE key = ?", (key,))
            db.execute("UPDATE OR IGNORE lease_snapshots SET key = ? WHERE key = ?", (name, key))
            db.execute("DELETE FROM lease_snapshots WHERE key = ?", (key,))  # a lease that held both
        return record

    def delete_snapshot(self, key: str) -> None:
        """Forget a snapshot; refused while another snapshot names it as parent."""
        with self._write() as db:
            if db.execute("SELECT 1 FROM snapshots WHERE parent = ? LIMIT 1", (key,)).fetchone():
                raise StoreError(f"snapshot {key}: has children, remove them first")
            if db.execute("DELETE FROM snapshots WHERE key = ?", (key,)).rowcount == 0:
                raise NotFound(f"snapshot {key}: not found")

    def sweep_snapshots(self, *, excluding: Iterable[str] = (), dry_run: bool = False) -> list[str]:
        """Forget active and view snapshots no lease holds (but the `excluding` leases): dead builds' leftovers.

        Committed snapshots are a cache, kept. One write transaction: a lease
        that names a key before its snapshot is put (the order builders use)
        keeps it safe from a sweep running at the same time.
        """
        skip = set(excluding)
        with self._write() as db:
            held = {k for lid, k in db.execute("SELECT lease, key FROM lease_snapshots") if lid not in skip}
            rows = db.execute("SELECT key FROM snapshots WHERE kind != 'committed' ORDER BY key").fetchall()
            unheld = [key for (key,) in rows if key not in held]
            if not dry_run:
                db.executemany("DELETE FROM snapshots WHERE key = ?", [(key,) for key in unheld])
        return unheld

    def snapshots(self) -> list[SnapshotRecord]:
        with self._read() as db:
            return [SnapshotRecord(*row) for row in db.execute("SELECT key, parent, kind, created FROM snapshots")]

    # -- plumbing ----------------------------------------------------------

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # sqlite may have rolled back already (full disk, I/O error)
                    self._db.execute("ROLLBACK")
                raise

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN")  # several SELECTs, one consistent snapshot
            try:
                yield self._db
            finally:
                self._db.execute("COMMIT")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA foreign_keys = ON")
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise _Corrupt(check)
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, _SCHEMA_VERSION):  # a newer pybuild's: leave it untouched
                raise StoreError(
                    f"metadata {self.path}: schema version {version}, this pybuild reads {_SCHEMA_VERSION}"
                )
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            if version == 0:
                db.executescript(_SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    def _move_aside(self) -> Path:
        aside = self.path.with_name(f"{DB_NAME}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.urandom(3).hex()}")
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{self.path}{suffix}", f"{aside}{suffix}")
        return aside


class Lease:
    """Keeps blobs and snapshots from garbage collection until released, expired or its holder dies.

    Add a blob BEFORE publishing or relying on it (see store.gc); `commit`
    does that for an ingest. Call `refresh` well within the ttl during long
    work. The holder is this process: forked children inherit the lock.
    """

    def __init__(self, metadata: Metadata, lease_id: str, ttl: float, fd: int) -> None:
        self.id = lease_id
        self.ttl = ttl
        self._md = metadata
        self._fd: int | None = fd

    def add_blob(self, digest: Digest | str) -> None:
        """Protect `digest` (present or not yet) for the life of the lease."""
        digest = digest if isinstance(digest, Digest) else Digest.parse(digest)
        with self._md._write() as db:
            self._check_live(db)
            db.execute("INSERT OR IGNORE INTO lease_blobs VALUES (?, ?)", (self.id, str(digest)))

    def add_snapshot(self, key: str) -> None:
        _check_key(key)
        with self._md._write() as db:
            self._check_live(db)
            db.execute("INSERT OR IGNORE INTO lease_snapshots VALUES (?, ?)", (self.id, key))

    def commit(self, writer: Writer, *, size: int | None = None, expected: Digest | None = None) -> Info:
        """Lease the writer's digest, then commit it: the order that keeps a concurrent GC away."""
        self.add_blob(writer.digest())
        return writer.commit(size=size, expected=expected)

    def refresh(self, ttl: float | None = None) -> float:
        """Heartbeat: the lease now expires `ttl` seconds from now; returns that time."""
        now = time.time()
        expires = now + (ttl or self.ttl)
        with self._md._write() as db:
            cursor = db.execute(
                "UPDATE leases SET heartbeat = ?, expires = ? WHERE id = ? AND expires > ?",
                (now, expires, self.id, now),
            )
            if cursor.rowcount == 0:
                raise NotFound(f"lease {self.id}: expired or reaped")
        return expires

    def release(self) -> None:
        """Drop the lease; waits while a collection runs, so a lease never vanishes under one."""
        if self._fd is None:
            return
        try:
            with self._md.gc_lock(exclusive=False), self._md._write() as db:
                db.execute("DELETE FROM leases WHERE id = ?", (self.id,))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._md.root / LEASE_DIR / f"{self.id}.lock")
        finally:
            os.close(self._fd)
            self._fd = None

    def _check_live(self, db: sqlite3.Connection) -> None:
        row = db.execute("SELECT expires FROM leases WHERE id = ?", (self.id,)).fetchone()
        if row is None or row[0] <= time.time():
            raise NotFound(f"lease {self.id}: expired or reaped")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


class _Corrupt(Exception):
    """PRAGMA quick_check found damage."""


def _is_corruption(exc: sqlite3.DatabaseError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not key or len(key) > 4096:
        raise ValueError(f"invalid key {key!r:.80}: a non-empty string of at most 4096 characters")


def _cache_record(row: tuple[Any, ...], refs: list[tuple[Any, ...]]) -> CacheRecord | None:
    key, text, created, last_used = row
    try:
        record = json.loads(text)
        if not isinstance(record, dict):
            raise TypeError("not a JSON object")
        descriptors = tuple(Descriptor(m, Digest.parse(d), s) for _, d, m, s in refs)
    except (TypeError, ValueError, StoreError) as exc:
        log.warning("cache record %s is malformed (%s): ignored", key, exc)
        return None
    return CacheRecord(key, record, descriptors, created, last_used)


def _locked_file(directory: Path, name: str) -> int:
    """Create `directory/name` already flock'ed: no one ever sees it unlocked while we live."""
    temporary = directory / f".{os.urandom(8).hex()}.new"
    fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(temporary, directory / name)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return fd


@contextlib.contextmanager
def _flocked(path: Path, operation: int) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, operation)
        yield
    finally:
        os.close(fd)
