"""save / load / import_rootfs without external tools: round trips, and hostile archives refused whole."""

from __future__ import annotations

import datetime
import gzip
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from store.compression import Compression, compressor, decompressor
from store.content import read_blob, write_blob
from store.descriptor import Descriptor, MediaType
from store.digest import Digest
from store.errors import (
    AlreadyExists,
    DigestMismatch,
    InvalidReference,
    LimitExceeded,
    MalformedDocument,
    NotFound,
    SizeMismatch,
    StoreError,
    UnsafeArchiveEntry,
    UnsupportedMediaType,
)
from store.image import Index, Manifest, canonical_json, parse_config, parse_manifest
from store.local import LocalContentStore
from store.reference import parse_reference
from store.rootfs import import_rootfs
from store.tags import REF_NAME, TagStore
from store.transfer import LoadedImage, load, save
from tests.store import hostile_tar as ht

CREATED = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)


def _tar(entries: list[tuple[str, bytes | None]], *, kind: Callable[[tarfile.TarInfo], None] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


ROOTFS = _tar(
    [("bin", None), ("bin/hello", b"#!/bin/sh\necho hello\n"), ("etc", None), ("etc/passwd", b"root:x:0:0::/:\n")]
)
OTHER_ROOTFS = _tar([("other", b"other image\n")])


def _compressed(data: bytes, kind: Compression) -> bytes:
    sink = io.BytesIO()
    with compressor(kind, sink) as out:
        out.write(data)
    return sink.getvalue()


@pytest.fixture
def store(tmp_path: Path) -> LocalContentStore:
    return LocalContentStore(tmp_path / "store")


@pytest.fixture
def image(store: LocalContentStore) -> Descriptor:
    return import_rootfs(store, io.BytesIO(ROOTFS), "demo:1", created=CREATED)


def _snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every path under the store with its mode and content hash: 'the store is unchanged' made testable."""
    out = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory, name)
            st = path.lstat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
            out[str(path.relative_to(root))] = (st.st_mode, digest)
    return out


def _members(archive: bytes) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return [(m, tar.extractfile(m).read() if m.isreg() else None) for m in tar.getmembers()]  # type: ignore[union-attr]


def _rebuild(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _saved(store: LocalContentStore, image: Descriptor, tmp_path: Path, fmt: str = "oci") -> bytes:
    path = tmp_path / f"saved-{fmt}.tar"
    save(store, [("demo:1", image)], path, format=fmt)  # type: ignore[arg-type]
    return path.read_bytes()


def _blob_member(
    members: list[tuple[tarfile.TarInfo, bytes | None]], media_type: str, image: LocalContentStore, manifest: Descriptor
) -> int:
    """Index of the member holding the manifest's layer (LAYER) or config (CONFIG) or the manifest itself."""
    parsed = parse_manifest(read_blob(image, manifest), manifest)
    wanted = {MediaType.CONFIG: parsed.config.digest, MediaType.MANIFEST: manifest.digest}.get(
        media_type, parsed.layers[0].digest
    )
    return next(i for i, (m, _) in enumerate(members) if m.name == f"blobs/sha256/{wanted.hex}")


# ---- import_rootfs -------------------------------------------------------------


def test_import_rootfs_makes_a_one_layer_image(store: LocalContentStore, image: Descriptor) -> None:
    manifest = parse_manifest(read_blob(store, image), image)
    config = parse_config(read_blob(store, manifest.config), manifest.config)
    assert image.media_type == MediaType.MANIFEST
    assert manifest.layers[0].media_type == MediaType.LAYER_ZSTD
    assert config.diff_ids == (Digest.of(ROOTFS),)  # the uncompressed tar, byte for byte
    assert config.os == "linux" and config.architecture
    assert config.created == "2024-01-02T03:04:05Z"
    assert len(config.history) == 1 and config.history[0].created_by == "pybuild import"
    assert TagStore(store.root).get("demo:1") == image


@pytest.mark.parametrize("kind", [Compression.GZIP, Compression.ZSTD])
def test_import_rootfs_reads_compressed_tarballs(tmp_path: Path, kind: Compression) -> None:
    plain = import_rootfs(LocalContentStore(tmp_path / "a"), io.BytesIO(ROOTFS), None, created=CREATED)
    path = tmp_path / "rootfs.tar.x"
    path.write_bytes(_compressed(ROOTFS, kind))
    packed = import_rootfs(LocalContentStore(tmp_path / "b"), path, None, created=CREATED)
    assert packed == plain  # same diff_id, same zstd layer, same config: the same manifest


def test_import_rootfs_can_store_gzip_layers(store: LocalContentStore) -> None:
    descriptor = import_rootfs(store, io.BytesIO(ROOTFS), "g:1", compression=Compression.GZIP, created=CREATED)
    manifest = parse_manifest(read_blob(store, descriptor), descriptor)
    assert manifest.layers[0].media_type == MediaType.LAYER_GZIP
    assert gzip.decompress(read_blob(store, manifest.layers[0], limit=1 << 20)) == ROOTFS


@pytest.mark.parametrize(
    ("data", "error", "fragment"),
    [
        (_tar([("../escape", b"x")]), UnsafeArchiveEntry, "rootfs: entry '../escape': its name leaves the root"),
        (_tar([("a/../../escape", b"x")]), UnsafeArchiveEntry, "leaves the root"),
        (_tar([("x" * 5000, b"x")]), LimitExceeded, "its name is longer than 4096 bytes"),
        (_tar([("/etc/passwd", b"x")]), UnsafeArchiveEntry, "rootfs: entry '/etc/passwd': its name is absolute"),
        (
            ht.archive(ht.symlink(b"l", b"/etc"), ht.file(b"l/passwd", b"x")),
            UnsafeArchiveEntry,
            "entry 'l/passwd': it goes through the symbolic link 'l' -> '/etc', which leads out of the root",
        ),
        (ht.archive(ht.hardlink(b"l", b"../x")), UnsafeArchiveEntry, "entry 'l': its hard link target '../x' leaves the root"),
        (b"not a tar at all" * 100, MalformedDocument, "rootfs: not a tar archive"),
        (b"", MalformedDocument, "rootfs: empty, not a tar archive"),
        (ht.archive(ht.pax({b"comment": b"1" * 100_000}) + ht.file(b"f")), MalformedDocument, "rootfs: .*digits"),
        (_tar([("f", b"x" * 2000)])[:1024], MalformedDocument, "rootfs: tar stream ends .* in entry 'f' .truncated"),
        (gzip.compress(b"garbage" * 100), MalformedDocument, "rootfs"),
    ],
)
def test_import_rootfs_refuses_bad_tarballs(
    store: LocalContentStore, data: bytes, error: type[StoreError], fragment: str
) -> None:
    before = _snapshot(store.root)
    with pytest.raises(error, match=fragment) as caught:
        import_rootfs(store, io.BytesIO(data), "bad:1")
    assert "\n" not in str(caught.value)
    assert _snapshot(store.root) == before


def test_import_rootfs_keeps_links_out_of_the_root_verbatim(store: LocalContentStore) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        link = tarfile.TarInfo("link")
        link.type, link.linkname = tarfile.SYMTYPE, "../../../etc/passwd"  # contained when followed, not refused
        tar.addfile(link)
        run = tarfile.TarInfo("var/run")
        run.type, run.linkname = tarfile.SYMTYPE, "/run"
        tar.addfile(run)
    descriptor = import_rootfs(store, io.BytesIO(buffer.getvalue()), "ok:1")
    layer = parse_manifest(read_blob(store, descriptor), descriptor).layers[0]
    with store.open(layer) as raw, tarfile.open(fileobj=decompressor(Compression.ZSTD, raw, limit=1 << 20), mode="r|") as tar:
        assert [(m.name, m.linkname) for m in tar] == [("link", "../../../etc/passwd"), ("var/run", "/run")]


# ---- save and load round trips -----------------------------------------------------


@pytest.mark.parametrize("fmt", ["oci", "oci-dir"])
def test_oci_round_trip_keeps_every_digest(
    store: LocalContentStore, image: Descriptor, tmp_path: Path, fmt: str
) -> None:
    dest = tmp_path / "out"
    save(store, [("demo:1", image), ("demo:2", image)], dest, format=fmt)  # type: ignore[arg-type]
    other = LocalContentStore(tmp_path / "other")
    loaded = load(other, dest)
    assert loaded == [LoadedImage(parse_reference("demo:1"), image), LoadedImage(parse_reference("demo:2"), image)]
    assert sorted(i.digest for i in other.walk()) == sorted(i.digest for i in store.walk())
    assert TagStore(other.root).get("demo:2") == image
    assert not (other.root / "staging").exists()


def test_oci_archive_names_images_like_skopeo_expects(
    store: LocalContentStore, image: Descriptor, tmp_path: Path
) -> None:
    members = {m.name: data for m, data in _members(_saved(store, image, tmp_path))}
    assert json.loads(members["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    (entry,) = json.loads(members["index.json"])["manifests"]
    assert entry["annotations"][REF_NAME] == "docker.io/library/demo:1"
    assert entry["digest"] == str(image.digest)
    names = [m.name for m, _ in _members(_saved(store, image, tmp_path))]
    assert names[0] == "oci-layout" and names[-1] == "index.json"
    assert _saved(store, image, tmp_path) == _saved(store, image, tmp_path)  # deterministic bytes


def test_save_with_gzip_rewrites_layers_and_keeps_diff_ids(
    store: LocalContentStore, image: Descriptor, tmp_path: Path
) -> None:
    save(store, [("demo:1", image)], tmp_path / "gz.tar", compression=Compression.GZIP)
    other = LocalContentStore(tmp_path / "other")
    (loaded,) = load(other, tmp_path / "gz.tar")
    assert loaded.descriptor.digest != image.digest
    old, new = (parse_manifest(read_blob(s, d), d) for s, d in ((store, image), (other, loaded.descriptor)))
    assert new.layers[0].media_type == MediaType.LAYER_GZIP
    assert new.config == old.config  # same config blob: same diff_ids, same image id
    assert gzip.decompress(read_blob(other, new.layers[0], limit=1 << 20)) == ROOTFS


@pytest.mark.parametrize("compression", [None, Compression.GZIP])
def test_docker_round_trip_keeps_config_and_diff_ids(
    store: LocalContentStore, image: Descriptor, tmp_path: Path, compression: Compression | None
) -> None:
    save(store, [("demo:1", image)], tmp_path / "d.tar", format="docker", compression=compression)
    members = {m.name: data for m, data in _members((tmp_path / "d.tar").read_bytes())}
    (entry,) = json.loads(members["manifest.json"])
    assert entry["RepoTags"] == ["docker.io/library/demo:1"]
    assert json.loads(members["repositories"]) == {"demo": {"1": entry["Layers"][0].split("/")[0]}}
    layer = members[entry["Layers"][0]]
    assert (gzip.decompress(layer) if compression else layer) == ROOTFS
    other = LocalContentStore(tmp_path / "other")
    (loaded,) = load(other, tmp_path / "d.tar")
    assert loaded.descriptor == image  # recompressed to zstd as the import did: the very same manifest
    assert str(loaded.reference) == "docker.io/library/demo:1"


def test_docker_load_can_keep_layers_uncompressed(store: LocalContentStore, image: Descriptor, tmp_path: Path) -> None:
    save(store, [("demo:1", image)], tmp_path / "d.tar", format="docker")
    other = LocalContentStore(tmp_path / "other")
    (loaded,) = load(other, tmp_path / "d.tar", compression=Compression.NONE)
    manifest = parse_manifest(read_blob(other, loaded.descriptor), loaded.descriptor)
    assert manifest.layers[0] == Descriptor(MediaType.LAYER, Digest.of(ROOTFS), len(ROOTFS))


@pytest.mark.parametrize("kind", [Compression.GZIP, Compression.ZSTD])
def test_load_reads_compressed_archives_and_streams(
    store: LocalContentStore, image: Descriptor, tmp_path: Path, kind: Compression
) -> None:
    archive = _compressed(_saved(store, image, tmp_path), kind)
    other = LocalContentStore(tmp_path / "other")
    (loaded,) = load(other, io.BytesIO(archive))
    assert loaded.descriptor == image


def test_load_twice_is_harmless(store: LocalContentStore, image: Descriptor, tmp_path: Path) -> None:
    archive = tmp_path / "a.tar"
    save(store, [("demo:1", image)], archive)
    before = _snapshot(store.root)
    load(store, archive)
    assert _snapshot(store.root) == before


def test_several_images_in_one_archive(store: LocalContentStore, image: Descriptor, tmp_path: Path) -> None:
    second = import_rootfs(store, io.BytesIO(OTHER_ROOTFS), "other:1", created=CREATED)
    for fmt in ("oci", "docker"):
        archive = tmp_path / f"two-{fmt}.tar"
        save(store, [("demo:1", image), ("other:1", second), (None, second)], archive, format=fmt)  # type: ignore[arg-type]
        target = LocalContentStore(tmp_path / f"target-{fmt}")
        loaded = load(target, archive)
        assert {(str(i.reference), i.descriptor.digest) for i in loaded if i.reference} == {
            ("docker.io/library/demo:1", image.digest),
            ("docker.io/library/other:1", second.digest),
        }
        assert [str(r) for r, _ in TagStore(target.root).list()] == [
            "docker.io/library/demo:1",
            "docker.io/library/other:1",
        ]


def test_lease_sees_every_published_blob(store: LocalContentStore, image: Descriptor, tmp_path: Path) -> None:
    class Lease:
        def __init__(self) -> None:
            self.digests: list[Digest] = []

        def add_blob(self, digest: Digest) -> None:
            self.digests.append(digest)

    lease = Lease()
    other = LocalContentStore(tmp_path / "other")
    load(other, io.BytesIO(_saved(store, image, tmp_path)), lease=lease)
    assert set(lease.digests) == {i.digest for i in other.walk()}
    assert lease.digests[-1] == image.digest  # the manifest is published last


# ---- save refusals --------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["oci", "docker", "oci-dir"])
def test_save_reports_the_bytes_it_writes(store: LocalContentStore, image: Descriptor, tmp_path: Path, fmt: str) -> None:
    seen: list[int] = []
    out = tmp_path / "out"
    save(store, [("demo:1", image)], out, format=fmt, progress=seen.append)  # type: ignore[arg-type]
    if fmt == "oci-dir":
        written = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    else:
        with tarfile.open(out) as tar:
            written = sum(m.size for m in tar if m.isreg())
    assert sum(seen) == written > 0


def test_save_fails_before_writing_when_a_blob_is_missing(
    store: LocalContentStore, image: Descriptor, tmp_path: Path
) -> None:
    manifest = parse_manifest(read_blob(store, image), image)
    store.delete(manifest.layers[0].digest)
    for fmt in ("oci", "oci-dir", "docker"):
        with pytest.raises(NotFound, match=f"layer 0 {manifest.layers[0].digest}: not in the store"):
            save(store, [("demo:1", image)], tmp_path / fmt, format=fmt)  # type: ignore[arg-type]
    assert sorted(os.listdir(tmp_path)) == ["store"]


def test_save_refuses_a_tampered_layer_and_leaves_no_file(
    store: LocalContentStore, image: Descriptor, tmp_path: Path
) -> None:
    layer = parse_manifest(read_blob(store, image), image).layers[0]
    path = store.blob_path(layer.digest)
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    for fmt in ("oci", "docker"):
        with pytest.raises(StoreError, match=str(layer.digest)):
            save(store, [("demo:1", image)], tmp_path / f"x-{fmt}.tar", format=fmt)  # type: ignore[arg-type]
    assert sorted(os.listdir(tmp_path)) == ["store"]


def test_save_refusals(store: LocalContentStore, image: Descriptor, tmp_path: Path) -> None:
    (tmp_path / "exists").mkdir()
    with pytest.raises(AlreadyExists):
        save(store, [("demo:1", image)], tmp_path / "exists", format="oci-dir")
    with pytest.raises(ValueError, match="unknown archive format"):
        save(store, [("demo:1", image)], tmp_path / "x", format="zip")  # type: ignore[arg-type]
    with pytest.raises(UnsupportedMediaType, match="not zstd"):
        save(store, [("demo:1", image)], tmp_path / "x", format="docker", compression=Compression.ZSTD)
    index = write_blob(store, canonical_json(Index(manifests=(image,))), MediaType.INDEX)
    with pytest.raises(UnsupportedMediaType, match="single-platform"):
        save(store, [("multi:1", index)], tmp_path / "x", format="docker")
    save(store, [("multi:1", index)], tmp_path / "multi.tar")  # an OCI archive carries indexes
    (loaded,) = load(LocalContentStore(tmp_path / "other"), tmp_path / "multi.tar")
    assert loaded.descriptor == index


# ---- hostile archives: each refused whole, the store unchanged --------------------------


def _hostile_oci(store: LocalContentStore, image: Descriptor, tmp_path: Path, case: str) -> bytes:
    archive = _saved(store, image, tmp_path)
    members = _members(archive)
    layer = _blob_member(members, MediaType.LAYER, store, image)
    if case == "dotdot":
        members.append((tarfile.TarInfo("../evil"), b"x"))
    elif case == "absolute":
        members.insert(0, (tarfile.TarInfo("/tmp/evil"), b"x"))
    elif case == "symlink":
        info, _ = members[layer]
        link = tarfile.TarInfo(info.name)
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        members[layer] = (link, None)
    elif case == "hardlink":
        info, _ = members[layer]
        link = tarfile.TarInfo(info.name)
        link.type, link.linkname = tarfile.LNKTYPE, "index.json"
        members[layer] = (link, None)
    elif case == "device":
        device = tarfile.TarInfo("blobs/sha256/dev")
        device.type = tarfile.CHRTYPE
        members.append((device, None))
    elif case == "missing-blob":
        del members[layer]
    elif case == "wrong-bytes":
        info, data = members[layer]
        members[layer] = (info, data[:-1] + bytes([data[-1] ^ 1]))  # type: ignore[index]
    elif case == "duplicate":
        members.insert(layer + 1, members[layer])
    elif case == "bad-layout-version":
        members[0] = (members[0][0], b'{"imageLayoutVersion":"9.9"}')
    elif case == "no-layout-file":
        del members[0]
    elif case in ("ref-dotdot", "ref-sneaky"):
        index_json = json.loads(members[-1][1])  # type: ignore[arg-type]
        index_json["manifests"][0]["annotations"] = {REF_NAME: "../../x" if case == "ref-dotdot" else "a:b/../../c"}
        members[-1] = (members[-1][0], json.dumps(index_json).encode())
    elif case == "bad-digest":
        index_json = json.loads(members[-1][1])  # type: ignore[arg-type]
        index_json["manifests"][0]["digest"] = "sha256:../../../../etc/passwd"
        members[-1] = (members[-1][0], json.dumps(index_json).encode())
    elif case == "config-as-image":
        index_json = json.loads(members[-1][1])  # type: ignore[arg-type]
        index_json["manifests"][0]["mediaType"] = MediaType.CONFIG
        members[-1] = (members[-1][0], json.dumps(index_json).encode())
    elif case == "many-entries":
        index_json = json.loads(members[-1][1])  # type: ignore[arg-type]
        index_json["manifests"] *= 1025
        members[-1] = (members[-1][0], json.dumps(index_json).encode())
    elif case in ("big-manifest", "layer-count", "short-size", "tag-twice"):
        manifest = parse_manifest(read_blob(store, image), image)
        if case == "tag-twice":
            manifest = Manifest(config=manifest.config, layers=manifest.layers, annotations={"another": "image"})
        elif case == "big-manifest":
            manifest = Manifest(config=manifest.config, layers=manifest.layers, annotations={"pad": "x" * (5 << 20)})
        elif case == "layer-count":
            manifest = Manifest(config=manifest.config, layers=manifest.layers * 2)
        data = canonical_json(manifest)
        size = len(data) + (1 if case == "short-size" else 0)
        entry = Descriptor(MediaType.MANIFEST, Digest.of(data), size).to_json()
        if case != "short-size":
            members.insert(1, (tarfile.TarInfo(f"blobs/sha256/{Digest.of(data).hex}"), data))
        if case == "tag-twice":
            entry["annotations"] = {REF_NAME: "demo:1"}
            entry = [json.loads(members[-1][1])["manifests"][0], entry]  # type: ignore[arg-type, assignment]
        manifests = entry if isinstance(entry, list) else [entry]
        members[-1] = (members[-1][0], json.dumps({"schemaVersion": 2, "manifests": manifests}).encode())
    elif case == "truncated":
        start = archive.index(members[layer][0].name.encode())  # the layer's tar header
        return archive[: start + 512 * 3 + 100]  # cut inside its data
    elif case == "not-a-tar":
        return b"hello, this is not a tar archive" * 100
    elif case == "empty":
        return b""
    elif case == "neither":
        return _tar([("README", b"hi")])
    return _rebuild(members)


HOSTILE_OCI = [
    ("dotdot", UnsafeArchiveEntry, "unsafe member name '../evil'"),
    ("absolute", UnsafeArchiveEntry, "unsafe member name '/tmp/evil'"),
    ("symlink", UnsafeArchiveEntry, "is a link or special file"),
    ("hardlink", UnsafeArchiveEntry, "is a link or special file"),
    ("device", UnsafeArchiveEntry, "is a link or special file"),
    ("missing-blob", MalformedDocument, "layer 0 sha256:[0-9a-f]{64}: blob missing from"),
    ("wrong-bytes", DigestMismatch, "member blobs/sha256/[0-9a-f]{64}: content is sha256:"),
    ("duplicate", MalformedDocument, "appears twice"),
    ("bad-layout-version", MalformedDocument, "oci-layout version '9.9'"),
    ("no-layout-file", MalformedDocument, "index.json without an oci-layout"),
    ("ref-dotdot", InvalidReference, r"manifests\[0\]: invalid reference '../../x'"),
    ("ref-sneaky", InvalidReference, "invalid reference 'a:b/../../c'"),
    ("big-manifest", LimitExceeded, "manifest sha256:[0-9a-f]{64}: 52[0-9]{5} bytes is more than the 4194304"),
    ("layer-count", MalformedDocument, "manifest lists 2 layers but its config has 1 diff_ids"),
    ("short-size", SizeMismatch, "descriptor says"),
    ("bad-digest", MalformedDocument, "index.json: .*invalid digest 'sha256:../../../../etc/passwd'"),
    ("config-as-image", UnsupportedMediaType, "is not an image manifest or index"),
    ("many-entries", LimitExceeded, "index.json lists more than 1024 images"),
    ("tag-twice", MalformedDocument, "tag docker.io/library/demo:1 names two different images"),
    ("truncated", MalformedDocument, "without an end-of-archive marker in entry 'blobs/sha256/[0-9a-f]{64}' .truncated"),
    ("not-a-tar", MalformedDocument, "not a tar archive"),
    ("empty", MalformedDocument, "empty, not a tar archive"),
    ("neither", MalformedDocument, "neither an OCI layout"),
]


@pytest.mark.parametrize(("case", "error", "pattern"), HOSTILE_OCI, ids=[c[0] for c in HOSTILE_OCI])
def test_hostile_oci_archive_is_refused_and_store_unchanged(
    store: LocalContentStore, image: Descriptor, tmp_path: Path, case: str, error: type[StoreError], pattern: str
) -> None:
    caught = _refused(_hostile_oci(store, image, tmp_path, case), tmp_path, error, pattern)
    assert str(caught).startswith(str(tmp_path / "hostile.tar"))  # names the archive, then the member or digest


def _refused(archive: bytes, tmp_path: Path, error: type[StoreError], pattern: str) -> StoreError:
    """Load `archive` into a store holding another image: it must fail with one line and change nothing."""
    path = tmp_path / "hostile.tar"
    path.write_bytes(archive)
    target = LocalContentStore(tmp_path / "target")
    import_rootfs(target, io.BytesIO(OTHER_ROOTFS), "keep:1", created=CREATED)
    before = _snapshot(target.root)
    with pytest.raises(error, match=pattern) as caught:
        load(target, path)
    assert "\n" not in str(caught.value)
    assert _snapshot(target.root) == before
    return caught.value


def _hostile_docker(store: LocalContentStore, image: Descriptor, tmp_path: Path, case: str) -> bytes:
    members = _members(_saved(store, image, tmp_path, "docker"))
    at = next(i for i, (m, _) in enumerate(members) if m.name == "manifest.json")
    entries = json.loads(members[at][1])  # type: ignore[arg-type]
    layer = next(i for i, (m, _) in enumerate(members) if m.name.endswith("/layer.tar"))
    config = next(i for i, (m, _) in enumerate(members) if m.name.endswith(".json") and m.name != "manifest.json")
    if case == "layer-path":
        entries[0]["Layers"] = ["../../canary/victim"]
    elif case == "config-path":
        entries[0]["Config"] = "/etc/passwd"
    elif case == "bad-tag":
        entries[0]["RepoTags"] = ["Bad:tag"]
    elif case == "diff-id":
        info, data = members[layer]
        members[layer] = (info, data[:-1] + b"x")  # type: ignore[index]
    elif case == "config-bytes":
        info, data = members[config]
        members[config] = (info, data.replace(b"linux", b"Linux"))  # type: ignore[union-attr]
    elif case == "layer-count":
        entries[0]["Layers"] *= 2
    elif case == "not-a-list":
        entries = {"Config": "x"}
    members[at] = (members[at][0], json.dumps(entries).encode())
    return _rebuild(members)


HOSTILE_DOCKER = [
    ("layer-path", MalformedDocument, r"manifest.json\[0\]: names '../../canary/victim', which is not in the archive"),
    ("config-path", MalformedDocument, "names '/etc/passwd', which is not in the archive"),
    ("bad-tag", InvalidReference, r"RepoTags\[0\]: invalid reference 'Bad:tag'"),
    ("diff-id", DigestMismatch, "uncompressed content is sha256:.*but the config's diff_id is"),
    ("config-bytes", DigestMismatch, "holds sha256:.*not what its name says"),
    ("layer-count", MalformedDocument, "2 layers but the config has 1 diff_ids"),
    ("not-a-list", MalformedDocument, "expected an array of images"),
]


@pytest.mark.parametrize(("case", "error", "pattern"), HOSTILE_DOCKER, ids=[c[0] for c in HOSTILE_DOCKER])
def test_hostile_docker_archive_is_refused_and_store_unchanged(
    store: LocalContentStore, image: Descriptor, tmp_path: Path, case: str, error: type[StoreError], pattern: str
) -> None:
    _refused(_hostile_docker(store, image, tmp_path, case), tmp_path, error, pattern)


def test_tag_hijack_needs_replace_tags(store: LocalContentStore, image: Descriptor, tmp_path: Path) -> None:
    path = tmp_path / "hijack.tar"
    save(store, [("library/alpine:latest", image)], path, format="docker")
    target = LocalContentStore(tmp_path / "target")
    alpine = import_rootfs(target, io.BytesIO(OTHER_ROOTFS), "alpine", created=CREATED)
    before = _snapshot(target.root)
    with pytest.raises(AlreadyExists, match=f"tag docker.io/library/alpine:latest already names {alpine.digest}"):
        load(target, path)
    assert _snapshot(target.root) == before
    (loaded,) = load(target, path, replace_tags=True)
    assert TagStore(target.root).get("alpine") == loaded.descriptor


def test_hostile_layout_directory(store: LocalContentStore, image: Descriptor, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    save(store, [("demo:1", image)], layout, format="oci-dir")
    layer = parse_manifest(read_blob(store, image), image).layers[0]
    blob = layout / "blobs" / "sha256" / layer.digest.hex
    secret = tmp_path / "secret"
    secret.write_bytes(blob.read_bytes())
    blob.unlink()
    blob.symlink_to(secret)  # a symlinked blob is refused even when its bytes are right
    target = LocalContentStore(tmp_path / "target")
    before = _snapshot(target.root)
    with pytest.raises(UnsafeArchiveEntry, match=f"blobs/sha256/{layer.digest.hex}: not a plain file"):
        load(target, layout)
    assert _snapshot(target.root) == before
    blob.unlink()
    blob.write_bytes(b"tampered")
    with pytest.raises(SizeMismatch):
        load(target, layout)
    blob.unlink()
    with pytest.raises(MalformedDocument, match="blob missing from"):
        load(target, layout)
    assert _snapshot(target.root) == before
