"""store.fsck: every kind of damage at rest is reported with its kind and its digest (or path)."""

from __future__ import annotations

import json
import os
import threading
import tracemalloc
from typing import TYPE_CHECKING

import pytest

from store.content import write_blob
from store.descriptor import Descriptor, MediaType
from store.digest import Digest
from store.fsck import Problem, ProblemKind, verify
from store.local import LocalContentStore
from tests.store.test_gc import blob, json_children, make_image, make_index, put_json

if TYPE_CHECKING:
    from pathlib import Path

LAYER_A, LAYER_B = blob(70_000, 1), blob(1000, 2)


@pytest.fixture
def content(tmp_path: Path) -> LocalContentStore:
    root = tmp_path / "store"
    root.mkdir(mode=0o700)
    return LocalContentStore(root)


@pytest.fixture
def index(content: LocalContentStore) -> Descriptor:
    return make_index(content, [make_image(content, [LAYER_A, LAYER_B])])


def fsck(content: LocalContentStore, *roots: Descriptor) -> list[tuple[ProblemKind, Digest | str | None]]:
    problems = verify(content, roots=roots, children=json_children(content))
    for p in problems:
        assert "\n" not in p.message and p.message in str(p)
    return sorted(((p.kind, p.digest or p.path) for p in problems), key=str)


def _rewrite(content: LocalContentStore, digest: Digest, data: bytes) -> None:
    path = content.blob_path(digest)
    os.chmod(path, 0o644)
    path.write_bytes(data)
    os.chmod(path, 0o444)


def test_a_sound_store_is_clean(content: LocalContentStore, index: Descriptor) -> None:
    assert fsck(content, index) == []
    assert fsck(content) == []  # without roots: only the blobs themselves


def test_flipped_byte(content: LocalContentStore, index: Descriptor) -> None:
    digest = Digest.of(LAYER_A)
    _rewrite(content, digest, LAYER_A[:100] + bytes([LAYER_A[100] ^ 0x10]) + LAYER_A[101:])
    assert fsck(content, index) == [(ProblemKind.CORRUPT, digest)]


def test_truncated_and_extended_blobs(content: LocalContentStore, index: Descriptor) -> None:
    _rewrite(content, Digest.of(LAYER_A), LAYER_A[:-1])
    _rewrite(content, Digest.of(LAYER_B), LAYER_B + b"\0")
    assert fsck(content, index) == sorted(
        [(ProblemKind.CORRUPT, Digest.of(LAYER_A)), (ProblemKind.CORRUPT, Digest.of(LAYER_B))], key=str
    )


def test_descriptor_with_wrong_size(content: LocalContentStore) -> None:
    layer = write_blob(content, LAYER_A, MediaType.LAYER)
    config = put_json(content, {}, MediaType.CONFIG)
    lying = {
        "schemaVersion": 2,
        "mediaType": MediaType.MANIFEST,
        "config": config.to_json(),
        "layers": [{**layer.to_json(), "size": layer.size + 1}],
    }
    manifest = put_json(content, lying, MediaType.MANIFEST)
    assert fsck(content, manifest) == [(ProblemKind.SIZE_MISMATCH, layer.digest)]
    assert fsck(content, Descriptor(MediaType.LAYER, layer.digest, 1)) == [(ProblemKind.SIZE_MISMATCH, layer.digest)]


def test_symlink_fifo_and_directory_in_place_of_blobs(content: LocalContentStore, index: Descriptor) -> None:
    a, b = Digest.of(LAYER_A), Digest.of(LAYER_B)
    os.unlink(content.blob_path(a))
    (content.root / "outside").write_bytes(LAYER_A)
    os.symlink(content.root / "outside", content.blob_path(a))
    os.unlink(content.blob_path(b))
    os.mkfifo(content.blob_path(b))
    c = Digest.of(b"dir")
    os.mkdir(content.blob_path(c))
    found: list[object] = []
    thread = threading.Thread(target=lambda: found.append(fsck(content, index)), daemon=True)
    thread.start()
    thread.join(timeout=10)
    assert found, "fsck blocked on the FIFO"
    assert found[0] == sorted(
        [(ProblemKind.NOT_REGULAR, a), (ProblemKind.NOT_REGULAR, b), (ProblemKind.NOT_REGULAR, c)], key=str
    )


def test_names_that_are_not_digests(content: LocalContentStore) -> None:
    blobs = content.root / "blobs"
    bad = [
        blobs / "sha256" / "not-hex",
        blobs / "sha256" / Digest.of(b"x").hex.upper(),
        blobs / "sha256" / Digest.of(b"x").hex[:-1],
        blobs / "sha256" / f"{Digest.of(b'x').hex}.partial",
        blobs / "md5" / "0cc175b9c0f1b6a831c399e269772661",
        blobs / "stray-file",
    ]
    (blobs / "md5").mkdir()
    for path in bad:
        path.write_bytes(b"x")
    expected = [(ProblemKind.BAD_NAME, str(p)) for p in bad if p.parent != blobs / "md5"]
    expected.append((ProblemKind.BAD_NAME, str(blobs / "md5" / "0cc175b9c0f1b6a831c399e269772661")))
    assert fsck(content) == sorted(expected, key=str)


def test_missing_referenced_blobs_and_roots(content: LocalContentStore, index: Descriptor) -> None:
    content.delete(Digest.of(LAYER_B))
    absent_root = Descriptor(MediaType.MANIFEST, Digest.of(b"never written"), 13)
    assert fsck(content, index, absent_root) == sorted(
        [(ProblemKind.MISSING, Digest.of(LAYER_B)), (ProblemKind.MISSING, absent_root.digest)], key=str
    )


def test_writable_blob(content: LocalContentStore, index: Descriptor) -> None:
    os.chmod(content.blob_path(Digest.of(LAYER_B)), 0o644)
    assert fsck(content, index) == [(ProblemKind.WRITABLE, Digest.of(LAYER_B))]


def test_unreadable_manifest(content: LocalContentStore) -> None:
    manifest = write_blob(content, json.dumps({"layers": "nope"}).encode(), MediaType.MANIFEST)
    assert fsck(content, manifest) == [(ProblemKind.UNREADABLE, manifest.digest)]


def test_stale_ingest_reported_live_one_not(content: LocalContentStore) -> None:
    stale = content.ingest_dir / "0123abcd.partial"
    stale.write_bytes(b"half")
    with content.writer() as live:
        live.write(b"in progress")
        assert fsck(content) == [(ProblemKind.STALE_INGEST, str(stale))]
        live.abort()


def test_store_root_open_to_others(content: LocalContentStore) -> None:
    os.chmod(content.root, 0o755)
    assert fsck(content) == [(ProblemKind.PERMISSIONS, str(content.root))]


def test_rehash_streams(content: LocalContentStore) -> None:
    big = write_blob(content, (blob(1 << 20, i) for i in range(48)), MediaType.LAYER)
    tracemalloc.start()
    try:
        assert verify(content, roots=[big], children=json_children(content)) == []
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"fsck held {peak} bytes at once for a {big.size}-byte blob"


def test_problem_is_a_frozen_value() -> None:
    problem = Problem(kind=ProblemKind.MISSING, digest=Digest.of(b""), message="blob …: referenced but missing")
    with pytest.raises(AttributeError):
        problem.kind = ProblemKind.CORRUPT  # type: ignore[misc]
    assert str(problem) == "missing: blob …: referenced but missing"
