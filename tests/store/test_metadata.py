"""store.metadata: leases, cache records, snapshot records, and a database that survives damage."""

from __future__ import annotations

import fcntl
import logging
import multiprocessing
import os
import sqlite3
import threading
import time
from typing import TYPE_CHECKING

import pytest

from store.descriptor import Descriptor, MediaType
from store.digest import Digest
from store.errors import AlreadyExists, NotFound, StoreError
from store.metadata import DB_NAME, LEASE_DIR, Metadata

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

FORK = multiprocessing.get_context("fork")
D1, D2, D3 = (Digest.of(bytes([i])) for i in range(3))


@pytest.fixture
def md(tmp_path: Path) -> Iterator[Metadata]:
    with Metadata(tmp_path) as metadata:
        yield metadata


def _layer(digest: Digest, size: int = 1) -> Descriptor:
    return Descriptor(MediaType.LAYER, digest, size)


# -- the database ------------------------------------------------------------


def test_database_is_wal_with_foreign_keys(md: Metadata) -> None:
    db = sqlite3.connect(md.path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    assert md._db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    db.close()


def test_a_new_root_is_private(tmp_path: Path) -> None:
    with Metadata(tmp_path / "new" / "root") as md:
        assert os.stat(md.root).st_mode & 0o777 == 0o700
        assert os.stat(md.root / LEASE_DIR).st_mode & 0o777 == 0o700


def test_reopen_keeps_data(tmp_path: Path) -> None:
    with Metadata(tmp_path) as md:
        md.put_cache("k", {"v": 1})
    with Metadata(tmp_path) as md:
        record = md.get_cache("k")
        assert record is not None and record.record == {"v": 1}


def test_garbage_database_is_moved_aside_and_recreated(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / DB_NAME).write_bytes(b"this is not sqlite\n" * 500)
    with caplog.at_level(logging.WARNING, "store.metadata"), Metadata(tmp_path) as md:
        assert md.get_cache("anything") is None
        md.put_cache("k", {"v": 1})
        assert md.get_cache("k") is not None
    assert "is corrupt" in caplog.text
    aside = [p for p in tmp_path.iterdir() if p.name.startswith(f"{DB_NAME}.corrupt-")]
    assert len(aside) == 1
    assert aside[0].read_bytes().startswith(b"this is not sqlite")


def test_damaged_pages_are_detected_and_recreated(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with Metadata(tmp_path) as md:
        for i in range(300):
            md.put_cache(f"key-{i}", {"payload": "x" * 200}, refs=[_layer(Digest.of(str(i).encode()))])
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    path = tmp_path / DB_NAME
    data = bytearray(path.read_bytes())
    for offset in range(4096 * 3, min(len(data), 4096 * 8), 97):  # the header survives, some pages do not
        data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, "store.metadata"), Metadata(tmp_path) as md:
        assert md.cache_records() == []
    assert "is corrupt" in caplog.text


def test_newer_schema_is_refused_and_left_alone(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.execute("PRAGMA user_version = 99")
    db.close()
    before = (tmp_path / DB_NAME).read_bytes()
    with pytest.raises(StoreError, match="schema version 99"):
        Metadata(tmp_path)
    assert (tmp_path / DB_NAME).read_bytes() == before


def _put_many(root: Path, prefix: str, barrier: object) -> None:
    with Metadata(root) as md:
        barrier.wait(timeout=20)  # type: ignore[attr-defined]
        for i in range(100):
            md.put_cache(f"{prefix}-{i}", {"i": i}, refs=[_layer(D1)])


def test_two_processes_write_concurrently(tmp_path: Path) -> None:
    Metadata(tmp_path).close()
    barrier = FORK.Barrier(2)
    workers = [FORK.Process(target=_put_many, args=(tmp_path, name, barrier)) for name in "ab"]
    for p in workers:
        p.start()
    for p in workers:
        p.join(timeout=60)
        assert p.exitcode == 0
    with Metadata(tmp_path) as md:
        assert len(md.cache_records()) == 200


# -- leases ------------------------------------------------------------------


def _holder_locked(md: Metadata, lease_id: str) -> bool:
    fd = os.open(md.root / LEASE_DIR / f"{lease_id}.lock", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_lease_lifecycle(md: Metadata) -> None:
    with md.lease(ttl=60) as lease:
        lease.add_blob(D1)
        lease.add_blob(str(D2))
        lease.add_blob(D1)  # twice is once
        lease.add_snapshot("snap")
        (info,) = md.leases()
        assert (info.id, info.pid, info.blobs, info.snapshots) == (lease.id, os.getpid(), {D1, D2}, {"snap"})
        assert info.expires == pytest.approx(time.time() + 60, abs=5)
        assert md.leased_blobs() == {D1, D2}
        assert md.leased_snapshots() == {"snap"}
        assert _holder_locked(md, lease.id)
    assert md.leases() == []
    assert md.leased_blobs() == set()
    assert os.listdir(md.root / LEASE_DIR) == []
    lease.release()  # harmless twice


def test_lease_refuses_bad_input(md: Metadata) -> None:
    with pytest.raises(ValueError, match="ttl"):
        md.lease(ttl=0)
    with md.lease() as lease:
        with pytest.raises(StoreError):
            lease.add_blob("sha256:nothex")
        with pytest.raises(ValueError, match="key"):
            lease.add_snapshot("")


def test_refresh_is_a_heartbeat(md: Metadata) -> None:
    with md.lease(ttl=0.3) as lease:
        for _ in range(4):
            time.sleep(0.15)
            lease.refresh()
        assert md.reap_leases() == []
        (info,) = md.leases()
        assert info.heartbeat == pytest.approx(time.time(), abs=1)
        assert lease.refresh(ttl=100) == pytest.approx(time.time() + 100, abs=1)


def test_expired_lease_refuses_use_and_is_reaped(md: Metadata) -> None:
    lease = md.lease(ttl=0.05)
    lease.add_blob(D1)
    time.sleep(0.1)
    with pytest.raises(NotFound, match="expired"):
        lease.add_blob(D2)
    with pytest.raises(NotFound, match="expired"):
        lease.refresh()
    assert md.reap_leases(dry_run=True) == [lease.id]
    assert len(md.leases()) == 1
    assert md.reap_leases() == [lease.id]
    assert md.leases() == []
    assert md.leased_blobs() == set()
    lease.release()  # after reaping: nothing left to do, no error


def _take_lease_and_die(root: Path, ready: object) -> None:
    md = Metadata(root)
    lease = md.lease(ttl=3600)
    lease.add_blob(D1)
    ready.put(lease.id)  # type: ignore[attr-defined]
    ready.close()  # type: ignore[attr-defined]
    ready.join_thread()  # type: ignore[attr-defined]
    os._exit(0)  # no release: the holder is simply gone


def _take_lease_and_wait(root: Path, ready: object, stop: object) -> None:
    with Metadata(root) as md, md.lease(ttl=3600) as lease:
        lease.add_blob(D2)
        ready.put(lease.id)  # type: ignore[attr-defined]
        stop.wait(timeout=30)  # type: ignore[attr-defined]


def test_lease_of_a_dead_holder_is_reaped_early_a_live_one_kept(md: Metadata) -> None:
    ready, stop = FORK.Queue(), FORK.Event()
    dead = FORK.Process(target=_take_lease_and_die, args=(md.root, ready))
    dead.start()
    dead_id = ready.get(timeout=20)
    dead.join(timeout=20)
    live = FORK.Process(target=_take_lease_and_wait, args=(md.root, ready, stop))
    live.start()
    live_id = ready.get(timeout=20)
    try:
        assert {i.id for i in md.leases()} == {dead_id, live_id}
        assert md.reap_leases() == [dead_id]
        assert [i.id for i in md.leases()] == [live_id]
        assert md.leased_blobs() == {D2}
        assert sorted(os.listdir(md.root / LEASE_DIR)) == [f"{live_id}.lock"]
    finally:
        stop.set()
        live.join(timeout=20)
    assert md.leases() == []


def test_orphan_lock_files_are_removed_but_not_live_ones(md: Metadata) -> None:
    orphan = md.root / LEASE_DIR / "0123.lock"
    orphan.write_bytes(b"")
    with md.lease() as lease:
        md.reap_leases()
        assert os.listdir(md.root / LEASE_DIR) == [f"{lease.id}.lock"]


def test_release_waits_for_a_running_collection(md: Metadata) -> None:
    lease = md.lease()
    released = threading.Event()
    with md.gc_lock(exclusive=True):
        thread = threading.Thread(target=lambda: (lease.release(), released.set()))
        thread.start()
        assert not released.wait(0.3)
        assert [i.id for i in md.leases()] == [lease.id]
    assert released.wait(10)
    thread.join()
    assert md.leases() == []


def test_protected_holds_off_lease_additions(md: Metadata, tmp_path: Path) -> None:
    md.put_cache("k", {}, refs=[_layer(D3)])
    with md.lease() as lease, Metadata(tmp_path) as other, other.lease() as other_lease:
        lease.add_blob(D1)
        added = threading.Event()
        thread = threading.Thread(target=lambda: (other_lease.add_blob(D2), added.set()))
        with md.protected([D1, D2, D3]) as protected:
            assert protected == {D1, D3}
            thread.start()
            assert not added.wait(0.3)  # an add waits until the deleting is done
        assert added.wait(10)
        thread.join()
        with md.protected([D2, D3], excluding_cache=["k"]) as protected:
            assert protected == {D2}
        with md.protected([D1, D2], excluding=[lease.id]) as protected:
            assert protected == {D2}
        assert md.leased_blobs(excluding=[other_lease.id]) == {D1}


# -- cache records -----------------------------------------------------------


def test_cache_records_round_trip(md: Metadata) -> None:
    refs = [_layer(D1, 10), Descriptor(MediaType.MANIFEST, D2, 20)]
    md.put_cache("key/1", {"layer": str(D1), "n": [1, 2]}, refs=refs)
    record = md.get_cache("key/1")
    assert record is not None
    assert record.record == {"layer": str(D1), "n": [1, 2]}
    assert sorted(record.refs, key=lambda d: d.digest) == sorted(refs, key=lambda d: d.digest)
    assert [(r.media_type, r.size) for r in sorted(record.refs, key=lambda d: d.size)] == [
        (MediaType.LAYER, 10),
        (MediaType.MANIFEST, 20),
    ]
    assert record.created <= record.last_used
    time.sleep(0.01)
    again = md.get_cache("key/1")
    assert again is not None and again.last_used > record.last_used
    assert md.get_cache("absent") is None
    assert [r.key for r in md.cache_records()] == ["key/1"]


def test_put_cache_replaces(md: Metadata) -> None:
    md.put_cache("k", {"v": 1}, refs=[_layer(D1)])
    md.put_cache("k", {"v": 2}, refs=[_layer(D2)])
    (record,) = md.cache_records()
    assert (record.record, [r.digest for r in record.refs]) == ({"v": 2}, [D2])


def test_delete_cache_only_if_unchanged(md: Metadata) -> None:
    md.put_cache("k", {"v": 1})
    (old,) = md.cache_records()
    time.sleep(0.01)
    md.put_cache("k", {"v": 2})
    assert md.delete_cache("k", created=old.created) is False
    assert md.delete_cache("k") is True
    assert md.delete_cache("k") is False
    assert md.cache_records() == []


def test_put_cache_is_all_or_nothing(md: Metadata) -> None:
    def refs() -> Iterator[Descriptor]:
        yield _layer(D1)
        raise RuntimeError("source failed midway")

    with pytest.raises(RuntimeError):
        md.put_cache("k", {"v": 1}, refs=refs())
    with pytest.raises(TypeError):
        md.put_cache("k", {"v": object()})
    with pytest.raises(ValueError):
        md.put_cache("k", {"v": float("nan")})
    with pytest.raises(ValueError):
        md.put_cache("", {})
    assert md.cache_records() == []
    assert md.get_cache("k") is None


def test_malformed_cache_record_is_a_miss(md: Metadata, caplog: pytest.LogCaptureFixture) -> None:
    md.put_cache("good", {"v": 1})
    md.put_cache("bad", {"v": 1})
    db = sqlite3.connect(md.path)
    db.execute("UPDATE cache SET record = '{truncated' WHERE key = 'bad'")
    db.commit()
    db.close()
    with caplog.at_level(logging.WARNING, "store.metadata"):
        assert md.get_cache("bad") is None
        assert [r.key for r in md.cache_records()] == ["good"]
    assert "cache record bad is malformed" in caplog.text


# -- snapshot records --------------------------------------------------------


def test_snapshot_records(md: Metadata) -> None:
    base = md.put_snapshot("base-active")
    assert (base.key, base.parent, base.kind) == ("base-active", None, "active")
    with pytest.raises(AlreadyExists):
        md.put_snapshot("base-active")
    with pytest.raises(StoreError, match="not committed"):
        md.put_snapshot("child", parent="base-active")
    with pytest.raises(NotFound):
        md.put_snapshot("child", parent="nope")
    with pytest.raises(ValueError, match="kind"):
        md.put_snapshot("x", kind="frozen")

    with md.lease() as lease:
        lease.add_snapshot("base-active")
        committed = md.commit_snapshot("base-active", "sha256:chain1")
        assert md.leased_snapshots() == {"sha256:chain1"}
    assert (committed.kind, md.get_snapshot("sha256:chain1").kind) == ("committed", "committed")
    with pytest.raises(NotFound):
        md.get_snapshot("base-active")
    with pytest.raises(StoreError, match="only an active"):
        md.commit_snapshot("sha256:chain1", "again")

    md.put_snapshot("work", parent="sha256:chain1")
    md.put_snapshot("look", parent="sha256:chain1", kind="view")
    assert {(s.key, s.parent, s.kind) for s in md.snapshots()} == {
        ("sha256:chain1", None, "committed"),
        ("work", "sha256:chain1", "active"),
        ("look", "sha256:chain1", "view"),
    }
    with pytest.raises(AlreadyExists):
        md.commit_snapshot("work", "look")
    with pytest.raises(StoreError, match="has children"):
        md.delete_snapshot("sha256:chain1")
    md.delete_snapshot("work")
    md.delete_snapshot("look")
    md.delete_snapshot("sha256:chain1")
    with pytest.raises(NotFound):
        md.delete_snapshot("sha256:chain1")
    assert md.snapshots() == []
