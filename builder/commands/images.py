"""`pybuild images`, `inspect`, `history`, `tag`, `rmi` and `du`: looking at the store."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from store.images import Image, Store

    from ..console import Console

__all__ = ["du", "history", "human_size", "images", "inspect", "open_store", "rmi", "tag"]


def open_store(args: dict[str, object]) -> Store:
    from store.images import Store

    return Store(args.get("store") or None)  # type: ignore[arg-type]


def human_size(size: int) -> str:
    """Bytes as `docker images` shows them (decimal units)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.3g}{unit}"
        size /= 1000  # type: ignore[assignment]
    raise AssertionError("unreachable")


def _created(image: Image) -> str | None:
    return image.config.created


def _ago(created: str | None) -> str:
    if not created:
        return "N/A"
    try:
        from datetime import datetime

        when = datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return created
    seconds = max(0, time.time() - when)
    for unit, length in (("year", 31536000), ("month", 2592000), ("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= length:
            count = int(seconds // length)
            return f"{count} {unit}{'s' * (count != 1)} ago"
    return "less than a minute ago"


def images(args: dict[str, object], console: Console) -> int:
    rows = []
    for image in open_store(args).images():
        for name in image.names or (None,):  # None: an untagged image, <none> as Docker shows it
            rows.append(
                {
                    "name": str(name) if name is not None else None,
                    "repository": name.familiar_name if name is not None else "<none>",
                    "tag": name.tag if name is not None else "<none>",
                    "digest": str(image.descriptor.digest),
                    "id": str(image.id),
                    "size": image.size,
                    "created": _created(image),
                }
            )
    if args["json"]:
        console.json(rows)
        return 0
    console.table(
        ("REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"),
        [(r["repository"], r["tag"], r["id"][7:19], _ago(r["created"]), human_size(r["size"])) for r in rows],
    )
    return 0


def inspect(args: dict[str, object], console: Console) -> int:
    from store.content import read_blob

    store = open_store(args)
    image = store.image(str(args["image"]))
    document = {
        "names": [str(n) for n in image.names],
        "digest": str(image.descriptor.digest),
        "id": str(image.id),
        "media_type": image.descriptor.media_type,
        "size": image.size,
        "created": image.config.created,
        "architecture": image.config.architecture,
        "os": image.config.os,
        "manifest": json.loads(read_blob(store.content, image.manifest_descriptor, limit=4 << 20)),
        "config": json.loads(read_blob(store.content, image.manifest.config)),
        "layers": [
            {"digest": str(layer.digest), "diff_id": str(diff_id), "size": layer.size, "media_type": layer.media_type}
            for layer, diff_id in zip(image.manifest.layers, image.config.diff_ids, strict=False)
        ],
    }
    if args["json"]:
        console.json(document)
        return 0
    _print_inspect(console, document, image)
    return 0


def _print_inspect(console: Console, document: dict[str, Any], image: Image) -> None:
    c = image.config.config
    console.print(f"Image    {', '.join(document['names']) or '(untagged)'}")
    console.print(f"Digest   {document['digest']}")
    console.print(f"Id       {document['id']}")
    console.print(f"Created  {document['created'] or 'N/A'}")
    console.print(f"Platform {document['os']}/{document['architecture']}")
    console.print(f"Size     {human_size(document['size'])}")
    for label, value in (("Entrypoint", c.entrypoint), ("Cmd", c.cmd), ("WorkDir", c.working_dir), ("User", c.user)):
        if value:
            console.print(f"{label:<9}{json.dumps(value) if not isinstance(value, str) else value}")
    for variable in c.env or ():
        console.print(f"Env      {variable}")
    console.print(f"Layers   {len(document['layers'])}")
    for layer in document["layers"]:
        console.print(f"  {layer['digest']}  {human_size(layer['size']):>8}  diff {layer['diff_id'][7:19]}")


def history(args: dict[str, object], console: Console) -> int:
    image = open_store(args).image(str(args["image"]))
    layers = iter(image.manifest.layers)
    rows = []
    for entry in image.config.history:
        size = 0 if entry.empty_layer else next(layers).size if image.manifest.layers else 0
        rows.append((_ago(entry.created), (entry.created_by or "")[:80], human_size(size), entry.comment or ""))
    console.table(("CREATED", "CREATED BY", "SIZE", "COMMENT"), list(reversed(rows)))
    return 0


def tag(args: dict[str, object], console: Console) -> int:
    open_store(args).tag(str(args["source"]), str(args["target"]))
    return 0


def rmi(args: dict[str, object], console: Console) -> int:
    store = open_store(args)
    for name in args["images"] or ():  # type: ignore[union-attr]
        for ref in store.untag(name):
            console.print(f"Untagged: {ref}")
    console.print("(blobs no image needs any more are freed by `pybuild prune`)")
    return 0


def du(args: dict[str, object], console: Console) -> int:
    store = open_store(args)
    all_images = store.images()
    blob_sets = {image.descriptor.digest: _blobs(store, image) for image in all_images}
    users: dict[object, int] = {}
    for blobs in blob_sets.values():
        for digest in blobs:
            users[digest] = users.get(digest, 0) + 1
    rows = []
    for image in all_images:
        blobs = blob_sets[image.descriptor.digest]
        shared = sum(size for digest, size in blobs.items() if users[digest] > 1)
        unique = sum(size for digest, size in blobs.items() if users[digest] == 1)
        rows.append((", ".join(n.familiar for n in image.names), image.id.hex[:12], shared + unique, shared, unique))
    if args["json"]:
        console.json([{"names": r[0].split(", "), "id": r[1], "size": r[2], "shared": r[3], "unique": r[4]} for r in rows])
        return 0
    console.table(
        ("IMAGE", "IMAGE ID", "SIZE", "SHARED", "UNIQUE"),
        [(n, i, human_size(s), human_size(sh), human_size(u)) for n, i, s, sh, u in rows],
    )
    total = sum(info.size for info in store.content.walk())
    unused = max(0, total - _distinct(blob_sets))
    console.print(
        f"\nstore {store.root}: {human_size(total)} in blobs, {human_size(unused)} of them used by no tagged image "
        "(build cache may hold some; `pybuild prune` frees the rest)"
    )
    return 0


def _blobs(store: Store, image: Image) -> dict[object, int]:
    descriptors = [image.descriptor, image.manifest_descriptor, image.manifest.config, *image.manifest.layers]
    return {d.digest: d.size for d in descriptors}


def _distinct(blob_sets: dict[object, dict[object, int]]) -> int:
    seen: dict[object, int] = {}
    for blobs in blob_sets.values():
        seen.update(blobs)
    return sum(seen.values())
