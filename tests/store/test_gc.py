"""store.gc: what is marked survives, the rest goes, and a build's leased blobs survive a concurrent GC.

Also the small JSON image helpers the other store tests share (`make_image`, `json_children`).
"""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import random
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any

import pytest

import store.local
from store.content import read_blob, write_blob
from store.descriptor import Descriptor, MediaType
from store.digest import Digest
from store.errors import MalformedDocument
from store.gc import collect
from store.local import LocalContentStore
from store.metadata import Metadata

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from pathlib import Path

    from store.gc import GcReport

FORK = multiprocessing.get_context("fork")


# -- shared helpers ----------------------------------------------------------


def json_children(content: LocalContentStore) -> Callable[[Descriptor], list[Descriptor]]:
    """What an OCI manifest or index references (read verified); nothing for other blobs."""

    def children(descriptor: Descriptor) -> list[Descriptor]:
        if descriptor.media_type not in MediaType.MANIFESTS | MediaType.INDEXES:
            return []
        try:
            document = json.loads(read_blob(content, descriptor))
            if descriptor.media_type in MediaType.INDEXES:
                return [Descriptor.from_json(m) for m in document["manifests"]]
            return [Descriptor.from_json(document["config"]), *map(Descriptor.from_json, document["layers"])]
        except (ValueError, KeyError, TypeError) as exc:
            raise MalformedDocument(f"{descriptor.media_type} {descriptor.digest}: {exc!r}") from None

    return children


def put_json(content: LocalContentStore, document: object, media_type: str) -> Descriptor:
    return write_blob(content, json.dumps(document, sort_keys=True).encode(), media_type)


def make_image(content: LocalContentStore, layers: Iterable[bytes], *, tag: str = "") -> Descriptor:
    """Write layers, a config and a manifest; returns the manifest's descriptor."""
    layer_descriptors = [write_blob(content, data, MediaType.LAYER) for data in layers]
    config = put_json(content, {"tag": tag, "rootfs": {"diff_ids": []}}, MediaType.CONFIG)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MediaType.MANIFEST,
        "config": config.to_json(),
        "layers": [d.to_json() for d in layer_descriptors],
    }
    return put_json(content, manifest, MediaType.MANIFEST)


def make_index(content: LocalContentStore, manifests: Iterable[Descriptor]) -> Descriptor:
    index = {"schemaVersion": 2, "mediaType": MediaType.INDEX, "manifests": [m.to_json() for m in manifests]}
    return put_json(content, index, MediaType.INDEX)


def closure(content: LocalContentStore, roots: Iterable[Descriptor]) -> set[Digest]:
    children, seen, stack = json_children(content), set(), list(roots)
    while stack:
        d = stack.pop()
        if d.digest not in seen:
            seen.add(d.digest)
            stack.extend(children(d))
    return seen


def blob(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


# -- fixtures ----------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def content(root: Path) -> LocalContentStore:
    return LocalContentStore(root)


@pytest.fixture
def md(root: Path) -> Iterator[Metadata]:
    with Metadata(root) as metadata:
        yield metadata


def gc(content: LocalContentStore, md: Metadata, roots: Iterable[Descriptor] = (), **options: Any) -> GcReport:
    return collect(content, md, roots=roots, children=json_children(content), **options)


def present(content: LocalContentStore) -> set[Digest]:
    return {info.digest for info in content.walk()}


# -- marking and sweeping ----------------------------------------------------


def test_unreferenced_blobs_go_and_referenced_stay(content: LocalContentStore, md: Metadata) -> None:
    shared = blob(5000, 1)
    kept_image = make_image(content, [shared, blob(3000, 2)], tag="kept")
    dropped_image = make_image(content, [shared, blob(7000, 3)], tag="dropped")
    index = make_index(content, [kept_image])
    junk = write_blob(content, b"junk", MediaType.LAYER)
    wanted = closure(content, [index])
    unwanted = present(content) - wanted
    sizes = {i.digest: i.size for i in content.walk()}

    report = gc(content, md, [index])

    assert present(content) == wanted
    assert set(report.removed) == unwanted
    assert junk.digest in report.removed and dropped_image.digest in report.removed
    assert Digest.of(shared) in present(content)
    assert report.bytes_freed == sum(sizes[d] for d in unwanted)
    assert report.kept == len(wanted)
    assert (report.missing, report.leases_reaped, report.cache_dropped) == ((), (), ())
    assert gc(content, md, [index]).removed == ()  # a second run finds nothing


def test_dry_run_changes_nothing_and_reports_the_same(content: LocalContentStore, md: Metadata) -> None:
    image = make_image(content, [blob(100, 1)])
    make_image(content, [blob(100, 2)], tag="other")
    md.put_cache("old", {}, refs=[write_blob(content, b"cached", MediaType.LAYER)])
    with md.lease(ttl=0.01) as lease:
        lease.add_blob(Digest.of(b"cached"))
        time.sleep(0.02)
        before = present(content)
        dry = gc(content, md, [image], keep_cache=lambda key, record: False, dry_run=True)
        assert present(content) == before
        assert [r.key for r in md.cache_records()] == ["old"]
        assert len(md.leases()) == 1
        real = gc(content, md, [image], keep_cache=lambda key, record: False)
    assert dry.dry_run and not real.dry_run
    assert set(dry.removed) == set(real.removed) and Digest.of(b"cached") in real.removed
    assert (dry.bytes_freed, dry.leases_reaped, dry.cache_dropped) == (
        real.bytes_freed,
        real.leases_reaped,
        real.cache_dropped,
    )


def test_cache_records_keep_their_blobs_unless_dropped(content: LocalContentStore, md: Metadata) -> None:
    image = make_image(content, [blob(100, 1), blob(200, 2)])
    layer = write_blob(content, blob(300, 3), MediaType.LAYER)
    md.put_cache("image", {"kind": "stage"}, refs=[image])
    md.put_cache("step", {"kind": "step"}, refs=[layer])
    seen: list[tuple[str, dict[str, Any]]] = []

    def keep(key: str, record: dict[str, Any]) -> bool:
        seen.append((key, record))
        return record["kind"] == "stage"

    report = gc(content, md, keep_cache=keep)

    assert sorted(seen) == [("image", {"kind": "stage"}), ("step", {"kind": "step"})]
    assert present(content) == closure(content, [image])  # the record's manifest and its children
    assert report.removed == (layer.digest,)
    assert report.cache_dropped == ("step",)
    assert [r.key for r in md.cache_records()] == ["image"]


def test_missing_referenced_blob_is_reported_not_fatal(content: LocalContentStore, md: Metadata) -> None:
    image = make_image(content, [blob(100, 1), blob(100, 2)])
    content.delete(Digest.of(blob(100, 2)))
    report = gc(content, md, [image])
    assert report.missing == (Digest.of(blob(100, 2)),)
    assert present(content) == closure(content, [image]) - {Digest.of(blob(100, 2))}


def test_unreadable_manifest_stops_gc_before_any_deletion(content: LocalContentStore, md: Metadata) -> None:
    bad = write_blob(content, b"{not json", MediaType.MANIFEST)
    junk = write_blob(content, b"junk", MediaType.LAYER)
    with pytest.raises(MalformedDocument):
        gc(content, md, [bad])
    assert present(content) == {bad.digest, junk.digest}


def test_content_and_metadata_must_share_a_root(content: LocalContentStore, tmp_path: Path) -> None:
    with Metadata(tmp_path / "elsewhere") as other, pytest.raises(ValueError, match="share a root"):
        gc(content, other)


def test_only_one_collection_at_a_time(content: LocalContentStore, md: Metadata) -> None:
    done = threading.Event()
    with md.gc_lock(exclusive=True):
        thread = threading.Thread(target=lambda: (gc(content, md), done.set()))
        thread.start()
        assert not done.wait(0.3)
    assert done.wait(10)
    thread.join()


# -- ingest leftovers --------------------------------------------------------


def _abandoned(content: LocalContentStore, name: str, age: float) -> Path:
    path = content.ingest_dir / f"{name}.partial"
    path.write_bytes(b"half a blob")
    os.utime(path, (time.time() - age, time.time() - age))
    return path


def test_abandoned_ingests_go_live_ones_stay(content: LocalContentStore, md: Metadata) -> None:
    old = _abandoned(content, "old", age=60)
    fresh = _abandoned(content, "fresh", age=0)
    with content.writer() as live:
        live.write(b"in progress")
        report = gc(content, md)
        assert (report.ingests_removed, report.ingest_bytes_freed) == (2, 2 * len(b"half a blob"))
        assert not old.exists() and not fresh.exists()
        assert live.commit().size == len(b"in progress")
    assert os.listdir(content.ingest_dir) == []


def test_named_ingest_files_of_live_writers_stay(root: Path, md: Metadata) -> None:
    content = LocalContentStore(root, unnamed_ingest=False)  # as on filesystems without O_TMPFILE
    with content.writer() as live:
        live.write(b"in progress")
        assert gc(content, md).ingests_removed == 0
        assert len(os.listdir(content.ingest_dir)) == 1  # the live writer's
        live.commit()
    assert os.listdir(content.ingest_dir) == []


def test_gc_between_ingest_create_and_flock_spares_the_writer(root: Path, md: Metadata) -> None:
    content = LocalContentStore(root, unnamed_ingest=False)
    real_flock = fcntl.flock

    class RacingFcntl:  # runs a collection in the window between O_CREAT and flock
        def __getattr__(self, name: str) -> object:
            return getattr(fcntl, name)

        @staticmethod
        def flock(fd: int, operation: int) -> None:
            if operation == fcntl.LOCK_EX:  # the writer's; the collection's own probes are non-blocking
                gc(content, md)
            real_flock(fd, operation)

    store.local.fcntl = RacingFcntl()  # type: ignore[assignment]
    try:
        writer = content.writer()
    finally:
        store.local.fcntl = fcntl
    writer.write(b"data")
    writer.commit()


# -- leases ------------------------------------------------------------------


def test_leased_blob_survives_until_the_lease_ends(content: LocalContentStore, md: Metadata) -> None:
    with md.lease() as lease:
        lease.add_blob(Digest.of(b"leased"))
        write_blob(content, b"leased", MediaType.LAYER)
        write_blob(content, b"loose", MediaType.LAYER)
        assert gc(content, md).removed == (Digest.of(b"loose"),)
        assert present(content) == {Digest.of(b"leased")}
    assert gc(content, md).removed == (Digest.of(b"leased"),)


def test_expired_lease_is_reaped_and_its_blobs_go(content: LocalContentStore, md: Metadata) -> None:
    lease = md.lease(ttl=0.05)
    with content.writer() as w:
        w.write(b"short-lived")
        lease.commit(w)
    time.sleep(0.1)
    report = gc(content, md)
    assert report.leases_reaped == (lease.id,)
    assert report.removed == (Digest.of(b"short-lived"),)
    lease.release()


def _lease_and_die(root: Path, data: bytes, ready: Any) -> None:
    content, md = LocalContentStore(root), Metadata(root)
    lease = md.lease(ttl=3600)
    with content.writer() as w:
        w.write(data)
        lease.commit(w)
    ready.send(lease.id)
    os._exit(0)  # never released


def test_dead_holders_lease_is_reaped_and_its_blobs_go(content: LocalContentStore, md: Metadata, root: Path) -> None:
    here, there = FORK.Pipe()
    child = FORK.Process(target=_lease_and_die, args=(root, b"orphaned", there))
    child.start()
    lease_id = here.recv()
    child.join(timeout=20)
    assert [i.id for i in md.leases()] == [lease_id]
    report = gc(content, md)
    assert report.leases_reaped == (lease_id,)
    assert report.removed == (Digest.of(b"orphaned"),)
    assert md.leases() == []


def test_additions_during_a_collection_are_honoured(content: LocalContentStore, md: Metadata) -> None:
    late_leased = write_blob(content, b"leased after the mark", MediaType.LAYER)
    late_cached = write_blob(content, b"cached after the mark", MediaType.LAYER)
    with md.lease() as lease:

        def meanwhile(key: str, record: dict[str, Any]) -> bool:  # runs after the mark, before the sweep
            lease.add_blob(late_leased.digest)
            md.put_cache("late", {}, refs=[late_cached])
            return True

        md.put_cache("trigger", {})
        report = gc(content, md, keep_cache=meanwhile)
        assert report.removed == ()
        assert present(content) == {late_leased.digest, late_cached.digest}


def test_heartbeat_keeps_a_short_lease_alive_through_repeated_gc(content: LocalContentStore, md: Metadata) -> None:
    stop = threading.Event()
    with md.lease(ttl=0.3) as lease:
        with content.writer() as w:
            w.write(b"long step")
            lease.commit(w)

        def heartbeat() -> None:
            while not stop.wait(0.05):
                lease.refresh()

        thread = threading.Thread(target=heartbeat)
        thread.start()
        try:
            deadline = time.monotonic() + 1.2  # four ttls
            while time.monotonic() < deadline:
                assert gc(content, md).removed == ()
        finally:
            stop.set()
            thread.join()
        assert present(content) == {Digest.of(b"long step")}


def _leased_writer(root: Path, rounds: int, results: Any) -> None:
    try:
        content, md = LocalContentStore(root), Metadata(root)
        mine: list[Descriptor] = []
        with md.lease(ttl=60) as lease:
            for i in range(rounds):
                bait = f"bait {os.getpid()} {i} ".encode() * 50
                write_blob(content, bait, MediaType.LAYER)  # unleased: the GC may be deleting it right now
                for data in (bait, blob(64 << 10, os.getpid() * 1000 + i)):
                    with content.writer() as w:
                        w.write(data)
                        lease.commit(w, size=len(data))
                    mine.append(Descriptor(MediaType.LAYER, Digest.of(data), len(data)))
                for descriptor in mine[-6:]:
                    read_blob(content, descriptor)  # present and intact, or it raises
            for descriptor in mine:
                read_blob(content, descriptor)
        results.put(("ok", len(mine)))
    except Exception:  # noqa: BLE001 -- reported to the parent
        results.put(("failed", traceback.format_exc()))


def test_concurrent_leased_writer_survives_repeated_gc(content: LocalContentStore, md: Metadata, root: Path) -> None:
    results = FORK.Queue()
    writers = [FORK.Process(target=_leased_writer, args=(root, 40, results)) for _ in range(2)]
    for p in writers:
        p.start()
    runs = removed = 0
    while any(p.is_alive() for p in writers):
        report = gc(content, md)
        runs += 1
        removed += len(report.removed)
    outcomes = [results.get(timeout=30) for _ in writers]
    for p in writers:
        p.join(timeout=10)
    assert all(o[0] == "ok" for o in outcomes), outcomes
    assert runs >= 5, f"only {runs} collections ran while the writers wrote"
    assert removed > 0  # the unleased bait was fair game
    final = gc(content, md)  # the leases are released: everything goes
    assert present(content) == set()
    assert final.leases_reaped == () and md.leases() == []
    assert os.listdir(content.ingest_dir) == []


def test_staging_of_a_dead_load_goes_a_live_one_stays(content: LocalContentStore, md: Metadata) -> None:
    from store.transfer import _Staging

    dead = content.root / "staging" / "load-dead"
    (dead / "blobs" / "sha256").mkdir(parents=True)
    (dead / ".lock").touch()
    (dead / "blobs" / "sha256" / "x").write_bytes(b"1234")
    with _Staging(content) as live:
        report = gc(content, md)
        assert (report.ingests_removed, report.ingest_bytes_freed) == (1, 4)
        assert not dead.exists() and live.dir.exists()
    assert not (content.root / "staging").exists()


# -- snapshot records ----------------------------------------------------------


def test_snapshot_records_of_gone_builds_are_forgotten(content: LocalContentStore, md: Metadata) -> None:
    md.put_snapshot("sha256:chain", kind="committed")  # a cache entry: kept
    with md.lease() as lease:
        lease.add_snapshot("build-active")  # the order builders use: lease first, then put
        md.put_snapshot("build-active", parent=None)
        md.commit_snapshot("build-active", "sha256:chain2")
    md.put_snapshot("work", parent="sha256:chain2")
    md.put_snapshot("look", parent="sha256:chain2", kind="view")
    held = md.lease()
    held.add_snapshot("running")
    md.put_snapshot("running", parent="sha256:chain2")
    expired = md.lease(ttl=0.05)
    expired.add_snapshot("stale")
    md.put_snapshot("stale")
    time.sleep(0.1)

    dry = gc(content, md, dry_run=True)
    assert sorted(dry.snapshots_removed) == ["look", "stale", "work"]
    assert len(md.snapshots()) == 6  # a dry run forgets nothing

    report = gc(content, md)
    assert sorted(report.snapshots_removed) == ["look", "stale", "work"]
    assert sorted(s.key for s in md.snapshots()) == ["running", "sha256:chain", "sha256:chain2"]
    held.release()
    expired.release()
    assert gc(content, md).snapshots_removed == ("running",)
