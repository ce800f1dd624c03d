"""Fixtures for the build engine tests: fresh stores with a busybox base, recipes written on the fly.

Every test that checks cache behaviour gets its own store (`fresh_store`),
so that no other test's cache records can answer its lookups. Builds run
for real: namespaces, OverlayFS, the sandbox, the layer writer.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from builder.api import build
from builder.executor import BuildResult
from store.content import read_blob
from store.image import parse_manifest
from store.images import Store
from store.layer import apply_layer
from store.reference import parse_reference
from store.rootfs import import_rootfs
from tests.support import REPO, external_tool

PYBUILD = [sys.executable, "-m", "builder"]


@pytest.fixture(autouse=True)
def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: builds run in namespace sandboxes on OverlayFS (run the suite as root)")


@pytest.fixture
def fresh_store(tmp_path: Path, busybox_rootfs: Path) -> Iterator[Store]:
    """A store of its own holding only `busybox`."""
    store = Store(tmp_path / "store")
    import_rootfs(store.content, busybox_rootfs, parse_reference("busybox"))
    yield store
    with contextlib.suppress(Exception):
        store.metadata.close()


@pytest.fixture
def context_dir(tmp_path: Path) -> Path:
    path = tmp_path / "context"
    path.mkdir()
    return path


def write_tree(root: Path, files: dict[str, str | bytes]) -> None:
    """Files (relative path -> content) under `root`, parents created."""
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


@pytest.fixture
def make_build(fresh_store: Store, context_dir: Path) -> Callable[..., BuildResult]:
    """`make_build(recipe_text, files={...}, **build options)`: write the recipe and files, then build."""

    def run(recipe: str, files: dict[str, str | bytes] | None = None, **options: object) -> BuildResult:
        (context_dir / "Recipefile").write_text(textwrap.dedent(recipe).lstrip())
        write_tree(context_dir, files or {})
        return build(context_dir, store=fresh_store, **options)  # type: ignore[arg-type]

    return run


def flatten(store: Store, result: BuildResult, dest: Path) -> Path:
    """The image's filesystem, its layers applied in order, under `dest`."""
    dest.mkdir()
    manifest = parse_manifest(read_blob(store.content, result.manifest), result.manifest)
    for descriptor, diff_id in zip(manifest.layers, result.config.diff_ids, strict=True):
        apply_layer(store.content, descriptor, dest, diff_id=diff_id)
    return dest


def pybuild(*args: str, store: Store | Path, check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
    """The `pybuild` command line on `store`, its output captured as text."""
    root = store.root if isinstance(store, Store) else store
    return subprocess.run(
        [*PYBUILD, "--store", str(root), *args], capture_output=True, text=True, check=check, cwd=REPO, timeout=300, **kw  # type: ignore[call-overload]
    )


def describe_tree(root: Path) -> dict[str, tuple[object, ...]]:
    """Every path under `root`: its kind, mode, owner and content (a file's bytes, a link's target)."""
    tree: dict[str, tuple[object, ...]] = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            what: object = ("symlink", os.readlink(path))
        elif stat.S_ISREG(info.st_mode):
            what = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
        elif stat.S_ISDIR(info.st_mode):
            what = ("dir",)
        else:
            what = ("other", stat.S_IFMT(info.st_mode))
        tree[path.relative_to(root).as_posix()] = (what, stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid)
    return tree


def umoci_tree(store: Store, tag: str, scratch: Path) -> dict[str, tuple[object, ...]]:
    """`describe_tree` of the root filesystem that umoci, an independent OCI implementation, unpacks of `tag`."""
    umoci = external_tool("umoci")
    archive = scratch / "umoci-image.tar"
    # umoci 0.4 reads gzip layers only, not the store's zstd ones
    pybuild("save", tag, "-o", str(archive), "--compression", "gzip", store=store)
    layout = scratch / "umoci-layout"
    layout.mkdir()
    subprocess.run(["tar", "-xf", str(archive), "-C", str(layout)], check=True, timeout=60)
    refs = subprocess.run([umoci, "ls", "--layout", str(layout)], capture_output=True, text=True, check=True, timeout=60)
    name = next(line for line in refs.stdout.split() if line.endswith(tag))
    bundle = scratch / "umoci-bundle"
    unpacked = subprocess.run(
        [umoci, "unpack", "--image", f"{layout}:{name}", str(bundle)], capture_output=True, text=True, check=False, timeout=120
    )
    assert unpacked.returncode == 0, unpacked.stderr
    return describe_tree(bundle / "rootfs")
