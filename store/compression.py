"""Layer compression: zstd (the store's own), gzip (for export and for layers from
elsewhere) and none, chosen by media type and never by sniffing blob contents.

The only module that imports `zstandard`. Decompression is bounded: a zstd
frame may not ask for a window over 128 MiB, and callers give an output limit
past which LimitExceeded stops a decompression bomb.
"""

from __future__ import annotations

import enum
import io
import os
import zlib
from typing import TYPE_CHECKING, BinaryIO, Self

from .descriptor import MediaType
from .errors import LimitExceeded, MalformedDocument, UnsupportedMediaType

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["Compression", "auto_decompressor", "compressor", "decompressor", "sniff"]

# Every build step compresses its layer as it commits (BuildKit leaves that to export), so the
# level is a commit-time cost: level 2 is 1.4x (a /usr tarball) to 1.75x (W3's 1 GiB) faster than
# zstd's default 3 on two threads, for blobs 4-5% larger.
ZSTD_LEVEL = 2
GZIP_LEVEL = 6
MAX_ZSTD_WINDOW = 1 << 27


class Compression(enum.Enum):
    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"

    @property
    def layer_media_type(self) -> str:
        """The OCI layer media type of a tar compressed this way."""
        return {
            Compression.NONE: MediaType.LAYER,
            Compression.GZIP: MediaType.LAYER_GZIP,
            Compression.ZSTD: MediaType.LAYER_ZSTD,
        }[self]

    @classmethod
    def of_media_type(cls, media_type: str) -> Compression:
        """How a layer of `media_type` is compressed; UnsupportedMediaType if not a layer."""
        if media_type in (MediaType.LAYER, MediaType.NONDIST_LAYER):
            return cls.NONE
        if media_type in (MediaType.LAYER_GZIP, MediaType.NONDIST_LAYER_GZIP, MediaType.DOCKER_LAYER,
                          MediaType.DOCKER_FOREIGN_LAYER):
            return cls.GZIP
        if media_type in (MediaType.LAYER_ZSTD, MediaType.NONDIST_LAYER_ZSTD):
            return cls.ZSTD
        raise UnsupportedMediaType(f"unsupported layer media type {media_type!r}")


def sniff(prefix: bytes) -> Compression | None:
    """The compression of a user-supplied tarball from its first bytes (never for blobs)."""
    if prefix[:2] == b"\x1f\x8b":
        return Compression.GZIP
    if prefix[:4] == b"\x28\xb5\x2f\xfd":
        return Compression.ZSTD
    return None


class _Compressor:
    """A writable that compresses into `sink`; `close()` finishes the stream, not the sink."""

    def __init__(self, kind: Compression, sink: BinaryIO, level: int | None, threads: int) -> None:
        self._sink = sink
        if kind is Compression.ZSTD:
            import zstandard

            cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL if level is None else level, threads=threads)
            self._stream: BinaryIO = cctx.stream_writer(sink, closefd=False)  # type: ignore[assignment]
        elif kind is Compression.GZIP:
            # mtime 0 and no file name: the same bytes give the same blob.
            import gzip  # only gzip layers pay for it

            self._stream = gzip.GzipFile(
                filename="", mode="wb", fileobj=sink, compresslevel=GZIP_LEVEL if level is None else level, mtime=0
            )  # type: ignore[assignment]
        else:
            self._stream = _Passthrough(sink)  # type: ignore[assignment]

    def write(self, data: bytes | bytearray | memoryview) -> int:
        return self._stream.write(data)

    def close(self) -> None:
        self._stream.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None:
            self.close()


class _Passthrough:
    def __init__(self, sink: BinaryIO) -> None:
        self._sink = sink

    def write(self, data: bytes | bytearray | memoryview) -> int:
        return self._sink.write(data)

    def close(self) -> None:
        pass


def compressor(kind: Compression, sink: BinaryIO, *, level: int | None = None, threads: int | None = None) -> _Compressor:
    """A writable compressing into `sink` (zstd uses `threads` workers, default all CPUs)."""
    return _Compressor(kind, sink, level, threads if threads is not None else (os.cpu_count() or 1))


class _Limited(io.RawIOBase):
    """Decompressed bytes, refusing to produce more than `limit`."""

    def __init__(self, stream: BinaryIO, source: BinaryIO, limit: int, what: str) -> None:
        super().__init__()
        self._stream = stream
        self._source = source
        self._limit = limit
        self._what = what
        self._count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        try:
            data = self._stream.read(len(view))
        except (zlib.error, EOFError, OSError) as exc:  # gzip.BadGzipFile is an OSError
            raise MalformedDocument(f"{self._what}: corrupt compressed data: {exc}") from None
        except Exception as exc:  # zstandard.ZstdError, without importing it eagerly
            if type(exc).__name__ == "ZstdError":
                raise _zstd_error(self._what, exc) from None
            raise
        count = len(data)
        self._count += count
        if self._count > self._limit:
            raise LimitExceeded(
                f"{self._what}: decompresses to more than {self._limit} bytes (a decompression bomb?)",
                limit=self._limit,
            )
        view[:count] = data
        return count

    def close(self) -> None:
        try:
            self._stream.close()
            self._source.close()
        finally:
            super().close()


def _zstd_error(what: str, exc: Exception) -> Exception:
    if "window" in str(exc).lower() or "frame requires too much memory" in str(exc).lower():
        return LimitExceeded(f"{what}: zstd window larger than {MAX_ZSTD_WINDOW} bytes", limit=MAX_ZSTD_WINDOW)
    return MalformedDocument(f"{what}: corrupt zstd data: {exc}")


def decompressor(kind: Compression, source: BinaryIO, *, limit: int, what: str = "layer") -> BinaryIO:
    """A reader of `source` decompressed, raising LimitExceeded past `limit` bytes."""
    if kind is Compression.ZSTD:
        import zstandard

        dctx = zstandard.ZstdDecompressor(max_window_size=MAX_ZSTD_WINDOW)
        stream: BinaryIO = dctx.stream_reader(source, read_across_frames=True)  # type: ignore[assignment]
    elif kind is Compression.GZIP:
        import gzip

        stream = gzip.GzipFile(fileobj=source, mode="rb")  # type: ignore[assignment]
    else:
        stream = source
    return io.BufferedReader(_Limited(stream, source, limit, what), buffer_size=1 << 20)  # type: ignore[arg-type]


def auto_decompressor(stream: BinaryIO, *, limit: int, what: str) -> BinaryIO:
    """`stream` with its gzip or zstd compression, if any (judged by its first bytes), undone.

    For archives and tarballs from users, which may be compressed or not;
    layers are never sniffed: their media type says (hostile-inputs decision 3).
    """
    if hasattr(stream, "peek"):
        head = stream.peek(4)[:4]
    else:
        head = stream.read(4)
        stream = _Prefixed(head, stream)  # type: ignore[assignment]
    kind = sniff(head)
    if kind is None:
        return stream
    return decompressor(kind, stream, limit=limit, what=what)


class _Prefixed:
    """Bytes already read from a stream, then the rest of it."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self._head, self._rest = head, rest

    def read(self, size: int = -1) -> bytes:
        if self._head:
            data, self._head = (
                (self._head, b"") if size < 0 or size >= len(self._head) else (self._head[:size], self._head[size:])
            )
            return data
        return self._rest.read(size)

    def close(self) -> None:
        pass
