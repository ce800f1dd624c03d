"""VerifiedReader: a blob reader that proves the bytes match their descriptor.

It hashes everything it hands out and raises on the read that reaches the
end of the data (or goes past the promised size): DigestMismatch or
SizeMismatch, naming the blob, what was expected and what was found.
"""

from __future__ import annotations

import io
from typing import BinaryIO

from .descriptor import Descriptor
from .digest import Digester
from .errors import DigestMismatch, SizeMismatch

__all__ = ["VerifiedReader"]


class VerifiedReader(io.RawIOBase):
    """Wraps a raw binary stream of the blob `descriptor` describes."""

    def __init__(self, raw: BinaryIO, descriptor: Descriptor) -> None:
        super().__init__()
        self._raw = raw
        self._descriptor = descriptor
        self._digester = Digester(descriptor.digest.algorithm)
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._done:
            return 0
        view = memoryview(buffer).cast("B")
        remaining = self._descriptor.size - self._digester.size
        # Ask for one byte more than promised, to notice a longer blob.
        want = min(len(view), remaining + 1)
        count = self._raw.readinto(view[:want]) if want else 0  # type: ignore[attr-defined]
        if count:
            if count > remaining:
                self._fail_size(self._descriptor.size + count - remaining, longer=True)
            self._digester.update(view[:count])
            return count
        self._finish()
        return 0

    def _finish(self) -> None:
        self._done = True
        d = self._descriptor
        if self._digester.size != d.size:
            self._fail_size(self._digester.size, longer=False)
        actual = self._digester.digest()
        if actual != d.digest:
            raise DigestMismatch(
                f"blob {d.digest}: content does not match its digest: expected {d.digest}, got {actual}",
                expected=d.digest,
                actual=actual,
            )

    def _fail_size(self, actual: int, *, longer: bool) -> None:
        d = self._descriptor
        self._done = True
        what = f"more than {d.size}" if longer else f"{actual}"
        raise SizeMismatch(
            f"blob {d.digest}: expected {d.size} bytes, got {what}", expected=d.size, actual=actual
        )

    def close(self) -> None:
        try:
            self._raw.close()
        finally:
            super().close()
