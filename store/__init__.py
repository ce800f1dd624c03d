"""The layer store: content-addressed blobs, layers and images in an OCI image layout.

    Store(root)              one store directory: an OCI layout skopeo, umoci and
                             podman read, plus pybuild's metadata (store.images)
    ContentStore, Writer     blobs by digest, verified on write and on read
                             (store.content: the contract; store.local: on disk)
    write_layer, unpack_layer  a directory to a layer blob and back (store.layer)
    save, load               OCI and Docker archives in and out (store.transfer)
    import_rootfs            a root filesystem tarball as an image (store.rootfs)

Everything raises subclasses of StoreError with one-line messages (store.errors).
`store` never imports `grammar` or `builder`.

    >>> from store import Store
    >>> image = Store("/var/lib/pybuild").image("busybox")
    >>> image.id, [layer.digest for layer in image.manifest.layers]
"""

from .compression import Compression
from .content import ContentStore, Info, Writer, copy_blob, read_blob, write_blob
from .descriptor import Descriptor, MediaType
from .digest import Digest, Digester
from .errors import (
    AlreadyExists,
    DigestMismatch,
    IntegrityError,
    InvalidDescriptor,
    InvalidDigest,
    InvalidReference,
    LimitExceeded,
    MalformedDocument,
    NotFound,
    SizeMismatch,
    StoreError,
    UnsafeArchiveEntry,
    UnsupportedMediaType,
)
from .image import ImageConfig, Index, Manifest, canonical_json, chain_id
from .images import Image, Store, default_root
from .layer import Layer, apply_layer, unpack_layer, write_layer
from .local import LocalContentStore
from .reference import Reference, parse_reference
from .rootfs import import_rootfs
from .transfer import load, save

__all__ = [
    "AlreadyExists",
    "Compression",
    "ContentStore",
    "Descriptor",
    "Digest",
    "DigestMismatch",
    "Digester",
    "Image",
    "ImageConfig",
    "Index",
    "Info",
    "IntegrityError",
    "InvalidDescriptor",
    "InvalidDigest",
    "InvalidReference",
    "Layer",
    "LimitExceeded",
    "LocalContentStore",
    "MalformedDocument",
    "Manifest",
    "MediaType",
    "NotFound",
    "Reference",
    "SizeMismatch",
    "Store",
    "StoreError",
    "UnsafeArchiveEntry",
    "UnsupportedMediaType",
    "Writer",
    "apply_layer",
    "canonical_json",
    "chain_id",
    "copy_blob",
    "default_root",
    "import_rootfs",
    "load",
    "parse_reference",
    "read_blob",
    "save",
    "unpack_layer",
    "write_blob",
    "write_layer",
]
