"""A conformance suite any ContentStore runs (containerd's ContentSuite idea).

An implementation's test module builds a `Harness` and parametrizes over
`CHECKS`; each check gets the harness and an empty directory to root a store in.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import random
import sys
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from store.content import read_blob, write_blob
from store.descriptor import MAX_BLOB_SIZE, Descriptor, MediaType
from store.digest import Digest
from store.errors import (
    AlreadyExists,
    DigestMismatch,
    InvalidDescriptor,
    LimitExceeded,
    NotFound,
    SizeMismatch,
    StoreError,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from store.content import ContentStore, Info, Writer

__all__ = ["CHECKS", "Harness"]


@dataclass(frozen=True, slots=True)
class Harness:
    """How the suite reaches one implementation.

    open       a store rooted in a directory; opening it again (in another
               process too) gives the same store
    tamper     rewrite a committed blob's bytes at rest: tamper(store, digest, change)
    leftovers  names of temporary ingest state; empty when no ingest is open
    """

    open: Callable[[Path], ContentStore]
    tamper: Callable[[ContentStore, Digest, Callable[[bytes], bytes]], None]
    leftovers: Callable[[ContentStore], list[str]]


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic bytes that differ from seed to seed."""
    return random.Random(seed).randbytes(size)


def _ingest(store: ContentStore, data: bytes, *, chunk: int = 1000, **commit: object) -> Info:
    with store.writer() as w:
        for start in range(0, len(data), chunk):
            w.write(data[start : start + chunk])
        return w.commit(**commit)  # type: ignore[arg-type]


def _commit_accepting_existing(w: Writer, **commit: object) -> str:
    """Commit; the contract lets an existing blob be success or AlreadyExists."""
    try:
        w.commit(**commit)  # type: ignore[arg-type]
    except AlreadyExists:
        return "exists"
    return "ok"


def _descriptor(data: bytes) -> Descriptor:
    return Descriptor(MediaType.LAYER, Digest.of(data), len(data))


# -- the checks --------------------------------------------------------------


def check_ingest(h: Harness, root: Path) -> None:
    store = h.open(root)
    data = payload(10_000)
    with store.writer() as w:
        assert w.size == 0
        assert w.write(data[:4000]) == 4000
        assert w.size == 4000
        assert w.digest() == Digest.of(data[:4000])
        w.write(memoryview(data)[4000:])
        info = w.commit(size=len(data), expected=Digest.of(data))
    assert (info.digest, info.size) == (Digest.of(data), len(data))
    assert store.exists(info.digest)
    assert (store.info(info.digest).digest, store.info(info.digest).size) == (info.digest, len(data))
    assert read_blob(store, _descriptor(data)) == data
    assert h.leftovers(store) == []


def check_empty_blob(h: Harness, root: Path) -> None:
    store = h.open(root)
    info = _ingest(store, b"", size=0, expected=Digest.of(b""))
    assert info.size == 0
    assert read_blob(store, _descriptor(b"")) == b""


def check_commit_without_expectations(h: Harness, root: Path) -> None:
    store = h.open(root)
    data = payload(3000, 1)
    info = _ingest(store, data)
    assert info.digest == Digest.of(data)
    assert read_blob(store, _descriptor(data)) == data


def check_idempotent_reingest(h: Harness, root: Path) -> None:
    store = h.open(root)
    data = payload(5000, 2)
    first = _ingest(store, data, expected=Digest.of(data))
    for commit in ({"expected": Digest.of(data)}, {}, {"size": len(data)}):
        with store.writer() as w:
            w.write(data)
            assert _commit_accepting_existing(w, **commit) in ("ok", "exists")
    assert store.info(first.digest).size == len(data)
    assert read_blob(store, _descriptor(data)) == data
    assert [i.digest for i in store.walk()] == [first.digest]
    assert h.leftovers(store) == []


def _race_same_digest(h: Harness, root: Path, data: bytes, barrier: Any, results: Any) -> None:
    try:
        store = h.open(root)
        barrier.wait(timeout=20)
        with store.writer() as w:
            for start in range(0, len(data), 1 << 16):
                w.write(data[start : start + (1 << 16)])
            barrier.wait(timeout=20)  # commit at the same moment, too
            results.put(_commit_accepting_existing(w, size=len(data), expected=Digest.of(data)))
    except Exception:  # noqa: BLE001 -- reported to the parent, which fails the check
        results.put(traceback.format_exc())


def check_concurrent_ingest_two_processes(h: Harness, root: Path) -> None:
    store = h.open(root)
    data = payload(4 << 20, 3)
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(2), context.Queue()
    workers = [context.Process(target=_race_same_digest, args=(h, root, data, barrier, results)) for _ in range(2)]
    for p in workers:
        p.start()
    outcomes = [results.get(timeout=60) for _ in workers]
    for p in workers:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert all(o in ("ok", "exists") for o in outcomes), outcomes
    assert "ok" in outcomes, outcomes  # one of them published it
    assert [i.digest for i in store.walk()] == [Digest.of(data)]
    assert read_blob(store, _descriptor(data), limit=len(data)) == data
    assert h.leftovers(store) == []


def check_abort(h: Harness, root: Path) -> None:
    store = h.open(root)
    data = payload(2000, 4)
    w = store.writer()
    w.write(data)
    w.abort()
    w.abort()  # harmless twice
    with pytest.raises(StoreError):
        w.commit()
    with pytest.raises(RuntimeError), store.writer() as w2:
        w2.write(data)
        raise RuntimeError("leaving the block without commit aborts")
    assert not store.exists(Digest.of(data))
    assert list(store.walk()) == []
    assert h.leftovers(store) == []


def check_abort_after_commit_is_harmless(h: Harness, root: Path) -> None:
    store = h.open(root)
    data = payload(100, 5)
    w = store.writer()
    w.write(data)
    w.commit()
    w.abort()
    with pytest.raises(StoreError):
        w.commit()
    assert read_blob(store, _descriptor(data)) == data


def check_commit_wrong_size(h: Harness, root: Path) -> None:
    store = h.open(root)
    data = payload(3000, 6)
    for expected in (len(data) + 1, len(data) - 1, 0, MAX_BLOB_SIZE):
        with store.writer() as w:
            w.write(data)
            with pytest.raises(SizeMismatch) as caught:
                w.commit(size=expected, expected=Digest.of(data))
        assert (caught.value.expected, caught.value.actual) == (expected, len(data))
    assert not store.exists(Digest.of(data))
    assert list(store.walk()) == []
    assert h.leftovers(store) == []


def check_commit_wrong_digest(h: Harness, root: Path) -> None:
    store = h.open(root)
    data, other = payload(3000, 7), payload(3000, 8)
    wrong = [Digest.of(other), Digest.of(data[:-1]), Digest.of(data + b"x"), Digest.of(data, "sha512")]
    for expected in wrong:
        with store.writer() as w:
            w.write(data)
            with pytest.raises(DigestMismatch) as caught:
                w.commit(size=len(data), expected=expected)
        assert caught.value.expected == expected
        assert not store.exists(expected)
    assert not store.exists(Digest.of(data))
    assert list(store.walk()) == []
    assert h.leftovers(store) == []


def _read_to_end(store: ContentStore, descriptor: Descriptor, chunk: int = 4096) -> bytes:
    out = io.BytesIO()
    with store.open(descriptor) as f:
        while block := f.read(chunk):
            out.write(block)
    return out.getvalue()


def check_read_detects_flipped_byte(h: Harness, root: Path) -> None:
    store = h.open(root)
    data = payload(100_000, 9)
    _ingest(store, data)
    h.tamper(store, Digest.of(data), lambda b: b[:5000] + bytes([b[5000] ^ 1]) + b[5001:])
    with pytest.raises(DigestMismatch) as caught:
        _read_to_end(store, _descriptor(data))
    assert caught.value.expected == Digest.of(data)
    with pytest.raises(DigestMismatch):
        read_blob(store, _descriptor(data))


def check_read_detects_truncated_and_extended(h: Harness, root: Path) -> None:
    store = h.open(root)
    for seed, change in enumerate((lambda b: b[:-1], lambda b: b"", lambda b: b + b"\0", lambda b: b + b)):
        data = payload(20_000, 10 + seed)
        _ingest(store, data)
        h.tamper(store, Digest.of(data), change)
        with pytest.raises(SizeMismatch):  # at open or on the read that passes the end
            _read_to_end(store, _descriptor(data))


def check_read_with_wrong_descriptor_size(h: Harness, root: Path) -> None:
    store = h.open(root)
    data = payload(1000, 20)
    _ingest(store, data)
    for size in (len(data) - 1, len(data) + 1, 0):
        with pytest.raises(SizeMismatch):
            _read_to_end(store, Descriptor(MediaType.LAYER, Digest.of(data), size))


def check_delete(h: Harness, root: Path) -> None:
    store = h.open(root)
    data = payload(1000, 21)
    digest = _ingest(store, data).digest
    store.delete(digest)
    assert not store.exists(digest)
    with pytest.raises(NotFound):
        store.delete(digest)
    with pytest.raises(NotFound):
        store.open(_descriptor(data))
    with pytest.raises(NotFound):
        store.info(digest)
    assert _ingest(store, data).digest == digest  # ingest again after delete
    assert read_blob(store, _descriptor(data)) == data


def check_walk(h: Harness, root: Path) -> None:
    store = h.open(root)
    assert list(store.walk()) == []
    datas = [payload(size, 30 + size) for size in (0, 1, 10, 1000, 70_000)]
    for data in datas:
        _ingest(store, data)
    assert {i.digest: i.size for i in store.walk()} == {Digest.of(d): len(d) for d in datas}


def check_missing_blob(h: Harness, root: Path) -> None:
    store = h.open(root)
    d = Digest.of(b"absent")
    assert not store.exists(d)
    with pytest.raises(NotFound):
        store.info(d)
    with pytest.raises(NotFound):
        store.open(Descriptor(MediaType.CONFIG, d, 6))


def check_absurd_sizes_refused_before_io(h: Harness, root: Path) -> None:
    store = h.open(root)
    digest = str(Digest.of(b"x"))
    with _no_file_opened():
        for size in (-1, -(1 << 63), MAX_BLOB_SIZE + 1, 1 << 63, True, 1.0, "1", None):
            with pytest.raises(InvalidDescriptor):
                Descriptor.from_json({"mediaType": MediaType.LAYER, "digest": digest, "size": size})
            with pytest.raises(InvalidDescriptor):
                Descriptor(MediaType.LAYER, Digest.of(b"x"), size)  # type: ignore[arg-type]
        with pytest.raises(LimitExceeded):  # a document too big to read is refused before open()
            read_blob(store, Descriptor(MediaType.MANIFEST, Digest.of(b"x"), 9 << 20))


def check_write_blob_helper(h: Harness, root: Path) -> None:
    store = h.open(root)
    data = payload(3 << 20, 40)
    for source in (data, io.BytesIO(data), (data[i : i + 7777] for i in range(0, len(data), 7777))):
        d = write_blob(store, source, MediaType.LAYER, expected=Digest.of(data), size=len(data))
        assert d == _descriptor(data)
    with pytest.raises(DigestMismatch):
        write_blob(store, data[:-1], MediaType.LAYER, expected=Digest.of(data))
    assert [i.digest for i in store.walk()] == [Digest.of(data)]
    assert h.leftovers(store) == []


CHECKS = [f for name, f in sorted(globals().items()) if name.startswith("check_")]


# -- helpers -----------------------------------------------------------------

_opened: list[str] | None = None
_hooked = False


def _audit(event: str, args: tuple[object, ...]) -> None:
    if _opened is not None and event in ("open", "os.listdir", "os.scandir"):
        _opened.append(f"{event} {args[0]!r}")


@contextlib.contextmanager
def _no_file_opened() -> Iterator[None]:
    """Fails if anything inside the block opens or lists a file."""
    global _opened, _hooked
    if not _hooked:
        sys.addaudithook(_audit)  # cannot be removed; inert outside this block
        _hooked = True
    _opened = []
    try:
        yield
    finally:
        seen, _opened = _opened, None
    assert not seen, f"I/O before the descriptor was refused: {seen}"
