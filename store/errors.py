"""Errors of the layer store, each with a one-line message that names the blob or entry.

    StoreError                       anything the store refuses or cannot do
    ├── NotFound (LookupError)       no such blob, image, tag or snapshot
    ├── AlreadyExists                the content is there already (callers of
    │                                commit treat it as success)
    ├── InvalidDigest (ValueError)   "sha256:xyz" is not a digest
    ├── InvalidReference (ValueError) "Busybox:latest" is not an image reference
    ├── InvalidDescriptor (ValueError) negative or absurd size, bad media type
    ├── MalformedDocument (ValueError) a manifest, config, index or archive that
    │                                is not what it claims (bad JSON, missing field)
    ├── UnsupportedMediaType (ValueError)
    ├── IntegrityError               bytes do not match what was promised
    │   ├── DigestMismatch           .expected, .actual
    │   └── SizeMismatch             .expected, .actual
    ├── UnsafeArchiveEntry           a tar entry that would escape its root, or
    │                                an impossible whiteout; .entry
    └── LimitExceeded                a bomb or an oversized document; .limit

Messages are lower-case phrases that chain ("blob sha256:ab12…: not found").
"""

from __future__ import annotations

__all__ = [
    "AlreadyExists",
    "DigestMismatch",
    "IntegrityError",
    "InvalidDescriptor",
    "InvalidDigest",
    "InvalidReference",
    "LimitExceeded",
    "MalformedDocument",
    "NotFound",
    "SizeMismatch",
    "StoreError",
    "UnsafeArchiveEntry",
    "UnsupportedMediaType",
]


class StoreError(Exception):
    """Something the store refuses or cannot do; `str()` is one line for the user."""


class NotFound(StoreError, LookupError):
    """No such blob, image, tag or snapshot."""


class AlreadyExists(StoreError):
    """The content exists already; for ingest that is success, not failure."""


class InvalidDigest(StoreError, ValueError):
    """A string that is not a valid `algorithm:hex` digest."""


class InvalidReference(StoreError, ValueError):
    """A string that is not a valid image reference."""


class InvalidDescriptor(StoreError, ValueError):
    """A descriptor with a bad digest, size or media type."""


class MalformedDocument(StoreError, ValueError):
    """A manifest, config, index or archive that is not what it claims to be."""


class UnsupportedMediaType(StoreError, ValueError):
    """A media type the store does not handle here."""


class IntegrityError(StoreError):
    """Bytes do not match the digest or size they were promised to have."""

    def __init__(self, message: str, *, expected: object, actual: object) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class DigestMismatch(IntegrityError):
    """Content hashes to another digest than expected."""


class SizeMismatch(IntegrityError):
    """Content has another length than expected."""


class UnsafeArchiveEntry(StoreError):
    """A layer entry that would land outside its root, or an impossible whiteout."""

    def __init__(self, message: str, *, entry: str) -> None:
        super().__init__(message)
        self.entry = entry


class LimitExceeded(StoreError):
    """Input past a safety limit: a decompression bomb, an oversized document."""

    def __init__(self, message: str, *, limit: int) -> None:
        super().__init__(message)
        self.limit = limit
