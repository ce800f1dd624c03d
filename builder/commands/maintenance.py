"""`pybuild prune` and `pybuild store verify`: keeping the store small and sound."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .images import human_size, open_store

if TYPE_CHECKING:
    from ..console import Console

__all__ = ["prune", "store"]


def prune(args: dict[str, object], console: Console) -> int:
    report = open_store(args).prune(keep_cache=not args["cache"], dry_run=bool(args["dry_run"]))
    verb = "would free" if report.dry_run else "freed"
    console.print(
        f"{len(report.removed)} blob{'s' * (len(report.removed) != 1)} no image, cache record or build needs: "
        f"{verb} {human_size(report.bytes_freed)}"
    )
    if report.ingests_removed:
        console.print(f"{report.ingests_removed} abandoned ingest files: {verb} {human_size(report.ingest_bytes_freed)}")
    if report.cache_dropped:
        console.print(f"{len(report.cache_dropped)} build cache records dropped")
    if report.snapshots_removed:
        state = "would be forgotten" if report.dry_run else "forgotten"
        console.print(f"{len(report.snapshots_removed)} snapshot records of builds that are gone: {state}")
    if report.leases_reaped:
        console.print(f"{len(report.leases_reaped)} leases of finished or dead builds released")
    for digest in report.missing:
        console.warn(f"blob {digest} is referenced but missing: run `pybuild store verify`")
    return 0


def store(args: dict[str, object], console: Console) -> int:
    action = str(args["action"])
    if action != "verify":
        from ..argv import UsageError

        raise UsageError(f"unknown store action {action!r}: the store command knows `verify`")
    the_store = open_store(args)
    problems = the_store.verify()
    for problem in problems:
        console.print(f"{problem.kind}: {problem.message}")
    blobs = sum(1 for _ in the_store.content.walk())
    if problems:
        console.print(f"store {the_store.root}: {len(problems)} problem{'s' * (len(problems) != 1)} in {blobs} blobs")
        return 3
    console.print(f"store {the_store.root}: {blobs} blobs verified, every image complete")
    return 0
