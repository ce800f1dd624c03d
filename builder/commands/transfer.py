"""`pybuild save`, `load` and `import`: images in and out of the store."""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING, BinaryIO

from .images import open_store

if TYPE_CHECKING:
    from collections.abc import Callable

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
    with console.progress("saving") as advance:
        save_images(
            store.content,
            images,
            str(args["output"]),
            format=fmt,  # type: ignore[arg-type]
            compression=_compression(args["compression"]),  # type: ignore[arg-type]
            progress=advance,
        )
    console.print(f"saved {len(images)} image{'s' * (len(images) != 1)} to {args['output']}")
    return 0


def load(args: dict[str, object], console: Console) -> int:
    from store.transfer import load as load_images

    store = open_store(args)
    source = str(args["input"])
    with store.metadata.lease() as lease:
        if os.path.isdir(source):
            loaded = load_images(store.content, source, lease=lease, replace_tags=True)
        else:
            with open(source, "rb") as f, console.progress("loading", os.fstat(f.fileno()).st_size) as advance:
                reader = io.BufferedReader(_Counting(f, advance), 1 << 20)  # type: ignore[arg-type]
                loaded = load_images(store.content, reader, lease=lease, replace_tags=True)
    for image in loaded:
        console.print(f"Loaded image: {image.reference or image.descriptor.digest}")
    return 0


def import_(args: dict[str, object], console: Console) -> int:
    from store.reference import parse_reference
    from store.rootfs import import_rootfs

    store = open_store(args)
    ref = parse_reference(str(args["name"]))
    source = str(args["rootfs"])
    with store.metadata.lease() as lease:
        if source == "-":
            import sys

            descriptor = import_rootfs(store.content, sys.stdin.buffer, ref, lease=lease, name="stdin")
        else:
            with open(source, "rb") as f, console.progress("importing", os.fstat(f.fileno()).st_size) as advance:
                reader = io.BufferedReader(_Counting(f, advance), 1 << 20)  # type: ignore[arg-type]
                descriptor = import_rootfs(store.content, reader, ref, lease=lease, name=source)
    console.print(f"{ref}: {descriptor.digest}")
    return 0


def _usage(message: str) -> Exception:
    from ..argv import UsageError

    return UsageError(message)
