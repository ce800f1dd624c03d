"""Image documents: strict parsing of untrusted JSON, canonical writing, Docker schema 2, chain ids."""

from __future__ import annotations

import hashlib
import json
from types import MappingProxyType
from typing import Any

import pytest

from store.descriptor import Descriptor, MediaType
from store.digest import Digest
from store.errors import (
    LimitExceeded,
    MalformedDocument,
    StoreError,
    UnsupportedMediaType,
)
from store.image import (
    MAX_CONFIG_SIZE,
    MAX_MANIFEST_SIZE,
    ContainerConfig,
    Healthcheck,
    HistoryEntry,
    ImageConfig,
    Index,
    Manifest,
    canonical_json,
    chain_id,
    check_layers,
    document_limit,
    load_json,
    parse_config,
    parse_index,
    parse_manifest,
)

D1, D2, D3 = (Digest.of(x) for x in (b"one", b"two", b"three"))


def _descriptor(media_type: str, digest: Digest = D1, size: int = 3) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": str(digest), "size": size}


def _manifest(**extra: Any) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": MediaType.MANIFEST,
        "config": _descriptor(MediaType.CONFIG, D1),
        "layers": [_descriptor(MediaType.LAYER_ZSTD, D2, 10)],
        **extra,
    }


def _config(**extra: Any) -> dict[str, Any]:
    return {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [str(D3)]}, **extra}


def _bytes(value: Any) -> bytes:
    return json.dumps(value).encode()


FULL_CONFIG = ImageConfig(
    architecture="arm64",
    variant="v8",
    os="linux",
    os_version="6.1",
    os_features=("f1",),
    diff_ids=(D1, D2),
    created="2024-01-01T00:00:00Z",
    author="me",
    config=ContainerConfig(
        env=("PATH=/bin", "A=ä"),
        cmd=("sh",),
        entrypoint=(),
        working_dir="/w",
        user="1:1",
        labels=MappingProxyType({"l": "ünïcode"}),
        exposed_ports=("80/tcp",),
        volumes=("/data",),
        stop_signal="SIGTERM",
        healthcheck=Healthcheck(
            test=("CMD", "true"), interval=10**9, timeout=2, start_period=3, start_interval=4, retries=5
        ),
        on_build=("RUN x",),
        shell=("/bin/sh", "-c"),
    ),
    history=(
        HistoryEntry(created="2024-01-01T00:00:00Z", created_by="a", author="b", comment="c"),
        HistoryEntry(created_by="ENV", empty_layer=True),
        HistoryEntry(created_by="d"),
    ),
)


# ---- round trips and canonical form ---------------------------------------------


def test_config_round_trips_through_canonical_json() -> None:
    data = canonical_json(FULL_CONFIG)
    assert parse_config(data) == FULL_CONFIG
    assert canonical_json(parse_config(data)) == data


def test_canonical_json_is_sorted_compact_utf8() -> None:
    data = canonical_json({"b": [1, {"z": 1, "a": "ä"}], "a": None})
    assert data == '{"a":null,"b":[1,{"a":"ä","z":1}]}'.encode()
    assert b'": ' not in canonical_json(FULL_CONFIG)
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_config_json_uses_the_spec_field_names() -> None:
    value = json.loads(canonical_json(FULL_CONFIG))
    assert value["rootfs"] == {"type": "layers", "diff_ids": [str(D1), str(D2)]}
    assert value["os.version"] == "6.1" and value["os.features"] == ["f1"]
    assert value["config"]["ExposedPorts"] == {"80/tcp": {}}
    assert value["config"]["Healthcheck"]["StartInterval"] == 4
    assert value["config"]["Entrypoint"] == []  # set but empty differs from unset
    assert value["history"][1] == {"created_by": "ENV", "empty_layer": True}


def test_minimal_config_has_only_required_fields() -> None:
    value = json.loads(canonical_json(ImageConfig(architecture="amd64", os="linux")))
    assert value == {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}


def test_manifest_and_index_round_trip() -> None:
    manifest = parse_manifest(_bytes(_manifest(annotations={"a": "b"}, subject=_descriptor(MediaType.MANIFEST, D3))))
    assert manifest.config == Descriptor(MediaType.CONFIG, D1, 3)
    assert manifest.layers == (Descriptor(MediaType.LAYER_ZSTD, D2, 10),)
    assert manifest.subject is not None and manifest.annotations == {"a": "b"}
    assert parse_manifest(canonical_json(manifest)) == manifest
    entry = {
        **_descriptor(MediaType.MANIFEST, D2, 7),
        "platform": {"architecture": "arm", "os": "linux", "variant": "v7"},
    }
    index = parse_index(_bytes({"schemaVersion": 2, "manifests": [entry]}))
    assert index.media_type == MediaType.INDEX
    assert index.manifests[0].platform == {"architecture": "arm", "os": "linux", "variant": "v7"}
    assert parse_index(canonical_json(index)) == index
    assert isinstance(Manifest(config=manifest.config, layers=()), Manifest)
    assert isinstance(Index(manifests=()), Index)


def test_null_fields_count_as_absent() -> None:
    config = parse_config(
        _bytes(_config(config={"Cmd": None, "Env": None, "Labels": None, "Volumes": None}, history=None, author=None))
    )
    assert config.config == ContainerConfig()
    assert config.history == ()


# ---- Docker schema 2 -------------------------------------------------------


def test_docker_schema2_manifest_keeps_its_media_type() -> None:
    body = _manifest(
        mediaType=MediaType.DOCKER_MANIFEST,
        config=_descriptor(MediaType.DOCKER_CONFIG),
        layers=[_descriptor(MediaType.DOCKER_LAYER, D2)],
    )
    data = _bytes(body)
    manifest = parse_manifest(data, Descriptor(MediaType.DOCKER_MANIFEST, Digest.of(data), len(data)))
    assert manifest.media_type == MediaType.DOCKER_MANIFEST
    assert manifest.layers[0].media_type == MediaType.DOCKER_LAYER
    assert parse_manifest(data).media_type == MediaType.DOCKER_MANIFEST  # from the body when no descriptor


def test_docker_manifest_list_reads_as_index() -> None:
    entry = {
        **_descriptor(MediaType.DOCKER_MANIFEST, D2),
        "platform": {"architecture": "amd64", "os": "linux", "features": ["sse4"]},
    }
    index = parse_index(_bytes({"schemaVersion": 2, "mediaType": MediaType.DOCKER_MANIFEST_LIST, "manifests": [entry]}))
    assert index.media_type == MediaType.DOCKER_MANIFEST_LIST
    assert index.manifests[0].media_type == MediaType.DOCKER_MANIFEST


def test_docker_config_with_docker_only_fields() -> None:
    body = _config(
        container="abc",
        docker_version="24.0",
        container_config={"Cmd": ["x"]},
        config={
            "Hostname": "",
            "Cmd": ["/bin/sh"],
            "Env": ["A=1"],
            "Labels": None,
            "OnBuild": None,
            "ArgsEscaped": True,
            "Image": "sha256:…",
        },
    )
    data = _bytes(body)
    config = parse_config(data, Descriptor(MediaType.DOCKER_CONFIG, Digest.of(data), len(data)))
    assert config.media_type == MediaType.DOCKER_CONFIG
    assert config.config.cmd == ("/bin/sh",)
    assert config.config.env == ("A=1",)


# ---- refusals --------------------------------------------------------------------


def _refuse(
    parse: Any,
    data: bytes,
    fragment: str,
    descriptor: Descriptor | None = None,
    kind: type[StoreError] = MalformedDocument,
) -> str:
    with pytest.raises(kind) as caught:
        parse(data, descriptor)
    message = str(caught.value)
    assert fragment in message, message
    assert "\n" not in message
    assert str(descriptor.digest if descriptor else Digest.of(data)) in message  # names the document
    return message


MALFORMED_MANIFESTS = [
    (b"{not json", "invalid JSON"),
    (b'{"schemaVersion":2,"layers":[],"layers":[]}', "duplicate key 'layers'"),
    (
        _bytes(_manifest(config={"mediaType": MediaType.CONFIG, "digest": str(D1), "digest ": 1, "size": 3})).replace(
            b'"digest ": 1', b'"digest": "x"'
        ),
        "duplicate key 'digest'",
    ),
    (b'{"schemaVersion": NaN}', "NaN is not valid JSON"),
    (b'{"schemaVersion": Infinity}', "Infinity is not valid JSON"),
    (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "nested deeper than"),
    (b"[" * 100_000, "nested deeper than"),
    (b'{"schemaVersion": 2, "x": "\xff"}', "not UTF-8"),
    (b"\xef\xbb\xbf" + _bytes(_manifest()), "byte order mark"),
    (_bytes(_manifest()).replace(b'"size": 10', b'"size": 1e309'), "size"),
    (_bytes(_manifest()).replace(b'"size": 10', b'"size": -1'), "negative or absurd"),
    (_bytes(_manifest()).replace(b'"size": 10', b'"size": 9007199254740993000'), "negative or absurd"),
    (_bytes(_manifest()).replace(b'"size": 10', b'"size": "10"'), "size"),
    (_bytes({k: v for k, v in _manifest().items() if k != "schemaVersion"}), "schemaVersion: expected 2"),
    (_bytes(_manifest(schemaVersion=True)), "schemaVersion: expected 2"),
    (_bytes(_manifest(schemaVersion=1)), "schemaVersion 1"),
    (_bytes({"schemaVersion": 1, "name": "x", "fsLayers": []}), "Docker schema 1"),
    (b"[]", "expected a JSON object, got an array"),
    (_bytes(_manifest(layers={"a": 1})), "field layers: expected an array, got an object"),
    (_bytes(_manifest(layers=[1])), "field layers[0]: not a JSON object"),
    (_bytes({k: v for k, v in _manifest().items() if k != "config"}), "field config: missing"),
    (_bytes(_manifest(config=_descriptor(MediaType.CONFIG, D1) | {"digest": "sha256:../../x"})), "invalid digest"),
    (_bytes(_manifest(annotations={"a": 1})), "field annotations['a']: expected a string"),
    (_bytes(_manifest(mediaType=5)), "field mediaType: expected a string, got a number"),
    (_bytes(_manifest(manifests=[])), "an index, not a manifest"),
    (_bytes(_manifest(mediaType=MediaType.INDEX)), "is not a manifest"),
]


@pytest.mark.parametrize(("data", "fragment"), MALFORMED_MANIFESTS, ids=[m[1] for m in MALFORMED_MANIFESTS])
def test_malformed_manifests_are_refused_naming_digest_and_field(data: bytes, fragment: str) -> None:
    _refuse(parse_manifest, data, fragment)


MALFORMED_CONFIGS = [
    (_config(architecture=1), "field architecture: expected a string, got a number"),
    ({k: v for k, v in _config().items() if k != "os"}, "field os: missing"),
    (_config(rootfs={"type": "tar", "diff_ids": []}), "field rootfs.type: expected 'layers'"),
    (_config(rootfs={"type": "layers", "diff_ids": ["sha256:xyz"]}), "field rootfs.diff_ids[0]: invalid digest"),
    (_config(rootfs={"type": "layers"}), "field rootfs.diff_ids: missing"),
    (_config(config={"Env": ["A=1", 2]}), "field config.Env[1]: expected a string, got a number"),
    (_config(config={"Cmd": "sh"}), "field config.Cmd: expected an array, got a string"),
    (_config(config={"WorkingDir": ["/"]}), "field config.WorkingDir: expected a string, got an array"),
    (_config(config={"User": 0}), "field config.User: expected a string"),
    (_config(config={"Labels": {"a": 1}}), "field config.Labels['a']: expected a string"),
    (_config(config={"ExposedPorts": ["80"]}), "field config.ExposedPorts: expected an object"),
    (_config(config={"Volumes": {"/v": "x"}}), "field config.Volumes['/v']: expected an object"),
    (_config(config={"Healthcheck": {"Interval": "1s"}}), "field config.Healthcheck.Interval: expected a 64-bit"),
    (_config(config={"Healthcheck": {"Retries": True}}), "field config.Healthcheck.Retries"),
    (_config(config={"Healthcheck": {"Timeout": 2**63}}), "field config.Healthcheck.Timeout"),
    (_config(config={"OnBuild": [None]}), "field config.OnBuild[0]: expected a string, got null"),
    (_config(config={"Shell": [1]}), "field config.Shell[0]"),
    (_config(config={"StopSignal": 9}), "field config.StopSignal"),
    (_config(config=[]), "field config: expected an object, got an array"),
    (_config(history=[{"empty_layer": "yes"}]), "field history[0].empty_layer: expected a boolean"),
    (_config(history=["x"]), "field history[0]: expected an object, got a string"),
    (_config(history=[{"created_by": 1}]), "field history[0].created_by: expected a string"),
    (_config(created=0), "field created: expected a string"),
    (_config(mediaType=MediaType.MANIFEST), "contradicts"),
]


@pytest.mark.parametrize(("body", "fragment"), MALFORMED_CONFIGS, ids=[c[1] for c in MALFORMED_CONFIGS])
def test_malformed_configs_are_refused_naming_digest_and_field(body: dict[str, Any], fragment: str) -> None:
    data = _bytes(body)
    _refuse(parse_config, data, fragment, Descriptor(MediaType.CONFIG, Digest.of(data), len(data)))


def test_malformed_index_entries() -> None:
    bad_platform = {**_descriptor(MediaType.MANIFEST), "platform": {"os": "linux"}}
    _refuse(
        parse_index,
        _bytes({"schemaVersion": 2, "manifests": [bad_platform]}),
        "field manifests[0].platform.architecture: missing",
    )
    _refuse(parse_index, _bytes({"schemaVersion": 2, "manifests": {}}), "field manifests: expected an array")
    _refuse(parse_index, _bytes({"schemaVersion": 2}), "field manifests: missing")
    _refuse(parse_index, _bytes({"schemaVersion": 2, "manifests": [], "layers": []}), "a manifest, not an index")


def test_body_media_type_contradicting_descriptor_is_refused() -> None:
    data = _bytes(_manifest(mediaType=MediaType.DOCKER_MANIFEST))
    descriptor = Descriptor(MediaType.MANIFEST, Digest.of(data), len(data))
    message = _refuse(parse_manifest, data, "contradicts", descriptor)
    assert MediaType.DOCKER_MANIFEST in message and MediaType.MANIFEST in message


def test_body_without_media_type_takes_the_descriptors() -> None:
    data = _bytes({k: v for k, v in _manifest().items() if k != "mediaType"})
    descriptor = Descriptor(MediaType.DOCKER_MANIFEST, Digest.of(data), len(data))
    assert parse_manifest(data, descriptor).media_type == MediaType.DOCKER_MANIFEST


def test_descriptor_of_the_wrong_kind_is_refused() -> None:
    data = _bytes(_manifest())
    descriptor = Descriptor(MediaType.CONFIG, Digest.of(data), len(data))
    _refuse(parse_manifest, data, "is not a manifest", descriptor, UnsupportedMediaType)


def test_size_caps_are_checked_before_parsing() -> None:
    padding = {"annotations": {"pad": "x" * MAX_MANIFEST_SIZE}}
    _refuse(parse_manifest, _bytes(_manifest(**padding)), "more than the 4194304 allowed", kind=LimitExceeded)
    _refuse(parse_index, b" " * (MAX_MANIFEST_SIZE + 1), "more than the 4194304", kind=LimitExceeded)
    big_config = _bytes(_config(config={"Env": ["A=" + "x" * (6 << 20)]}))  # 6 MiB: a config may be 8
    assert parse_config(big_config).config.env[0].startswith("A=x")
    _refuse(parse_config, b" " * (MAX_CONFIG_SIZE + 1), "more than the 8388608", kind=LimitExceeded)
    assert document_limit(MediaType.CONFIG) == MAX_CONFIG_SIZE
    assert document_limit(MediaType.DOCKER_MANIFEST) == MAX_MANIFEST_SIZE


def test_load_json_for_other_small_files() -> None:
    assert load_json(b'[{"a":1}]', "x", limit=100) == [{"a": 1}]
    with pytest.raises(MalformedDocument, match="^archive: manifest.json: duplicate key 'a'$"):
        load_json(b'{"a":1,"a":2}', "archive: manifest.json", limit=100)
    with pytest.raises(LimitExceeded, match="more than the 3 allowed"):
        load_json(b"[1,2]", "x", limit=3)


# ---- identities and consistency -------------------------------------------------


def test_chain_id_follows_the_oci_definition() -> None:
    assert chain_id([D1]) == D1
    two = Digest("sha256", hashlib.sha256(f"{D1} {D2}".encode()).hexdigest())
    three = Digest("sha256", hashlib.sha256(f"{two} {D3}".encode()).hexdigest())
    assert chain_id([D1, D2]) == two
    assert chain_id([D1, D2, D3]) == three
    assert chain_id([chain_id([D1, D2]), D3]) == three  # extends a chain one layer at a time
    with pytest.raises(ValueError):
        chain_id([])


def test_check_layers_compares_manifest_config_and_history() -> None:
    manifest = Manifest(config=Descriptor(MediaType.CONFIG, D1, 1), layers=(Descriptor(MediaType.LAYER, D2, 1),))
    check_layers(manifest, ImageConfig(architecture="a", os="linux", diff_ids=(D2,)), "image x")
    with pytest.raises(MalformedDocument, match="^image x: manifest lists 1 layers but its config has 2 diff_ids$"):
        check_layers(manifest, ImageConfig(architecture="a", os="linux", diff_ids=(D2, D3)), "image x")
    history = (HistoryEntry(created_by="a"), HistoryEntry(created_by="b"))
    with pytest.raises(MalformedDocument, match="history has 2 non-empty layers"):
        check_layers(manifest, ImageConfig(architecture="a", os="linux", diff_ids=(D2,), history=history), "x")


def test_documents_are_frozen() -> None:
    with pytest.raises(AttributeError):
        FULL_CONFIG.os = "windows"  # type: ignore[misc]
