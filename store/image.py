"""Image documents: `Manifest`, `Index`, `ImageConfig`, read strictly from untrusted bytes and written canonically.

Parsing refuses, in one line naming the document's digest and field, oversized documents (before decoding),
bad UTF-8, duplicate keys, NaN, deep nesting and wrong types. Docker schema 2 documents read into the same
classes and keep their media type; schema 1 is refused. Nothing here touches files.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple

from .descriptor import Descriptor, MediaType
from .digest import Digest
from .errors import (
    InvalidDescriptor,
    InvalidDigest,
    LimitExceeded,
    MalformedDocument,
    UnsupportedMediaType,
)

__all__ = [
    "MAX_CONFIG_SIZE",
    "MAX_MANIFEST_SIZE",
    "ContainerConfig",
    "Healthcheck",
    "HistoryEntry",
    "ImageConfig",
    "Index",
    "Manifest",
    "canonical_json",
    "chain_id",
    "check_layers",
    "document_limit",
    "host_platform",
    "load_json",
    "parse_config",
    "parse_index",
    "parse_manifest",
]

MAX_MANIFEST_SIZE = 4 << 20  # manifests and indexes (the distribution spec's 4 MiB)
MAX_CONFIG_SIZE = 8 << 20
MAX_DEPTH = 64  # far deeper than any real document; keeps json.loads off the recursion limit

_EMPTY: Mapping[str, str] = MappingProxyType({})


# ---- the documents -------------------------------------------------------


class Manifest(NamedTuple):
    """One image for one platform: a config blob and an ordered list of layer blobs."""

    config: Descriptor
    layers: tuple[Descriptor, ...]
    media_type: str = MediaType.MANIFEST
    artifact_type: str | None = None
    subject: Descriptor | None = None
    annotations: Mapping[str, str] = _EMPTY

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": self.media_type,
            "config": self.config.to_json(),
            "layers": [layer.to_json() for layer in self.layers],
        }
        _put_optional(out, self.artifact_type, self.subject, self.annotations)
        return out


class Index(NamedTuple):
    """A list of manifests (usually one per platform), or of other indexes."""

    manifests: tuple[Descriptor, ...]
    media_type: str = MediaType.INDEX
    artifact_type: str | None = None
    subject: Descriptor | None = None
    annotations: Mapping[str, str] = _EMPTY

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": self.media_type,
            "manifests": [m.to_json() for m in self.manifests],
        }
        _put_optional(out, self.artifact_type, self.subject, self.annotations)
        return out


class Healthcheck(NamedTuple):
    """Docker's HEALTHCHECK; durations are integer nanoseconds, 0 meaning "inherit"."""

    test: tuple[str, ...] = ()
    interval: int = 0
    timeout: int = 0
    start_period: int = 0
    start_interval: int = 0
    retries: int = 0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"Test": list(self.test)} if self.test else {}
        for key, value in (
            ("Interval", self.interval),
            ("Timeout", self.timeout),
            ("StartPeriod", self.start_period),
            ("StartInterval", self.start_interval),
            ("Retries", self.retries),
        ):
            if value:
                out[key] = value
        return out


class ContainerConfig(NamedTuple):
    """The config's `config` object: how a container of the image runs.

    `cmd` and `entrypoint` are None when unset, which differs from an empty list.
    """

    env: tuple[str, ...] = ()
    cmd: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    working_dir: str = ""
    user: str = ""
    labels: Mapping[str, str] = _EMPTY
    exposed_ports: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    stop_signal: str = ""
    healthcheck: Healthcheck | None = None
    on_build: tuple[str, ...] = ()
    shell: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in (("Env", self.env), ("OnBuild", self.on_build), ("Shell", self.shell)):
            if value:
                out[key] = list(value)
        for key, value in (("Cmd", self.cmd), ("Entrypoint", self.entrypoint)):
            if value is not None:
                out[key] = list(value)
        for key, text in (("WorkingDir", self.working_dir), ("User", self.user), ("StopSignal", self.stop_signal)):
            if text:
                out[key] = text
        for key, names in (("ExposedPorts", self.exposed_ports), ("Volumes", self.volumes)):
            if names:
                out[key] = {name: {} for name in names}
        if self.labels:
            out["Labels"] = dict(self.labels)
        if self.healthcheck is not None:
            out["Healthcheck"] = self.healthcheck.to_json()
        return out


class HistoryEntry(NamedTuple):
    """How one layer (or one config-only step, `empty_layer`) came about."""

    created: str | None = None
    created_by: str | None = None
    author: str | None = None
    comment: str | None = None
    empty_layer: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            k: v
            for k, v in (
                ("created", self.created),
                ("created_by", self.created_by),
                ("author", self.author),
                ("comment", self.comment),
            )
            if v is not None
        }
        if self.empty_layer:
            out["empty_layer"] = True
        return out


class ImageConfig(NamedTuple):
    """The image config: platform, runtime defaults, layer diff_ids (uncompressed digests), history."""

    architecture: str
    os: str
    diff_ids: tuple[Digest, ...] = ()
    variant: str | None = None
    os_version: str | None = None
    os_features: tuple[str, ...] = ()
    config: ContainerConfig = ContainerConfig()
    history: tuple[HistoryEntry, ...] = ()
    created: str | None = None
    author: str | None = None
    media_type: str = MediaType.CONFIG

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "architecture": self.architecture,
            "os": self.os,
            "rootfs": {"type": "layers", "diff_ids": [str(d) for d in self.diff_ids]},
        }
        for key, value in (
            ("variant", self.variant),
            ("os.version", self.os_version),
            ("created", self.created),
            ("author", self.author),
        ):
            if value is not None:
                out[key] = value
        if self.os_features:
            out["os.features"] = list(self.os_features)
        if container := self.config.to_json():
            out["config"] = container
        if self.history:
            out["history"] = [h.to_json() for h in self.history]
        return out


def _put_optional(
    out: dict[str, Any], artifact_type: str | None, subject: Descriptor | None, annotations: Mapping[str, str]
) -> None:
    if artifact_type is not None:
        out["artifactType"] = artifact_type
    if subject is not None:
        out["subject"] = subject.to_json()
    if annotations:
        out["annotations"] = dict(annotations)


# ---- writing and identities ---------------------------------------------


def canonical_json(obj: Any) -> bytes:
    """The canonical bytes of a document (or of anything with `to_json()`, or plain JSON data)."""
    value = obj.to_json() if hasattr(obj, "to_json") else obj
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def chain_id(diff_ids: Sequence[Digest]) -> Digest:
    """The ChainID of a layer stack: the first diff_id, then sha256("<chain> <next diff_id>").

    `chain_id([parent_chain, diff_id])` extends a chain by one layer.
    """
    if not diff_ids:
        raise ValueError("chain_id of an empty layer stack")
    chain = diff_ids[0]
    for diff_id in diff_ids[1:]:
        chain = Digest("sha256", hashlib.sha256(f"{chain} {diff_id}".encode()).hexdigest())
    return chain


_MACHINES = {  # uname -m: OCI architecture and variant (the Go names the image spec uses)
    "x86_64": ("amd64", None),
    "amd64": ("amd64", None),
    "aarch64": ("arm64", "v8"),
    "arm64": ("arm64", "v8"),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i386": ("386", None),
    "i686": ("386", None),
    "ppc64le": ("ppc64le", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
}


def host_platform() -> tuple[str, str | None]:
    """This machine's OCI architecture and variant: ("amd64", None), ("arm64", "v8"), ..."""
    machine = os.uname().machine.lower()
    return _MACHINES.get(machine, (machine, None))


def document_limit(media_type: str) -> int:
    """The size cap for a document of `media_type`: 8 MiB for configs, 4 MiB for the rest."""
    return MAX_CONFIG_SIZE if media_type in MediaType.CONFIGS else MAX_MANIFEST_SIZE


def check_layers(manifest: Manifest, config: ImageConfig, where: str) -> None:
    """Refuse a manifest and config that disagree on the number of layers."""
    if len(manifest.layers) != len(config.diff_ids):
        raise MalformedDocument(
            f"{where}: manifest lists {len(manifest.layers)} layers but its config has {len(config.diff_ids)} diff_ids"
        )
    if config.history:
        built = sum(1 for h in config.history if not h.empty_layer)
        if built != len(config.diff_ids):
            raise MalformedDocument(
                f"{where}: config history has {built} non-empty layers but rootfs has {len(config.diff_ids)} diff_ids"
            )


# ---- strict parsing --------------------------------------------------------


class _FieldError(Exception):
    """A problem at a JSON path; turned into MalformedDocument naming the document."""


def parse_manifest(data: bytes, descriptor: Descriptor | None = None) -> Manifest:
    """A manifest (OCI or Docker schema 2) from untrusted bytes; `descriptor` names it and gives its type."""
    return _parse(data, descriptor, "manifest", MediaType.MANIFESTS, MediaType.MANIFEST, _manifest)


def parse_index(data: bytes, descriptor: Descriptor | None = None) -> Index:
    """An index (OCI or Docker manifest list) from untrusted bytes."""
    return _parse(data, descriptor, "index", MediaType.INDEXES, MediaType.INDEX, _index)


def parse_config(data: bytes, descriptor: Descriptor | None = None) -> ImageConfig:
    """An image config (OCI or Docker) from untrusted bytes."""
    return _parse(data, descriptor, "config", MediaType.CONFIGS, MediaType.CONFIG, _config)


def _parse(
    data: bytes, descriptor: Descriptor | None, kind: str, allowed: frozenset[str], default: str, build: Any
) -> Any:
    def where() -> str:
        return f"{kind} {descriptor.digest if descriptor else Digest.of(bytes(data))}"

    media_type = descriptor.media_type if descriptor else None
    if media_type is not None and media_type not in allowed:
        raise UnsupportedMediaType(f"{where()}: media type {media_type!r} is not a {kind}")
    limit = MAX_CONFIG_SIZE if kind == "config" else MAX_MANIFEST_SIZE
    if len(data) > limit:
        raise LimitExceeded(f"{where()}: {len(data)} bytes is more than the {limit} allowed for a {kind}", limit=limit)
    try:
        value = _load_json(data)
        if not isinstance(value, dict):
            raise _FieldError(f"expected a JSON object, got {_kind(value)}")
        body_type = _str(value, "mediaType", "")
        if body_type is not None and media_type is not None and body_type != media_type:
            raise _FieldError(f"mediaType {body_type!r} contradicts the descriptor's {media_type!r}")
        media_type = media_type or body_type or default
        if media_type not in allowed:
            raise _FieldError(f"mediaType {media_type!r} is not a {kind}")
        if kind != "config":
            _schema_version(value)
        return build(value, media_type)
    except _FieldError as exc:
        raise MalformedDocument(f"{where()}: {exc}") from None


def load_json(data: bytes, where: str, *, limit: int) -> Any:
    """Strictly parsed JSON of a small untrusted file (`index.json`, `manifest.json`); `where` names it."""
    if len(data) > limit:
        raise LimitExceeded(f"{where}: {len(data)} bytes is more than the {limit} allowed", limit=limit)
    try:
        return _load_json(data)
    except _FieldError as exc:
        raise MalformedDocument(f"{where}: {exc}") from None


def _load_json(data: bytes) -> Any:
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _FieldError(f"not UTF-8 (byte {exc.start})") from None
    if text.startswith("\ufeff"):
        raise _FieldError("starts with a byte order mark")
    if _depth_exceeds(data, MAX_DEPTH):
        raise _FieldError(f"nested deeper than {MAX_DEPTH} levels")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except _FieldError:
        raise
    except (ValueError, RecursionError) as exc:
        raise _FieldError(f"invalid JSON: {str(exc).splitlines()[0]}") from None


_STRINGS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def _depth_exceeds(data: bytes, limit: int) -> bool:
    brackets = _STRINGS.sub(b"", data).translate(None, _NOT_BRACKETS)
    if len(brackets) <= 2 * limit:
        return False
    depth = 0
    for byte in brackets:
        depth += 1 if byte in b"[{" else -1
        if depth > limit:
            return True
    return False


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _FieldError(f"duplicate key {key[:80]!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise _FieldError(f"{name} is not valid JSON")


def _schema_version(value: dict[str, Any]) -> None:
    version = value.get("schemaVersion")
    if version == 1 and not isinstance(version, bool):
        raise _FieldError("schemaVersion 1 (Docker schema 1) is not supported")
    if version != 2 or isinstance(version, bool):
        raise _FieldError(f"field schemaVersion: expected 2, got {_short(version)}")


def _manifest(value: dict[str, Any], media_type: str) -> Manifest:
    if "manifests" in value:
        raise _FieldError("has 'manifests': an index, not a manifest")
    layers = _list(value, "layers", "", required=True)
    return Manifest(
        config=_descriptor(value.get("config"), "config"),
        layers=tuple(_descriptor(d, f"layers[{i}]") for i, d in enumerate(layers)),
        media_type=media_type,
        artifact_type=_str(value, "artifactType", ""),
        subject=_descriptor(value["subject"], "subject") if value.get("subject") is not None else None,
        annotations=_string_map(value, "annotations", ""),
    )


def _index(value: dict[str, Any], media_type: str) -> Index:
    if "layers" in value or "config" in value:
        raise _FieldError("has 'layers' or 'config': a manifest, not an index")
    entries = _list(value, "manifests", "", required=True)
    manifests = tuple(_descriptor(d, f"manifests[{i}]") for i, d in enumerate(entries))
    for i, d in enumerate(manifests):
        if d.platform is not None:
            _platform(dict(d.platform), f"manifests[{i}].platform.")
    return Index(
        manifests=manifests,
        media_type=media_type,
        artifact_type=_str(value, "artifactType", ""),
        subject=_descriptor(value["subject"], "subject") if value.get("subject") is not None else None,
        annotations=_string_map(value, "annotations", ""),
    )


def _platform(value: dict[str, Any], path: str) -> None:
    _str(value, "architecture", path, required=True)
    _str(value, "os", path, required=True)
    _str(value, "variant", path)
    _str(value, "os.version", path)
    _strings(value, "os.features", path)
    _strings(value, "features", path)  # Docker manifest lists


def _config(value: dict[str, Any], media_type: str) -> ImageConfig:
    rootfs = _object(value, "rootfs", "", required=True)
    if rootfs.get("type") != "layers":
        raise _FieldError(f"field rootfs.type: expected 'layers', got {_short(rootfs.get('type'))}")
    diff_ids = []
    for i, text in enumerate(_strings(rootfs, "diff_ids", "rootfs.", required=True) or ()):
        try:
            diff_ids.append(Digest.parse(text))
        except InvalidDigest as exc:
            raise _FieldError(f"field rootfs.diff_ids[{i}]: {exc}") from None
    history = _list(value, "history", "") or []
    return ImageConfig(
        architecture=_str(value, "architecture", "", required=True),
        os=_str(value, "os", "", required=True),
        diff_ids=tuple(diff_ids),
        variant=_str(value, "variant", ""),
        os_version=_str(value, "os.version", ""),
        os_features=_strings(value, "os.features", "") or (),
        config=_container(_object(value, "config", "") or {}),
        history=tuple(_history(h, f"history[{i}].") for i, h in enumerate(history)),
        created=_str(value, "created", ""),
        author=_str(value, "author", ""),
        media_type=media_type,
    )


def _container(value: dict[str, Any]) -> ContainerConfig:
    p = "config."
    health = _object(value, "Healthcheck", p)
    return ContainerConfig(
        env=_strings(value, "Env", p) or (),
        cmd=_strings(value, "Cmd", p),
        entrypoint=_strings(value, "Entrypoint", p),
        working_dir=_str(value, "WorkingDir", p) or "",
        user=_str(value, "User", p) or "",
        labels=_string_map(value, "Labels", p),
        exposed_ports=_key_set(value, "ExposedPorts", p),
        volumes=_key_set(value, "Volumes", p),
        stop_signal=_str(value, "StopSignal", p) or "",
        healthcheck=_healthcheck(health) if health is not None else None,
        on_build=_strings(value, "OnBuild", p) or (),
        shell=_strings(value, "Shell", p) or (),
    )


def _healthcheck(value: dict[str, Any]) -> Healthcheck:
    p = "config.Healthcheck."
    return Healthcheck(
        test=_strings(value, "Test", p) or (),
        interval=_int(value, "Interval", p),
        timeout=_int(value, "Timeout", p),
        start_period=_int(value, "StartPeriod", p),
        start_interval=_int(value, "StartInterval", p),
        retries=_int(value, "Retries", p),
    )


def _history(value: Any, path: str) -> HistoryEntry:
    if not isinstance(value, dict):
        raise _FieldError(f"field {path[:-1]}: expected an object, got {_kind(value)}")
    empty = value.get("empty_layer")
    if empty is not None and not isinstance(empty, bool):
        raise _FieldError(f"field {path}empty_layer: expected a boolean, got {_kind(empty)}")
    return HistoryEntry(
        created=_str(value, "created", path),
        created_by=_str(value, "created_by", path),
        author=_str(value, "author", path),
        comment=_str(value, "comment", path),
        empty_layer=bool(empty),
    )


# Field readers: `path` is the dotted prefix of `key`; JSON null counts as absent.


def _str(obj: dict[str, Any], key: str, path: str, *, required: bool = False) -> Any:
    value = _present(obj, key, path, required)
    if value is not None and not isinstance(value, str):
        raise _FieldError(f"field {path}{key}: expected a string, got {_kind(value)}")
    return value


def _int(obj: dict[str, Any], key: str, path: str) -> int:
    value = obj.get(key)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or not -(1 << 63) <= value < 1 << 63:
        raise _FieldError(f"field {path}{key}: expected a 64-bit integer, got {_short(value)}")
    return value


def _object(obj: dict[str, Any], key: str, path: str, *, required: bool = False) -> Any:
    value = _present(obj, key, path, required)
    if value is not None and not isinstance(value, dict):
        raise _FieldError(f"field {path}{key}: expected an object, got {_kind(value)}")
    return value


def _list(obj: dict[str, Any], key: str, path: str, *, required: bool = False) -> Any:
    value = _present(obj, key, path, required)
    if value is not None and not isinstance(value, list):
        raise _FieldError(f"field {path}{key}: expected an array, got {_kind(value)}")
    return value


def _strings(obj: dict[str, Any], key: str, path: str, *, required: bool = False) -> tuple[str, ...] | None:
    items = _list(obj, key, path, required=required)
    if items is None:
        return None
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise _FieldError(f"field {path}{key}[{i}]: expected a string, got {_kind(item)}")
    return tuple(items)


def _string_map(obj: dict[str, Any], key: str, path: str) -> Mapping[str, str]:
    mapping = _object(obj, key, path)
    if not mapping:
        return _EMPTY
    for name, value in mapping.items():
        if not isinstance(value, str):
            raise _FieldError(f"field {path}{key}[{name[:80]!r}]: expected a string, got {_kind(value)}")
    return MappingProxyType(dict(mapping))


def _key_set(obj: dict[str, Any], key: str, path: str) -> tuple[str, ...]:
    mapping = _object(obj, key, path)
    if not mapping:
        return ()
    for name, value in mapping.items():
        if value is not None and not isinstance(value, dict):
            raise _FieldError(f"field {path}{key}[{name[:80]!r}]: expected an object, got {_kind(value)}")
    return tuple(mapping)


def _descriptor(value: Any, path: str) -> Descriptor:
    if value is None:
        raise _FieldError(f"field {path}: missing")
    try:
        return Descriptor.from_json(value, f"field {path}")
    except InvalidDescriptor as exc:
        raise _FieldError(str(exc)) from None


def _present(obj: dict[str, Any], key: str, path: str, required: bool) -> Any:
    value = obj.get(key)
    if value is None and required:
        raise _FieldError(f"field {path}{key}: missing")
    return value


def _kind(value: Any) -> str:
    names = {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        type(None): "null",
        int: "a number",
        float: "a number",
    }
    return names.get(type(value), type(value).__name__)


def _short(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else _kind(value)
    return text if len(text) <= 40 else text[:40] + "…"
