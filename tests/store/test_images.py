"""store.images.Store: where the store lives, and finding images by tag, digest, id or prefix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from store.content import write_blob
from store.descriptor import Descriptor, MediaType
from store.errors import InvalidReference, NotFound, StoreError
from store.image import Index, canonical_json
from store.images import Store, default_root
from store.rootfs import import_rootfs


def test_default_root() -> None:
    assert default_root({"PYBUILD_STORE": "/s"}, 1000) == Path("/s")
    assert default_root({}, 0) == Path("/var/lib/pybuild")
    assert default_root({"XDG_DATA_HOME": "/x"}, 1000) == Path("/x/pybuild")
    assert default_root({"HOME": "/home/u"}, 1000) == Path("/home/u/.local/share/pybuild")


@pytest.fixture
def store(tmp_path: Path, busybox_rootfs: Path) -> Store:
    s = Store(tmp_path / "store")
    import_rootfs(s.content, busybox_rootfs, "busybox")
    return s


def test_store_root_is_private_and_an_oci_layout(store: Store) -> None:
    assert store.root.stat().st_mode & 0o077 == 0
    assert json.loads((store.root / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    assert (store.root / "index.json").exists()


def test_resolve_by_tag_digest_id_and_prefix(store: Store) -> None:
    ref, descriptor = store.resolve("busybox")
    assert str(ref) == "docker.io/library/busybox:latest"
    image = store.image("docker.io/library/busybox:latest")
    for name in (str(descriptor.digest), descriptor.digest.hex, descriptor.digest.hex[:8], image.id.hex[:8], str(image.id)):
        assert store.resolve(name)[1] == descriptor, name
    assert store.image(image.id.hex[:5]).names == (ref,)


def test_resolve_errors(store: Store) -> None:
    with pytest.raises(NotFound, match="docker.io/library/alpine:latest: not found"):
        store.resolve("alpine")
    with pytest.raises(NotFound):
        store.resolve("sha256:" + "0" * 64)
    with pytest.raises(InvalidReference):
        store.resolve("UPPERCASE")


def test_ambiguous_prefix(store: Store, busybox_rootfs: Path) -> None:
    other = import_rootfs(store.content, busybox_rootfs, "other", comment="another config, another id")
    first = store.resolve("busybox")[1].digest.hex
    common = 0
    while common < 64 and first[common] == other.digest.hex[common]:
        common += 1
    if common >= 4:
        with pytest.raises(StoreError, match="ambiguous"):
            store.resolve(first[:common])
    assert store.resolve(other.digest.hex[: max(common + 1, 4)])[1] == other


def test_an_index_resolves_to_this_hosts_manifest(store: Store) -> None:
    _, manifest = store.resolve("busybox")
    entry = Descriptor(manifest.media_type, manifest.digest, manifest.size, platform={"os": "linux", "architecture": "amd64"})
    foreign = Descriptor(manifest.media_type, manifest.digest, manifest.size, platform={"os": "linux", "architecture": "s390x"})
    index = write_blob(store.content, canonical_json(Index(manifests=(foreign, entry)).to_json()), MediaType.INDEX)
    store.tags.set("multi:1", index)
    image = store.image("multi:1")
    assert image.descriptor == index and image.manifest_descriptor.digest == manifest.digest
    only_s390x = write_blob(store.content, canonical_json(Index(manifests=(foreign,)).to_json()), MediaType.INDEX)
    store.tags.set("s390x:1", only_s390x)
    with pytest.raises(NotFound, match="no image for linux/"):
        store.image("s390x:1")


def test_an_untagged_image_is_listed_found_by_id_kept_and_removed(store: Store) -> None:
    image = store.image("busybox")
    store.untag("busybox")
    assert store.images() == []
    store.tags.add_untagged(image.descriptor)
    store.tags.add_untagged(image.descriptor)  # once only
    (dangling,) = store.images()
    assert dangling.names == () and dangling.id == image.id
    assert store.image(image.id.hex[:12]).descriptor == image.descriptor  # by id, as `pybuild run <id>`
    assert store.roots() == [image.descriptor]  # prune keeps it
    assert json.loads((store.root / "index.json").read_text())["manifests"][0].get("annotations") is None
    store.tag(image.id.hex, "named:1")  # a tag makes it no longer dangling
    assert store.tags.untagged() == [] and [n.familiar for n in store.images()[0].names] == ["named:1"]
    store.untag("named:1")
    store.tags.add_untagged(image.descriptor)
    assert store.untag(str(image.id)) == [] and store.images() == []  # rmi by id drops the entry
