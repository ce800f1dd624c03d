"""TagStore: tags as index.json entries with full reference names, updated atomically under a lock."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest

from store.descriptor import Descriptor, MediaType
from store.digest import Digest
from store.errors import AlreadyExists, InvalidReference, MalformedDocument, NotFound
from store.image import parse_index
from store.reference import parse_reference
from store.tags import CONTAINERD_NAME, REF_NAME, TagStore, entry_reference

M1 = Descriptor(MediaType.MANIFEST, Digest.of(b"m1"), 100)
M2 = Descriptor(MediaType.MANIFEST, Digest.of(b"m2"), 200)
INDEX = Descriptor(MediaType.INDEX, Digest.of(b"i"), 300)


def _index(root: Path) -> dict:
    return json.loads((root / "index.json").read_bytes())


def test_new_store_is_an_oci_layout(tmp_path: Path) -> None:
    TagStore(tmp_path)
    assert json.loads((tmp_path / "oci-layout").read_bytes()) == {"imageLayoutVersion": "1.0.0"}
    assert _index(tmp_path) == {"schemaVersion": 2, "mediaType": MediaType.INDEX, "manifests": []}
    assert TagStore(tmp_path).list() == []


def test_set_writes_the_full_name_in_both_annotations(tmp_path: Path) -> None:
    tags = TagStore(tmp_path)
    tags.set("busybox", M1)
    (entry,) = _index(tmp_path)["manifests"]
    assert entry["annotations"] == {
        REF_NAME: "docker.io/library/busybox:latest",
        CONTAINERD_NAME: "docker.io/library/busybox:latest",
    }
    assert entry["digest"] == str(M1.digest) and entry["size"] == 100 and entry["mediaType"] == MediaType.MANIFEST
    data = (tmp_path / "index.json").read_bytes()
    parse_index(data)  # strict parse of what we wrote
    assert b" " not in data


def test_get_matches_any_spelling_of_the_name(tmp_path: Path) -> None:
    tags = TagStore(tmp_path)
    tags.set("docker.io/library/busybox:latest", M1)
    for spelling in (
        "busybox",
        "busybox:latest",
        "library/busybox",
        "index.docker.io/library/busybox:latest",
        f"busybox@{M1.digest}",
        f"busybox:latest@{M1.digest}",
    ):
        assert tags.get(spelling) == M1, spelling
    assert tags.get("busybox").annotations == {}  # the naming annotations are the store's, not the image's
    for missing in ("busybox:other", "other", f"busybox@{M2.digest}", f"busybox:latest@{M2.digest}"):
        with pytest.raises(NotFound, match="not found"):
            tags.get(missing)


def test_set_replaces_and_list_keeps_order(tmp_path: Path) -> None:
    tags = TagStore(tmp_path)
    tags.set("a", M1)
    tags.set("b:1", M2)
    tags.set("localhost:5000/c/d:t", INDEX)
    tags.set("a", M2)
    assert [(str(r), d.digest) for r, d in tags.list()] == [
        ("docker.io/library/a:latest", M2.digest),
        ("docker.io/library/b:1", M2.digest),
        ("localhost:5000/c/d:t", INDEX.digest),
    ]


def test_remove(tmp_path: Path) -> None:
    tags = TagStore(tmp_path)
    tags.set("a", M1)
    tags.set("b", M1)
    assert tags.remove("a:latest") == M1
    assert [str(r) for r, _ in tags.list()] == ["docker.io/library/b:latest"]
    with pytest.raises(NotFound, match="image docker.io/library/a:latest: not found"):
        tags.remove("a")


def test_set_many_without_replace_is_all_or_nothing(tmp_path: Path) -> None:
    tags = TagStore(tmp_path)
    tags.set("a", M1)
    before = (tmp_path / "index.json").read_bytes()
    with pytest.raises(AlreadyExists, match=f"^tag docker.io/library/a:latest already names {M1.digest}"):
        tags.set_many([("new", M2), ("a", M2)], replace=False)
    assert (tmp_path / "index.json").read_bytes() == before
    tags.set_many([("a", M1), ("new", M2)], replace=False)  # the same image again is no conflict
    assert {str(r): d for r, d in tags.list()} == {"docker.io/library/a:latest": M1, "docker.io/library/new:latest": M2}


@pytest.mark.parametrize(
    ("ref", "descriptor", "fragment"),
    [
        (f"busybox@{M1.digest}", M1, "needs a name:tag"),
        (f"busybox:1@{M2.digest}", M1, f"the image is {M1.digest}"),
        ("busybox", Descriptor(MediaType.CONFIG, M1.digest, 1), "not a manifest or index"),
        ("Bad", M1, "lower-case"),
    ],
)
def test_set_refuses_what_is_not_a_tag(tmp_path: Path, ref: str, descriptor: Descriptor, fragment: str) -> None:
    tags = TagStore(tmp_path)
    with pytest.raises(InvalidReference, match=fragment):
        tags.set(ref, descriptor)
    assert tags.list() == []


def test_name_with_matching_digest_is_tagged_without_it(tmp_path: Path) -> None:
    tags = TagStore(tmp_path)
    tags.set(f"busybox:1@{M1.digest}", M1)
    assert [str(r) for r, _ in tags.list()] == ["docker.io/library/busybox:1"]


def test_entries_written_by_other_tools_are_kept(tmp_path: Path) -> None:
    foreign = [
        {"mediaType": MediaType.MANIFEST, "digest": str(M1.digest), "size": 100, "urls": ["https://x"]},
        {
            "mediaType": MediaType.MANIFEST,
            "digest": str(M2.digest),
            "size": 200,
            "annotations": {REF_NAME: "busybox:latest"},
        },  # skopeo copy ... oci:STORE:busybox:latest
        {
            "mediaType": MediaType.MANIFEST,
            "digest": str(M2.digest),
            "size": 200,
            "annotations": {REF_NAME: "not a name!"},
        },
    ]
    (tmp_path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (tmp_path / "index.json").write_text(
        json.dumps({"schemaVersion": 2, "manifests": foreign, "annotations": {"keep": "me"}})
    )
    tags = TagStore(tmp_path)
    assert tags.get("docker.io/library/busybox:latest") == M2
    assert [str(r) for r, _ in tags.list()] == ["docker.io/library/busybox:latest"]
    tags.set("busybox", M1)  # replaces skopeo's short-named entry in place
    tags.set("other", M2)
    index = _index(tmp_path)
    assert index["annotations"] == {"keep": "me"}
    assert index["manifests"][0] == foreign[0]
    assert index["manifests"][1]["annotations"][REF_NAME] == "docker.io/library/busybox:latest"
    assert index["manifests"][1]["digest"] == str(M1.digest)
    assert index["manifests"][2] == foreign[2]
    assert len(index["manifests"]) == 4


def test_containerd_name_wins_over_a_bare_ref_name() -> None:
    raw = {"annotations": {REF_NAME: "latest", CONTAINERD_NAME: "docker.io/library/busybox:1"}}
    assert entry_reference(raw) == parse_reference("busybox:1")
    assert entry_reference({"annotations": {REF_NAME: "x/y:2"}}) == parse_reference("x/y:2")
    assert entry_reference({}) is None


@pytest.mark.parametrize(
    ("index", "layout", "message"),
    [
        (b"{", b'{"imageLayoutVersion":"1.0.0"}', "invalid JSON"),
        (
            b'{"schemaVersion":2,"manifests":[{"digest":"sha256:../x"}]}',
            b'{"imageLayoutVersion":"1.0.0"}',
            "missing or invalid mediaType",
        ),
        (b'{"schemaVersion":2,"manifests":[]}', b'{"imageLayoutVersion":"9.9"}', "not an OCI image layout"),
    ],
)
def test_malformed_layout_is_refused(tmp_path: Path, index: bytes, layout: bytes, message: str) -> None:
    (tmp_path / "index.json").write_bytes(index)
    (tmp_path / "oci-layout").write_bytes(layout)
    with pytest.raises(MalformedDocument, match=message):
        TagStore(tmp_path).list()


def test_no_temporary_files_are_left(tmp_path: Path) -> None:
    tags = TagStore(tmp_path)
    for i in range(5):
        tags.set(f"a:{i}", M1)
    assert sorted(os.listdir(tmp_path)) == ["index.json", "index.json.lock", "oci-layout"]


def _writer(root: str, worker: int, count: int) -> None:
    tags = TagStore(root)
    for i in range(count):
        tags.set(f"w{worker}:{i}", M1 if i % 2 else M2)


def _reader(root: str, rounds: int, failures: multiprocessing.Queue) -> None:
    for _ in range(rounds):
        try:
            TagStore(root).list()
        except Exception as exc:  # noqa: BLE001  (a torn file would show here)
            failures.put(repr(exc))
            return


def test_concurrent_writers_lose_nothing_and_readers_never_see_a_torn_file(tmp_path: Path) -> None:
    TagStore(tmp_path)
    context = multiprocessing.get_context("fork")
    failures: multiprocessing.Queue = context.Queue()
    workers = [context.Process(target=_writer, args=(str(tmp_path), w, 15)) for w in range(4)]
    readers = [context.Process(target=_reader, args=(str(tmp_path), 200, failures)) for _ in range(2)]
    for process in workers + readers:
        process.start()
    for process in workers + readers:
        process.join(60)
        assert process.exitcode == 0
    assert failures.empty()
    names = {str(r) for r, _ in TagStore(tmp_path).list()}
    assert names == {f"docker.io/library/w{w}:{i}" for w in range(4) for i in range(15)}
