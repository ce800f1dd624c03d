"""`pybuild save`, `load` and `import`: images in and out of the store."""

from __future__ import annotations

import contextlib
import io
import os
import sys
from typing import TYPE_CHECKING, BinaryIO

from .images import open_store

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from ..console import Console

__all__ = ["import_", "load", "save"]


class _Counting(io.RawIOBase):
    """A reader that reports every byte it reads to a progress callback."""

    def __init__(self, stream: BinaryIO, advance: Callable[[int], None]) -> None:
        super().__init__()
        self._stream = stream
        self._advance = advance

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        count = self._stream.readinto(buffer)  # type: ignore[attr-defined]
        self._advance(count or 0)
        return count  # type: ignore[no-any-return]


def _compression(value: object) -> object:
    from store.compression import Compression

    return None if value is None else Compression(value)


def save(args: dict[str, object], console: Console) -> int:
    from store.transfer import save as save_images

    store = open_store(args)
    names = list(args["images"] or ())  # type: ignore[call-overload]
    if not names:
        raise _usage("name at least one image to save")
    images = [store.resolve(name) for name in names]
    fmt = str(args["format"])
    if fmt not in ("oci", "oci-dir", "docker"):
        raise _usage(f"unknown --format {fmt!r}: use oci, oci-dir or docker")
    output = args["output"]
    if output is None:
        if fmt == "oci-dir":
            raise _usage("--format oci-dir writes a directory: name it with -o DIR")
        if sys.stdout.isatty():
            raise _usage("refusing to write an archive to a terminal: use -o FILE or redirect standard output")
        sys.stdout.flush()
    with console.progress("saving") as advance:
        save_images(
            store.content,
            images,
            sys.stdout.buffer if output is None else str(output),
            format=fmt,  # type: ignore[arg-type]
            compression=_compression(args["compression"]),  # type: ignore[arg-type]
            progress=advance,
        )
    if output is not None:
        console.print(f"saved {len(images)} image{'s' * (len(images) != 1)} to {output}")
    return 0


def load(args: dict[str, object], console: Console) -> int:
    from store.transfer import load as load_images

    store = open_store(args)
    source = args["input"]
    if source is None and sys.stdin.isatty():
        raise _usage("no archive: use -i FILE or pipe one to standard input")
    with store.metadata.lease() as lease:
        if source is not None and os.path.isdir(str(source)):
            loaded = load_images(store.content, str(source), lease=lease, replace_tags=True)
        else:
            with _opened(source) as (f, name, size), console.progress("loading", size) as advance:
                reader = io.BufferedReader(_Counting(f, advance), 1 << 20)  # type: ignore[arg-type]
                loaded = load_images(store.content, reader, lease=lease, replace_tags=True, name=name)
    for image in loaded:
        console.print(f"Loaded image: {image.reference or image.descriptor.digest}")
    return 0


def import_(args: dict[str, object], console: Console) -> int:
    from store.reference import parse_reference
    from store.rootfs import import_rootfs

    store = open_store(args)
    ref = parse_reference(str(args["name"]))
    source = str(args["rootfs"])
    with (
        store.metadata.lease() as lease,
        _opened(None if source == "-" else source) as (f, name, size),
        console.progress("importing", size) as advance,
    ):
        reader = io.BufferedReader(_Counting(f, advance), 1 << 20)  # type: ignore[arg-type]
        descriptor = import_rootfs(store.content, reader, ref, lease=lease, name=name)
    console.print(f"{ref}: {descriptor.digest}")
    return 0


@contextlib.contextmanager
def _opened(path: object) -> Iterator[tuple[BinaryIO, str, int | None]]:
    """The file at `path`, or standard input for None: the stream, its name for messages, its size if known."""
    if path is None:
        yield sys.stdin.buffer, "stdin", None
        return
    with open(str(path), "rb") as f:
        yield f, str(path), os.fstat(f.fileno()).st_size


def _usage(message: str) -> Exception:
    from ..argv import UsageError

    return UsageError(message)
