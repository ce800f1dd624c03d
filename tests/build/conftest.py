"""Fixtures for the build engine tests: fresh stores with a busybox base, recipes written on the fly.

Every test that checks cache behaviour gets its own store (`fresh_store`),
so that no other test's cache records can answer its lookups. Builds run
for real: namespaces, OverlayFS, the sandbox, the layer writer.
"""

from __future__ import annotations

import contextlib
import os
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
from tests.support import REPO

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
