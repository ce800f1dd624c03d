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

# Names resolve on first use, so `from store.images import Store` does not pay for
# archives, transfers and layer writing it does not need.
_WHERE = {
    "AlreadyExists": "errors",
    "Compression": "compression",
    "ContentStore": "content",
    "Descriptor": "descriptor",
    "Digest": "digest",
    "DigestMismatch": "errors",
    "Digester": "digest",
    "Image": "images",
    "ImageConfig": "image",
    "Index": "image",
    "Info": "content",
    "IntegrityError": "errors",
    "InvalidDescriptor": "errors",
    "InvalidDigest": "errors",
    "InvalidReference": "errors",
    "Layer": "layer",
    "LimitExceeded": "errors",
    "LocalContentStore": "local",
    "MalformedDocument": "errors",
    "Manifest": "image",
    "MediaType": "descriptor",
    "NotFound": "errors",
    "Reference": "reference",
    "SizeMismatch": "errors",
    "Store": "images",
    "StoreError": "errors",
    "UnsafeArchiveEntry": "errors",
    "UnsupportedMediaType": "errors",
    "Writer": "content",
    "apply_layer": "layer",
    "canonical_json": "image",
    "chain_id": "image",
    "copy_blob": "content",
    "default_root": "images",
    "import_rootfs": "rootfs",
    "load": "transfer",
    "parse_reference": "reference",
    "read_blob": "content",
    "save": "transfer",
    "unpack_layer": "layer",
    "write_blob": "content",
    "write_layer": "layer",
}


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


def __getattr__(name: str) -> object:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'store' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
