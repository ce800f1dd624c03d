"""Mark-and-sweep garbage collection of one store: blobs, ingest leftovers, leases, cache and snapshot records.

The protocol that keeps a concurrent build's blobs alive:

    a writer                                    collect()
    1. takes a lease before it ingests          1. flocks <root>/gc.lock exclusively
    2. adds each digest to the lease BEFORE     2. reaps leases that expired or whose
       committing it (Lease.commit), or before     holder process died
       relying on a blob that already exists    3. marks roots and kept cache records with
    3. makes its blobs reachable (a tag, a         their children, and every lease's blobs
       cache record), then releases the lease:  4. sweeps in batches; in one metadata write
       release flocks gc.lock shared, so it        transaction per batch it re-reads which
       waits while a collection runs               digests a lease or record names, and
                                                   unlinks the others

An add_blob commits either before a batch's transaction (the re-check sees it)
or after it (the unlink came first; the writer's commit then re-creates the
blob). A lease cannot vanish during a collection, so whatever a build made
reachable after the mark is still leased when the sweep reaches it.

Snapshots follow the same order: lease the key (Lease.add_snapshot), then put
the snapshot. Active and view snapshots no lease holds are a dead build's and
are forgotten; committed ones are a cache (store.metadata) and stay.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any

from .errors import NotFound
from .log import lazy_logger

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from .descriptor import Descriptor
    from .digest import Digest
    from .local import LocalContentStore
    from .metadata import Metadata

__all__ = ["GcReport", "collect"]

log = lazy_logger(__name__)

BATCH = 256


@dataclass(frozen=True, slots=True, kw_only=True)
class GcReport:
    """What a collection removed (or, with dry_run, would remove)."""

    dry_run: bool
    kept: int  # blobs present and not removed
    removed: tuple[Digest, ...]
    bytes_freed: int
    ingests_removed: int
    ingest_bytes_freed: int
    leases_reaped: tuple[str, ...]
    cache_dropped: tuple[str, ...]
    snapshots_removed: tuple[str, ...]
    missing: tuple[Digest, ...]  # referenced but absent: `fsck` says more


def collect(
    content: LocalContentStore,
    metadata: Metadata,
    *,
    roots: Iterable[Descriptor],
    children: Callable[[Descriptor], Iterable[Descriptor]],
    keep_cache: Callable[[str, dict[str, Any]], bool] = lambda key, record: True,
    dry_run: bool = False,
) -> GcReport:
    """Collect garbage; if marking fails (a root's manifest is unreadable), nothing is deleted.

    `children(desc)` lists what a present manifest or index references.
    Ingest files and load staging directories whose process is gone (their flock is free) are removed.
    The callbacks must not release leases: that waits for this collection.
    """
    if content.root.resolve() != metadata.root.resolve():
        raise ValueError(f"content store {content.root} and metadata {metadata.root} must share a root")
    with metadata.gc_lock(exclusive=True):
        reaped = metadata.reap_leases(dry_run=dry_run)
        starts = list(roots)
        dropped = []
        for record in metadata.cache_records():
            if keep_cache(record.key, dict(record.record)):
                starts.extend(record.refs)
            else:
                dropped.append(record)
        marked, missing = _mark(content, starts, children)
        marked |= metadata.leased_blobs(excluding=reaped)  # a dry run reaps nothing, but pretends

        if not dry_run:
            for record in dropped:  # only if unchanged since it was judged
                metadata.delete_cache(record.key, created=record.created)
        present, removed, freed = _sweep(content, metadata, marked, dry_run, reaped, [r.key for r in dropped])
        ingests, ingest_bytes = _sweep_ingests(content, dry_run)
        snapshots = metadata.sweep_snapshots(excluding=reaped, dry_run=dry_run)

    report = GcReport(
        dry_run=dry_run,
        kept=present - len(removed),
        removed=tuple(removed),
        bytes_freed=freed,
        ingests_removed=ingests,
        ingest_bytes_freed=ingest_bytes,
        leases_reaped=tuple(reaped),
        cache_dropped=tuple(r.key for r in dropped),
        snapshots_removed=tuple(snapshots),
        missing=tuple(sorted(missing)),
    )
    log.info(
        "gc%s: removed %d blob(s), %d byte(s), %d ingest file(s), %d snapshot record(s); "
        "reaped %d lease(s); dropped %d cache record(s)",
        " (dry run)" if dry_run else "",
        len(removed),
        freed,
        ingests,
        len(snapshots),
        len(reaped),
        len(dropped),
    )
    return report


def _mark(
    content: LocalContentStore, starts: list[Descriptor], children: Callable[[Descriptor], Iterable[Descriptor]]
) -> tuple[set[Digest], set[Digest]]:
    marked: set[Digest] = set()
    missing: set[Digest] = set()
    stack = starts
    while stack:
        descriptor = stack.pop()
        if descriptor.digest in marked:
            continue
        marked.add(descriptor.digest)
        if not content.exists(descriptor.digest):
            log.warning("gc: %s is referenced but missing", descriptor.digest)
            missing.add(descriptor.digest)
            continue
        stack.extend(children(descriptor))
    return marked, missing


def _sweep(
    content: LocalContentStore,
    metadata: Metadata,
    marked: set[Digest],
    dry_run: bool,
    reaped: list[str],
    dropped: list[str],
) -> tuple[int, list[Digest], int]:
    removed: list[Digest] = []
    freed = 0
    present = list(content.walk())
    candidates = iter([info for info in present if info.digest not in marked])
    while batch := list(islice(candidates, BATCH)):
        with metadata.protected((i.digest for i in batch), excluding=reaped, excluding_cache=dropped) as protected:
            for info in batch:
                if info.digest in protected:
                    continue
                if not dry_run:
                    try:
                        content.delete(info.digest)
                    except (NotFound, OSError) as exc:
                        log.warning("gc: cannot remove %s: %s", info.digest, exc)
                        continue
                removed.append(info.digest)
                freed += info.size
    return len(present), removed, freed


def _sweep_ingests(content: LocalContentStore, dry_run: bool) -> tuple[int, int]:
    count = size = 0
    for directory in content.abandoned_staging():
        count += 1
        size += sum(f.stat().st_size for f in directory.rglob("*") if f.is_file() and not f.is_symlink())
        if not dry_run:
            shutil.rmtree(directory, ignore_errors=True)
    for path in content.abandoned_ingests():
        try:
            st = path.lstat()
            if not dry_run:
                path.unlink()
        except FileNotFoundError:
            continue
        count += 1
        size += st.st_size
    return count, size
