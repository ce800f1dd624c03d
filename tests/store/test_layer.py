"""store.layer: write_layer / apply_layer / unpack_layer against a real LocalContentStore.

Round trips compare whole trees (tests/store/treespec.describe); the hostile
layers check that nothing lands beside the target and that a failed unpack
leaves neither `dest` nor its staging directory behind.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import subprocess
from pathlib import Path

import pytest

from store.archive import WHITEOUT_OPAQUE, Limits
from store.compression import Compression, decompressor
from store.content import write_blob
from store.descriptor import Descriptor, MediaType
from store.digest import Digest
from store.errors import DigestMismatch, LimitExceeded, MalformedDocument, StoreError, UnsafeArchiveEntry
from store.layer import Layer, apply_layer, unpack_layer, write_layer
from store.local import LocalContentStore
from tests.store import hostile_tar as ht
from tests.store.treespec import describe, rich_tree, snapshot

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="device nodes and trusted.* xattrs need root")


@pytest.fixture
def store(tmp_path: Path) -> LocalContentStore:
    return LocalContentStore(tmp_path / "store")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    rich_tree(root, devices=ROOT)
    return root


def uncompressed(store: LocalContentStore, layer: Layer) -> bytes:
    kind = Compression.of_media_type(layer.descriptor.media_type)
    with store.open(layer.descriptor) as blob, decompressor(kind, blob, limit=1 << 30) as stream:
        return stream.read()


def ingest_is_empty(store: LocalContentStore) -> bool:
    return not any(store.ingest_dir.iterdir())


@pytest.mark.parametrize("compression", list(Compression), ids=lambda c: c.value)
def test_round_trip(store: LocalContentStore, tree: Path, tmp_path: Path, compression: Compression) -> None:
    layer = write_layer(tree, store, compression=compression)
    assert layer.descriptor.media_type == compression.layer_media_type
    data = uncompressed(store, layer)
    assert len(data) == layer.size_uncompressed
    assert Digest.of(data) == layer.diff_id
    applied = unpack_layer(store, layer.descriptor, layer.diff_id, tmp_path / "out")
    assert describe(tmp_path / "out") == describe(tree)
    assert applied.size == layer.size_uncompressed and applied.skipped == ()
    assert ingest_is_empty(store)


def test_same_tree_same_blobs(store: LocalContentStore, tree: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(tree), str(copy)], check=True)
    layers = {c: write_layer(tree, store, compression=c) for c in Compression}
    for compression, layer in layers.items():
        assert write_layer(tree, store, compression=compression) == layer
        assert write_layer(copy, store, compression=compression) == layer
    # One tar whatever the compression: one diffID, identical decompressed bytes.
    assert len({layer.diff_id for layer in layers.values()}) == 1
    assert len({uncompressed(store, layer) for layer in layers.values()}) == 1
    assert layers[Compression.NONE].descriptor.digest == layers[Compression.NONE].diff_id


def test_source_date_epoch_clamps_mtimes(store: LocalContentStore, tmp_path: Path) -> None:
    root = tmp_path / "t"
    (root / "d").mkdir(parents=True)
    (root / "d" / "new").write_text("n")
    (root / "old").write_text("o")
    os.utime(root / "d" / "new", (2_000_000_000, 2_000_000_000))
    os.utime(root / "d", (2_000_000_000, 2_000_000_000))
    os.utime(root / "old", (1_000_000_000, 1_000_000_000))
    layer = write_layer(root, store, source_date_epoch=1_500_000_000)
    unpack_layer(store, layer.descriptor, layer.diff_id, tmp_path / "out")
    times = {row[0]: row[9] for row in describe(tmp_path / "out")}
    assert times == {"d": 1_500_000_000, "d/new": 1_500_000_000, "old": 1_000_000_000}
    os.utime(root / "d" / "new", (1_900_000_000, 1_900_000_000))  # still past the epoch
    assert write_layer(root, store, source_date_epoch=1_500_000_000) == layer


def test_wrong_diff_id_leaves_nothing(store: LocalContentStore, tree: Path, tmp_path: Path) -> None:
    layer = write_layer(tree, store)
    wrong = Digest.of(b"something else")
    dest = tmp_path / "out"
    with pytest.raises(DigestMismatch) as caught:
        unpack_layer(store, layer.descriptor, wrong, dest)
    assert caught.value.expected == wrong and caught.value.actual == layer.diff_id
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store", "tree"]


def test_wrong_diff_id_is_found_before_directory_modes_are_set(
    store: LocalContentStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As a user without CAP_DAC_OVERRIDE, a staging tree with 0555 directories
    # could not be removed; the check runs while directories are still 0700.
    data = ht.archive(ht.directory(b"ro", mode=0o555), ht.file(b"ro/f", b"x"))
    desc = raw_layer(store, data)
    seen = []
    real_fchmod = os.fchmod
    monkeypatch.setattr(os, "fchmod", lambda fd, mode: (seen.append(mode), real_fchmod(fd, mode)))
    with pytest.raises(DigestMismatch):
        unpack_layer(store, desc, Digest.of(b"other"), tmp_path / "out")
    assert 0o555 not in seen
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def test_unpack_refuses_an_existing_dest(store: LocalContentStore, tree: Path, tmp_path: Path) -> None:
    layer = write_layer(tree, store)
    (tmp_path / "out").mkdir()
    with pytest.raises(StoreError, match="exists already"):
        unpack_layer(store, layer.descriptor, layer.diff_id, tmp_path / "out")


def test_unpacked_root_is_readable_by_all(store: LocalContentStore, tree: Path, tmp_path: Path) -> None:
    layer = write_layer(tree, store)
    unpack_layer(store, layer.descriptor, layer.diff_id, tmp_path / "out")
    assert stat.S_IMODE(os.stat(tmp_path / "out").st_mode) == 0o755


def test_failed_write_leaves_no_ingest(store: LocalContentStore, tmp_path: Path) -> None:
    root = tmp_path / "t"
    root.mkdir()
    (root / "a").write_text("a")
    (root / ".wh.z").write_text("")
    with pytest.raises(UnsafeArchiveEntry):
        write_layer(root, store)
    assert ingest_is_empty(store) and not list(store.walk())


# --------------------------------------------------------------------------- layers on layers


@needs_root
def test_overlay_upper_layer_flattens_onto_its_base(store: LocalContentStore, tmp_path: Path) -> None:
    base = tmp_path / "base"
    for path in ("etc/keep", "etc/gone", "etc/gone-too", "opt/app/old", "opt/app/sub/old", "var/x"):
        (base / path).parent.mkdir(parents=True, exist_ok=True)
        (base / path).write_text(path)
    upper = tmp_path / "upper"
    (upper / "etc").mkdir(parents=True)
    os.mknod(upper / "etc" / "gone", stat.S_IFCHR, 0)
    (upper / "etc" / "gone-too").write_bytes(b"")
    os.setxattr(upper / "etc" / "gone-too", "trusted.overlay.whiteout", b"")
    (upper / "etc" / "new").write_text("new")
    (upper / "opt" / "app" / "sub").mkdir(parents=True)
    os.setxattr(upper / "opt" / "app", "trusted.overlay.opaque", b"y")
    (upper / "opt" / "app" / "sub" / "fresh").write_text("fresh")
    (upper / "var").mkdir()
    os.mknod(upper / "var" / "x", stat.S_IFCHR, 0)
    lower_layer = write_layer(base, store)
    upper_layer = write_layer(upper, store, overlay_upper=True)
    with_opaque = [m for m in uncompressed(store, upper_layer).split(b"\0") if WHITEOUT_OPAQUE.encode() in m]
    assert with_opaque
    flat = tmp_path / "flat"
    unpack_layer(store, lower_layer.descriptor, lower_layer.diff_id, flat)
    apply_layer(store, upper_layer.descriptor, flat, diff_id=upper_layer.diff_id)
    assert sorted(row[0] for row in describe(flat)) == [
        "etc",
        "etc/keep",
        "etc/new",
        "opt",
        "opt/app",
        "opt/app/sub",
        "opt/app/sub/fresh",
        "var",
    ]


@needs_root
def test_unpack_in_overlay_mode_writes_overlay_whiteouts(store: LocalContentStore, tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    (upper / "d").mkdir(parents=True)
    os.mknod(upper / "d" / "gone", stat.S_IFCHR, 0)
    os.setxattr(upper / "d", "trusted.overlay.opaque", b"y")
    layer = write_layer(upper, store, overlay_upper=True)
    unpack_layer(store, layer.descriptor, layer.diff_id, tmp_path / "snap", whiteouts="overlay")
    assert describe(tmp_path / "snap") == describe(upper)


# --------------------------------------------------------------------------- hostile layers


def raw_layer(store: LocalContentStore, data: bytes, compression: Compression = Compression.NONE) -> Descriptor:
    """Commit `data` (an uncompressed tar) as a layer blob, compressed as asked."""
    if compression is Compression.GZIP:
        data = gzip.compress(data, mtime=0)
    elif compression is Compression.ZSTD:
        from store.compression import compressor

        out = io.BytesIO()
        with compressor(Compression.ZSTD, out) as sink:  # type: ignore[arg-type]
            sink.write(data)
        data = out.getvalue()
    return write_blob(store, data, compression.layer_media_type)


@pytest.fixture
def canary(tmp_path: Path):
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "victim").write_text("CANARY-victim")
    before = snapshot(canary)
    yield canary
    assert snapshot(canary) == before, "the canary changed"


@pytest.mark.parametrize("compression", list(Compression), ids=lambda c: c.value)
def test_hostile_layer_changes_nothing_outside(
    store: LocalContentStore, tmp_path: Path, canary: Path, compression: Compression
) -> None:
    data = ht.archive(ht.file(b"ok", b"fine"), ht.symlink(b"l", os.fsencode(canary)), ht.file(b"l/pwn", b"pwned"))
    desc = raw_layer(store, data, compression)
    with pytest.raises(UnsafeArchiveEntry) as caught:
        unpack_layer(store, desc, Digest.of(data), tmp_path / "out")
    assert caught.value.entry == "l/pwn"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["canary", "store"]


def test_a_lower_layers_link_out_resolves_inside(store: LocalContentStore, tmp_path: Path, canary: Path) -> None:
    lower = ht.archive(ht.directory(b"var"), ht.symlink(b"var/run", os.fsencode(canary)))
    upper = ht.archive(ht.file(b"var/run/pid", b"1"))
    out = tmp_path / "out"
    unpack_layer(store, raw_layer(store, lower), Digest.of(lower), out)
    apply_layer(store, raw_layer(store, upper), out, diff_id=Digest.of(upper))
    assert (out / str(canary).lstrip("/") / "pid").read_bytes() == b"1"  # as `var/run -> /run` would in a container
    assert os.readlink(out / "var" / "run") == str(canary)


def test_truncated_archive(store: LocalContentStore, tmp_path: Path) -> None:
    data = ht.archive(ht.file(b"first", b"1"), ht.file(b"second", b"2" * 5000))[:1800]
    desc = raw_layer(store, data)
    with pytest.raises(MalformedDocument, match="'second'"):
        unpack_layer(store, desc, Digest.of(data), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_compression_must_match_the_media_type(store: LocalContentStore, tmp_path: Path) -> None:
    data = ht.archive(ht.file(b"f", b"x"))
    zstd = raw_layer(store, data, Compression.ZSTD)
    lying = Descriptor(MediaType.LAYER_GZIP, zstd.digest, zstd.size)
    with pytest.raises(MalformedDocument):
        unpack_layer(store, lying, Digest.of(data), tmp_path / "out")


def test_gzip_bomb(store: LocalContentStore, tmp_path: Path) -> None:
    size = 64 << 20
    with store.writer() as writer:
        with gzip.GzipFile(fileobj=writer, mode="wb", compresslevel=1, mtime=0) as bomb:  # type: ignore[arg-type]
            zeros = bytes(1 << 20)
            for n in range(8):  # each entry is small enough; together they are not
                bomb.write(ht.header(b"zeros%d" % n, size=size // 8))
                for _ in range(size // 8 >> 20):
                    bomb.write(zeros)  # streamed: no big file is ever built
        info = writer.commit()
    desc = Descriptor(MediaType.LAYER_GZIP, info.digest, info.size)
    assert desc.size < size // 100
    with pytest.raises(LimitExceeded, match="decompresses to more than .*in entry 'zeros1'"):
        unpack_layer(store, desc, Digest.of(b""), tmp_path / "out", limits=Limits(max_size=16 << 20))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def test_zstd_frame_asking_for_a_2_gib_window(store: LocalContentStore, tmp_path: Path) -> None:
    # Magic, frame header descriptor (no single segment), window descriptor
    # exponent 21 (2^31), then one raw last block of 8 bytes.
    frame = b"\x28\xb5\x2f\xfd" + b"\x00" + bytes([21 << 3]) + (1 | (8 << 3)).to_bytes(3, "little") + bytes(8)
    desc = write_blob(store, frame, MediaType.LAYER_ZSTD)
    with pytest.raises(LimitExceeded, match="window"):
        unpack_layer(store, desc, Digest.of(b""), tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def test_wrong_blob_bytes_are_caught(store: LocalContentStore, tree: Path, tmp_path: Path) -> None:
    layer = write_layer(tree, store, compression=Compression.NONE)
    path = store.blob_path(layer.descriptor.digest)
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[600] ^= 1  # inside the first file's data: the tar still parses
    path.write_bytes(bytes(data))
    with pytest.raises(DigestMismatch):
        unpack_layer(store, layer.descriptor, layer.diff_id, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_apply_without_diff_id_reports_what_it_read(store: LocalContentStore, tree: Path, tmp_path: Path) -> None:
    layer = write_layer(tree, store, compression=Compression.GZIP)
    target = tmp_path / "flat"
    target.mkdir()
    applied = apply_layer(store, layer.descriptor, target)
    assert applied.size == layer.size_uncompressed
    assert applied.entries == len(describe(tree))
    assert hashlib.sha256(uncompressed(store, layer)).hexdigest() == layer.diff_id.hex
