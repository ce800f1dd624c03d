"""LocalContentStore: the content conformance suite, plus what only a directory of files can get wrong."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from store.descriptor import Descriptor, MediaType
from store.digest import Digest
from store.errors import IntegrityError
from store.local import LocalContentStore
from tests.store import contentsuite
from tests.support import REPO

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


def _tamper(store: LocalContentStore, digest: Digest, change: Callable[[bytes], bytes]) -> None:
    path = store.blob_path(digest)
    os.chmod(path, 0o644)  # blobs are read-only; root ignores that, others do not
    path.write_bytes(change(path.read_bytes()))
    os.chmod(path, 0o444)


def _leftovers(store: LocalContentStore) -> list[str]:
    return sorted(os.listdir(store.ingest_dir))


def _named(root: str | os.PathLike[str]) -> LocalContentStore:
    return LocalContentStore(root, unnamed_ingest=False)


HARNESSES = {
    "tmpfile": contentsuite.Harness(open=LocalContentStore, tamper=_tamper, leftovers=_leftovers),
    "named": contentsuite.Harness(open=_named, tamper=_tamper, leftovers=_leftovers),  # filesystems without O_TMPFILE
}


@pytest.mark.parametrize("mode", sorted(HARNESSES))
@pytest.mark.parametrize("check", contentsuite.CHECKS, ids=lambda f: f.__name__.removeprefix("check_"))
def test_content_suite(check: Callable[[contentsuite.Harness, Path], None], mode: str, tmp_path: Path) -> None:
    check(HARNESSES[mode], tmp_path / "store")


def test_published_blob_is_read_only_regular_file(tmp_path: Path) -> None:
    store = LocalContentStore(tmp_path)
    with store.writer() as w:
        w.write(b"abc")
        info = w.commit()
    st = os.lstat(store.blob_path(info.digest))
    assert oct(st.st_mode) == oct(0o100444)
    assert st.st_nlink == 1  # the ingest name is gone


def test_open_refuses_symlink_in_place_of_blob(tmp_path: Path) -> None:
    store = LocalContentStore(tmp_path)
    target = tmp_path / "elsewhere"
    target.write_bytes(b"abc")
    descriptor = Descriptor(MediaType.LAYER, Digest.of(b"abc"), 3)
    os.symlink(target, store.blob_path(descriptor.digest))
    with pytest.raises(IntegrityError):
        store.open(descriptor)


_OPEN_FIFO = """
import sys
from store.local import LocalContentStore
from store.descriptor import Descriptor, MediaType
from store.digest import Digest
from store.errors import IntegrityError
d = Descriptor(MediaType.LAYER, Digest.of(b"abc"), 3)
try:
    LocalContentStore(sys.argv[1]).open(d)
except IntegrityError:
    sys.exit(0)
sys.exit(1)
"""


def test_open_refuses_fifo_in_place_of_blob_without_hanging(tmp_path: Path) -> None:
    store = LocalContentStore(tmp_path)
    os.mkfifo(store.blob_path(Digest.of(b"abc")))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        done = subprocess.run([sys.executable, "-c", _OPEN_FIFO, str(tmp_path)], env=env, timeout=2, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail("open() of a FIFO blob hung")
    assert done.returncode == 0


def test_walk_ignores_stray_file_in_blobs(tmp_path: Path) -> None:
    store = LocalContentStore(tmp_path)
    (tmp_path / "blobs" / "stray").write_bytes(b"")
    assert list(store.walk()) == []
