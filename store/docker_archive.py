"""Docker archives (`docker save`): `manifest.json`, `repositories`, `<hex>.json` configs, `<hex>/layer.tar`.

Writing gives what `docker load` and `podman load` accept: plain (or gzip) layer tars, zstd layers
decompressed with their diff_ids checked. Reading turns each `manifest.json` entry into an OCI manifest
over the same config (the image id stays), each layer checked against its diff_id and recompressed.
"""

from __future__ import annotations

import io
import re
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .compression import Compression, sniff
from .content import CHUNK, ContentStore, read_blob, write_blob
from .descriptor import Descriptor, MediaType
from .digest import Digest, Digester
from .errors import (
    DigestMismatch,
    InvalidReference,
    LimitExceeded,
    MalformedDocument,
    UnsupportedMediaType,
)
from .image import (
    MAX_CONFIG_SIZE,
    MAX_MANIFEST_SIZE,
    Manifest,
    canonical_json,
    load_json,
    parse_config,
)
from .oci_archive import ImageGraph, TarOutput, recompress
from .reference import Reference, parse_reference

__all__ = ["read_docker", "write_docker"]

_NAMED_BY_DIGEST = re.compile(r"(?:blobs/sha256/|)([a-f0-9]{64})(?:\.json|)")


def write_docker(
    store: ContentStore,
    images: Iterable[tuple[list[Reference], ImageGraph]],
    out: TarOutput,
    *,
    compression: Compression = Compression.NONE,
    scratch: Path | None = None,
) -> None:
    """Write each image (one manifest, with the tags to record) and `manifest.json` + `repositories`."""
    if compression is Compression.ZSTD:
        raise UnsupportedMediaType("docker archives hold plain or gzip layers, not zstd")
    entries: list[dict[str, Any]] = []
    repositories: dict[str, dict[str, str]] = {}
    for refs, graph in images:
        if len(graph.manifests) != 1 or graph.root.media_type not in MediaType.MANIFESTS:
            raise UnsupportedMediaType(
                f"image {graph.root.digest}: a docker archive holds single-platform images; "
                "choose one manifest of the index"
            )
        _, manifest, config = graph.manifests[0]
        if config is None:
            raise UnsupportedMediaType(
                f"image {graph.root.digest}: config {manifest.config.media_type} is not an image config"
            )
        layers = [
            _write_layer(store, layer, diff_id, compression, out, scratch)
            for layer, diff_id in zip(manifest.layers, config.diff_ids, strict=True)
        ]
        config_name = f"{manifest.config.digest.hex}.json"
        data = graph.documents[manifest.config.digest]
        out.add_file(config_name, io.BytesIO(data), len(data))
        tags = [str(ref) for ref in refs if ref.tag is not None]  # podman keeps full names; docker normalises
        entries.append({"Config": config_name, "RepoTags": tags or None, "Layers": layers})
        for ref in refs:
            if ref.tag is not None and layers:
                repositories.setdefault(ref.familiar_name, {})[ref.tag] = layers[-1].partition("/")[0]
    for name, document in (("manifest.json", entries), ("repositories", repositories)):
        data = canonical_json(document)
        out.add_file(name, io.BytesIO(data), len(data))


def _write_layer(
    store: ContentStore, layer: Descriptor, diff_id: Digest, wanted: Compression, out: TarOutput, scratch: Path | None
) -> str:
    if Compression.of_media_type(layer.media_type) is wanted:
        if wanted is Compression.NONE and layer.digest != diff_id:
            raise DigestMismatch(
                f"layer {layer.digest}: an uncompressed layer must equal its diff_id {diff_id}",
                expected=diff_id,
                actual=layer.digest,
            )
        name = f"{layer.digest.hex}/layer.tar"
        if not out.has(name):
            out.add_dir(f"{layer.digest.hex}")
            with store.open(layer) as f:
                out.add_file(name, f, layer.size)
        return name
    with tempfile.TemporaryFile(dir=scratch) as spool:
        recompress(store, layer, diff_id, wanted, spool, what=f"layer {layer.digest}")
        size = spool.tell()
        spool.seek(0)
        digester = Digester()
        while chunk := spool.read(CHUNK):
            digester.update(chunk)
        spool.seek(0)
        name = f"{digester.digest().hex}/layer.tar"
        out.add_dir(digester.digest().hex)
        out.add_file(name, spool, size)
    return name


def read_docker(
    manifest_json: bytes,
    members: Mapping[str, Descriptor],
    staging: ContentStore,
    *,
    compression: Compression,
    archive: str,
) -> list[tuple[list[Reference], Descriptor]]:
    """Turn the staged members of a docker archive into OCI manifests in `staging`.

    `members` maps member names to their staged blobs; returns each image's
    tags and manifest descriptor.
    """
    document = load_json(manifest_json, f"{archive}: manifest.json", limit=MAX_MANIFEST_SIZE)
    if not isinstance(document, list):
        raise MalformedDocument(f"{archive}: manifest.json: expected an array of images")
    return [
        _image(entry, members, staging, compression, f"{archive}: manifest.json[{n}]")
        for n, entry in enumerate(document)
    ]


def _image(
    entry: Any, members: Mapping[str, Descriptor], staging: ContentStore, compression: Compression, where: str
) -> tuple[list[Reference], Descriptor]:
    if not isinstance(entry, dict):
        raise MalformedDocument(f"{where}: expected an object")
    config_name, layer_names, tags = entry.get("Config"), entry.get("Layers"), entry.get("RepoTags") or []
    if not isinstance(config_name, str) or not isinstance(layer_names, list) or not isinstance(tags, list):
        raise MalformedDocument(f"{where}: needs Config (a string), Layers and RepoTags (arrays)")
    refs = []
    for i, tag in enumerate(tags):
        try:
            refs.append(parse_reference(tag))
        except InvalidReference as exc:
            raise InvalidReference(f"{where}: RepoTags[{i}]: {exc}") from None
    raw_config = _member(members, config_name, where)
    if raw_config.size > MAX_CONFIG_SIZE:
        raise LimitExceeded(
            f"{where}: config {config_name}: {raw_config.size} bytes is more than the {MAX_CONFIG_SIZE} allowed",
            limit=MAX_CONFIG_SIZE,
        )
    config_descriptor = Descriptor(MediaType.CONFIG, raw_config.digest, raw_config.size)
    config = parse_config(read_blob(staging, raw_config, limit=MAX_CONFIG_SIZE), config_descriptor)
    if len(layer_names) != len(config.diff_ids):
        raise MalformedDocument(
            f"{where}: {len(layer_names)} layers but the config has {len(config.diff_ids)} diff_ids"
        )
    layers = []
    for i, (name, diff_id) in enumerate(zip(layer_names, config.diff_ids, strict=True)):
        if not isinstance(name, str):
            raise MalformedDocument(f"{where}: Layers[{i}]: expected a string")
        layers.append(_layer(staging, _member(members, name, where), diff_id, compression, f"{where}: layer {name}"))
    manifest = canonical_json(Manifest(config=config_descriptor, layers=tuple(layers)))
    return refs, write_blob(staging, manifest, MediaType.MANIFEST)


def _member(members: Mapping[str, Descriptor], name: str, where: str) -> Descriptor:
    raw = members.get(name.removeprefix("./"))
    if raw is None:
        raise MalformedDocument(f"{where}: names {name[:200]!r}, which is not in the archive")
    if (named := _NAMED_BY_DIGEST.fullmatch(name.removeprefix("./"))) and named.group(1) != raw.digest.hex:
        raise DigestMismatch(
            f"{where}: member {name} holds {raw.digest}, not what its name says",
            expected=Digest("sha256", named.group(1)),
            actual=raw.digest,
        )
    return raw


def _layer(staging: ContentStore, raw: Descriptor, diff_id: Digest, target: Compression, where: str) -> Descriptor:
    # A docker archive carries no media types: like `docker load`, look at the bytes.
    with staging.open(raw) as f:
        found = sniff(f.peek(4)[:4]) or Compression.NONE  # type: ignore[attr-defined]
    source = Descriptor(found.layer_media_type, raw.digest, raw.size)
    if found is target:
        if found is Compression.NONE:
            if raw.digest != diff_id:
                raise DigestMismatch(
                    f"{where}: content is {raw.digest}, but the config's diff_id is {diff_id}",
                    expected=diff_id,
                    actual=raw.digest,
                )
        else:
            recompress(staging, source, diff_id, Compression.NONE, _Discard(), what=where)  # type: ignore[arg-type]
        return source
    with staging.writer() as w:
        recompress(staging, source, diff_id, target, w, what=where)  # type: ignore[arg-type]
        info = w.commit()
    return Descriptor(target.layer_media_type, info.digest, info.size)


class _Discard(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return len(data)
