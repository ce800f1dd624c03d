"""ADD of an http(s) URL: the file downloaded into a build step's scratch directory, checked when asked.

`download(url, path, checksum=...)` streams the body to `path` with a size
limit and a timeout, verifies `--checksum=sha256:<hex>` when given (a
mismatch fails the step, naming both digests), and keeps the server's
Last-Modified time as the file's mtime, as Docker does.
"""

from __future__ import annotations

import email.utils
import hashlib
import os
from typing import TYPE_CHECKING

from .errors import BuildError

if TYPE_CHECKING:
    from grammar import Span

__all__ = ["MAX_DOWNLOAD", "download"]

MAX_DOWNLOAD = 8 << 30
_TIMEOUT = 60


def download(url: str, path: str, *, checksum: str | None, span: Span) -> None:
    import urllib.error
    import urllib.request

    algorithm, _, expected = (checksum or "").partition(":")
    if checksum and (algorithm not in ("sha256", "sha384", "sha512") or not expected):
        raise BuildError(f"ADD --checksum={checksum}: expected sha256:<hex> (or sha384, sha512)", span)
    digest = hashlib.new(algorithm or "sha256")
    request = urllib.request.Request(url, headers={"User-Agent": "pybuild"})
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT) as response, open(path, "wb") as out:
            total = 0
            while chunk := response.read(1 << 20):
                total += len(chunk)
                if total > MAX_DOWNLOAD:
                    raise BuildError(f"ADD {url}: larger than {MAX_DOWNLOAD >> 30} GiB", span)
                digest.update(chunk)
                out.write(chunk)
            modified = response.headers.get("Last-Modified")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise BuildError(f"ADD {url}: download failed: {reason}", span) from None
    if checksum and digest.hexdigest() != expected.lower():
        raise BuildError(f"ADD {url}: checksum mismatch: expected {checksum}, got {algorithm}:{digest.hexdigest()}", span)
    os.chmod(path, 0o600)
    if modified:
        try:
            when = email.utils.parsedate_to_datetime(modified).timestamp()
        except (TypeError, ValueError):
            return
        os.utime(path, (when, when))
