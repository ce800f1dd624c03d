"""Content digests: `Digest` (validated `algorithm:hex`) and `Digester` (incremental).

Only the OCI-registered algorithms sha256 and sha512 are accepted, lower-case
hex of the exact length; anything else is an InvalidDigest, so a digest can
always be used as a path component.
"""

from __future__ import annotations

import hashlib
import re
from typing import NamedTuple, Self

from .errors import InvalidDigest

__all__ = ["Digest", "Digester"]

_HEX_LENGTH = {"sha256": 64, "sha512": 128}
_HEX = re.compile(r"[0-9a-f]+")


class _DigestFields(NamedTuple):
    algorithm: str
    hex: str


class Digest(_DigestFields):
    """A content address, printed as `sha256:<64 hex>`."""

    __slots__ = ()

    # A NamedTuple rather than a dataclass: `pybuild run` starts a process per container, and
    # importing dataclasses (it pulls in inspect and ast) would cost more than the run itself.
    def __new__(cls, algorithm: str, hex: str) -> Self:
        length = _HEX_LENGTH.get(algorithm)
        if length is None:
            raise InvalidDigest(f"invalid digest algorithm {algorithm!r}: use sha256 or sha512")
        if not isinstance(hex, str) or len(hex) != length or not _HEX.fullmatch(hex):
            raise InvalidDigest(
                f"invalid digest '{algorithm}:{str(hex)[:80]}': hex must be {length} lower-case characters"
            )
        return super().__new__(cls, algorithm, hex)

    @classmethod
    def parse(cls, text: str) -> Digest:
        """`sha256:...` to a Digest; InvalidDigest when malformed."""
        if not isinstance(text, str):
            raise InvalidDigest(f"invalid digest {text!r}: not a string")
        algorithm, colon, hex_ = text.partition(":")
        if not colon:
            raise InvalidDigest(f"invalid digest {text[:80]!r}: expected algorithm:hex")
        return cls(algorithm, hex_)

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        """The digest of `data`."""
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    @property
    def short(self) -> str:
        """The first 12 hex characters, as `docker images` shows them."""
        return self.hex[:12]


class Digester:
    """Hashes bytes as they stream past; `digest()` gives the digest so far."""

    __slots__ = ("_hash", "algorithm", "size")

    def __init__(self, algorithm: str = "sha256") -> None:
        if algorithm not in _HEX_LENGTH:
            raise InvalidDigest(f"invalid digest algorithm {algorithm!r}: use sha256 or sha512")
        self.algorithm = algorithm
        self._hash = hashlib.new(algorithm)
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._hash.update(data)
        self.size += len(data)

    def digest(self) -> Digest:
        return Digest(self.algorithm, self._hash.hexdigest())
