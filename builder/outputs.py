"""Build outputs besides the store (`--output`), as `docker buildx build -o` names them.

    type=oci,dest=FILE      an OCI image-layout tar of the image
    type=docker,dest=FILE   a `docker save` archive (`docker load`, `podman load`)
    type=local,dest=DIR     the final filesystem, as a directory
    type=tar,dest=FILE      the final filesystem, as a tar

A bare `-o DIR` means type=local. A file or directory appears only when
complete; an existing directory for type=local must be empty.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from grammar.record import record

from .errors import BuildError

if TYPE_CHECKING:
    from store.images import Store

    from .executor import BuildResult

__all__ = ["Output", "export", "parse_output"]

_TYPES = ("oci", "docker", "local", "tar")


@record
class Output:
    type: str
    dest: str


def parse_output(text: str) -> Output:
    """`type=oci,dest=out.tar` (or a bare directory for type=local) to an Output; BuildError when malformed."""
    if "=" not in text:
        return Output("local", text)
    fields: dict[str, str] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        if not sep or not value:
            raise BuildError(f"--output {text}: expected type=TYPE,dest=PATH")
        if name not in ("type", "dest"):
            raise BuildError(f"--output {text}: unknown field {name!r} (type and dest are supported)")
        fields[name] = value
    kind = fields.get("type", "local")
    if kind not in _TYPES:
        raise BuildError(f"--output {text}: type {kind!r} is not one of {', '.join(_TYPES)}")
    if "dest" not in fields:
        raise BuildError(f"--output {text}: dest=PATH is required")
    return Output(kind, fields["dest"])


def export(store: Store, result: BuildResult, output: Output) -> None:
    """Write `result`'s image to `output` (its parent directories made as needed)."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(output.dest)), exist_ok=True)
        _export(store, result, output)
    except OSError as exc:
        raise BuildError(f"--output type={output.type},dest={output.dest}: {exc.strerror or exc}") from None


def _export(store: Store, result: BuildResult, output: Output) -> None:
    import shutil
    import tempfile

    from store.transfer import save

    tag = result.tags[0] if result.tags else None
    if output.type in ("oci", "docker"):
        save(store.content, [(tag, result.manifest)], output.dest, format=output.type)  # type: ignore[arg-type]
        return
    dest = os.path.abspath(output.dest)
    if output.type == "local":
        if os.path.lexists(dest) and (not os.path.isdir(dest) or os.listdir(dest)):
            raise BuildError(f"--output type=local,dest={output.dest}: exists and is not an empty directory")
        with tempfile.TemporaryDirectory(prefix=".pybuild-", dir=os.path.dirname(dest)) as scratch:
            tree = os.path.join(scratch, "rootfs")
            _flatten(store, result, tree)
            if os.path.isdir(dest):
                os.rmdir(dest)
            os.rename(tree, dest)
        return
    with tempfile.TemporaryDirectory(prefix=".pybuild-", dir=os.path.dirname(dest)) as scratch:
        from store.tarwriter import write_tree

        tree = os.path.join(scratch, "rootfs")
        _flatten(store, result, tree)
        partial = os.path.join(scratch, "out.tar")
        with open(partial, "wb") as f:
            write_tree(tree, f.write)
        shutil.move(partial, dest)


def _flatten(store: Store, result: BuildResult, tree: str) -> None:
    from store.content import read_blob
    from store.image import parse_manifest
    from store.layer import apply_layer

    os.mkdir(tree, 0o755)
    manifest = parse_manifest(read_blob(store.content, result.manifest), result.manifest)
    for descriptor, diff_id in zip(manifest.layers, result.config.diff_ids, strict=True):
        apply_layer(store.content, descriptor, tree, diff_id=diff_id)
