"""Descriptors (media type, digest, size, annotations) and the media types the store knows.

A descriptor read from untrusted JSON goes through `Descriptor.from_json`,
which refuses negative or absurd sizes and malformed digests before anything
is opened or downloaded.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, NamedTuple, Self

from .digest import Digest
from .errors import InvalidDescriptor, InvalidDigest

__all__ = ["MAX_BLOB_SIZE", "Descriptor", "MediaType"]

MAX_BLOB_SIZE = 1 << 40  # 1 TiB: anything larger in a descriptor is an attack or a bug


class MediaType:
    """Media types of OCI images and of the Docker schema 2 documents the store reads."""

    OCI_LAYOUT_VERSION = "1.0.0"
    INDEX = "application/vnd.oci.image.index.v1+json"
    MANIFEST = "application/vnd.oci.image.manifest.v1+json"
    CONFIG = "application/vnd.oci.image.config.v1+json"
    LAYER = "application/vnd.oci.image.layer.v1.tar"
    LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
    LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
    NONDIST_LAYER = "application/vnd.oci.image.layer.nondistributable.v1.tar"
    NONDIST_LAYER_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
    NONDIST_LAYER_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
    DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
    DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
    DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
    DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
    DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

    MANIFESTS = frozenset({MANIFEST, DOCKER_MANIFEST})
    INDEXES = frozenset({INDEX, DOCKER_MANIFEST_LIST})
    CONFIGS = frozenset({CONFIG, DOCKER_CONFIG})
    LAYERS = frozenset(
        {
            LAYER, LAYER_GZIP, LAYER_ZSTD, NONDIST_LAYER, NONDIST_LAYER_GZIP, NONDIST_LAYER_ZSTD,
            DOCKER_LAYER, DOCKER_FOREIGN_LAYER,
        }
    )


_NO_ANNOTATIONS: MappingProxyType[str, str] = MappingProxyType({})


class _DescriptorFields(NamedTuple):
    media_type: str
    digest: Digest
    size: int
    annotations: MappingProxyType[str, str] = _NO_ANNOTATIONS
    platform: MappingProxyType[str, Any] | None = None


class Descriptor(_DescriptorFields):
    """What a document says about a blob: its media type, digest and exact size.

    Two descriptors are equal when media type, digest and size are; annotations and platform do not count.
    """

    __slots__ = ()

    def __new__(
        cls,
        media_type: str,
        digest: Digest,
        size: int,
        annotations: MappingProxyType[str, str] = _NO_ANNOTATIONS,
        platform: MappingProxyType[str, Any] | None = None,
    ) -> Self:
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_BLOB_SIZE:
            raise InvalidDescriptor(f"descriptor of {digest}: size {size!r} is out of range")
        return super().__new__(cls, media_type, digest, size, annotations, platform)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Descriptor):
            return NotImplemented
        return self[:3] == other[:3]

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash(self[:3])

    def with_annotations(self, **annotations: str) -> Descriptor:
        return Descriptor(
            self.media_type,
            self.digest,
            self.size,
            MappingProxyType({**self.annotations, **annotations}),
            self.platform,
        )

    @classmethod
    def from_json(cls, value: object, where: str = "descriptor") -> Descriptor:
        """Validate and convert one JSON descriptor object; InvalidDescriptor if it is not one."""
        if not isinstance(value, dict):
            raise InvalidDescriptor(f"{where}: not a JSON object")
        media_type, digest, size = (value.get("mediaType"), value.get("digest"), value.get("size"))
        if not isinstance(media_type, str) or not media_type or len(media_type) > 255:
            raise InvalidDescriptor(f"{where}: missing or invalid mediaType")
        try:
            parsed = Digest.parse(digest)  # type: ignore[arg-type]
        except InvalidDigest as exc:
            raise InvalidDescriptor(f"{where}: {exc}") from None
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_BLOB_SIZE:
            raise InvalidDescriptor(f"{where} {parsed}: size {size!r} is negative or absurd")
        annotations = value.get("annotations") or {}
        if not isinstance(annotations, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
        ):
            raise InvalidDescriptor(f"{where} {parsed}: annotations must map strings to strings")
        platform = value.get("platform")
        if platform is not None and not isinstance(platform, dict):
            raise InvalidDescriptor(f"{where} {parsed}: platform must be an object")
        return cls(
            media_type,
            parsed,
            size,
            MappingProxyType(dict(annotations)),
            MappingProxyType(dict(platform)) if platform is not None else None,
        )

    def to_json(self) -> dict[str, Any]:
        """The descriptor as an OCI JSON object."""
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": str(self.digest), "size": self.size}
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform is not None:
            out["platform"] = dict(self.platform)
        return out
