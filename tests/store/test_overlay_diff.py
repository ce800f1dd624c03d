"""An OverlayFS upper directory made into an OCI layer gives back the merged view (real mounts, no mocks).

Each change set builds a lower tree L, mounts OverlayFS (L, upper U, work W,
merged M; no redirect_dir, metacopy or index), makes its changes through M,
describes M, unmounts, and commits U with `write_layer(..., overlay_upper=True)`.
Applying [layer of L, layer of U] to an empty directory must then give M
exactly: type, permission bits (set-id and sticky included), owner, size,
content, link targets, user.* xattrs, whole-second mtimes, and which names
share an inode. The diff tar itself is read back: the expected `.wh.` entries
and no others, no OverlayFS xattrs, no character device 0:0.

Upper-directory forms the kernel does not write by default are hand built
(xattr whiteouts in an `overlay.opaque=x` directory, `user.overlay.opaque=y`)
and checked against what the kernel shows when the same directory is mounted
as the top lower layer. umoci unpacks an image of both layers from the store
to the merged view too. Needs root (mounts, ownership, trusted.* xattrs);
umoci tests skip when umoci is missing, except under CI=true.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import random
import re
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pytest

from store.archive import WHITEOUT_OPAQUE, WHITEOUT_PREFIX
from store.compression import Compression, decompressor
from store.content import write_blob
from store.descriptor import MediaType
from store.digest import Digest
from store.errors import UnsafeArchiveEntry
from store.image import (
    HistoryEntry,
    ImageConfig,
    Manifest,
    canonical_json,
    host_platform,
)
from store.images import Store
from store.layer import Layer, apply_layer, write_layer
from store.local import LocalContentStore
from tests.store.treespec import KINDS

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: OverlayFS mounts, chown and trusted.* xattrs (run the suite as root)"
)

# Without redirects, metacopy and the inodes index an upper directory is self-contained.
OPTIONS = "redirect_dir=off,metacopy=off,index=off"
# userxattr implies redirect_dir=nofollow (redirect_dir=off is refused alongside it).
USERXATTR_OPTIONS = "userxattr,metacopy=off,index=off"
T0 = 1_500_000_000  # the lower tree's times, long before any change made through the mount

# --------------------------------------------------------------------------- mounts


class MountFailed(Exception):
    pass


def _mount(target: Path, options: str) -> None:
    done = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", options, str(target)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        raise MountFailed(f"mount -t overlay -o {options} {target}: {done.stderr.strip()} (exit {done.returncode})")


def _umount(target: Path) -> None:
    done = subprocess.run(["umount", str(target)], capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        subprocess.run(["umount", "--lazy", str(target)], capture_output=True, timeout=30, check=False)
        raise AssertionError(f"umount {target} failed ({done.stderr.strip()}); detached it lazily")


@contextlib.contextmanager
def mounted(target: Path, options: str) -> Iterator[Path]:
    target.mkdir(exist_ok=True)
    _mount(target, options)
    try:
        yield target
    finally:
        _umount(target)


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root) + "/"
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        points = [line.split()[4].replace("\\040", " ") for line in f]
    return [p for p in points if p.startswith(prefix)]


@pytest.fixture(scope="module")
def overlay_works(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Probe one mount; skip the module with the kernel's reason when OverlayFS is unavailable."""
    root = tmp_path_factory.mktemp("probe")
    for name in ("lower", "upper", "work"):
        (root / name).mkdir()
    try:
        with mounted(root / "merged", f"lowerdir={root}/lower,upperdir={root}/upper,workdir={root}/work,{OPTIONS}"):
            pass
    except MountFailed as exc:
        pytest.skip(f"OverlayFS cannot be mounted here: {exc}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(autouse=True)
def _no_leaked_mounts(tmp_path: Path, overlay_works: None) -> Iterator[None]:
    assert not set(",:\\") & set(str(tmp_path)), f"{tmp_path} cannot be written in OverlayFS mount options"
    yield
    leaked = _mounts_under(tmp_path)
    for point in reversed(leaked):
        subprocess.run(["umount", "--lazy", point], capture_output=True, timeout=30, check=False)
    assert not leaked, f"mounts left behind: {leaked}"


# --------------------------------------------------------------------------- describing trees


class Entry(NamedTuple):
    kind: str
    mode: str | None  # permission bits with set-id and sticky; None for symlinks
    uid: int
    gid: int
    size: int | None  # files and symlinks
    sha256: str | None
    target: object  # symlink target, or (major, minor) of a device
    xattrs: tuple[tuple[str, bytes], ...]  # user.* only
    mtime: int | None  # whole seconds (what a tar header holds)
    links: tuple[str, ...] | None  # every name of the inode, when it has more than one here


def describe(root: Path) -> dict[str, Entry]:
    """Every entry under `root` (not `root` itself), by relative path."""
    base = os.fsencode(root)
    rows: dict[str, Entry] = {}
    inodes: dict[tuple[int, int], list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.fsdecode(os.path.relpath(path, base))
            st = os.lstat(path)
            kind = KINDS[stat.S_IFMT(st.st_mode)]
            digest = target = None
            if kind == "file":
                with open(path, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            elif kind == "symlink":
                target = os.fsdecode(os.readlink(path))
            elif kind in ("char", "block"):
                target = (os.major(st.st_rdev), os.minor(st.st_rdev))
            if kind != "dir":
                inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
            names = os.listxattr(path, follow_symlinks=False)
            rows[rel] = Entry(
                kind,
                None if kind == "symlink" else oct(stat.S_IMODE(st.st_mode)),
                st.st_uid,
                st.st_gid,
                st.st_size if kind in ("file", "symlink") else None,
                digest,
                target,
                tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False)) for n in names if n.startswith("user."))),
                st.st_mtime_ns // 1_000_000_000,
                None,
            )
    for paths in inodes.values():
        if len(paths) > 1:
            for path in paths:
                rows[path] = rows[path]._replace(links=tuple(sorted(paths)))
    return rows


def assert_same_tree(actual: dict[str, Entry], expected: dict[str, Entry], what: str) -> None:
    missing = sorted(expected.keys() - actual.keys())
    extra = sorted(actual.keys() - expected.keys())
    differing = [
        f"  {path!r}:\n    want {expected[path]}\n    got  {actual[path]}"
        for path in sorted(expected.keys() & actual.keys())
        if expected[path] != actual[path]
    ]
    assert not (missing or extra or differing), (
        f"{what} differs from the merged view:\n missing: {missing}\n unexpected: {extra}\n differing:\n"
        + "\n".join(differing)
    )


# --------------------------------------------------------------------------- the lower tree

DEEP = "deep/" + "/".join(f"level{i:02d}-" + "d" * 20 for i in range(40))  # about 1.1 KiB of path
LATIN1 = os.fsdecode(b"latin1-\xe9")  # not UTF-8
LONG_LOWER = "y" * 255  # NAME_MAX: its whiteout name is 259 bytes


def _random(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _own(path: Path, mode: int | None, owner: tuple[int, int], xattrs: dict[str, bytes] | None) -> None:
    os.chown(path, *owner, follow_symlinks=False)
    if mode is not None:
        os.chmod(path, mode)  # after chown, which clears set-id bits
    for key, value in (xattrs or {}).items():
        os.setxattr(path, key, value, follow_symlinks=False)


def _file(
    root: Path,
    rel: str,
    data: bytes = b"",
    mode: int = 0o644,
    owner: tuple[int, int] = (0, 0),
    xattrs: dict[str, bytes] | None = None,
) -> None:
    path = root / rel
    path.write_bytes(data)
    _own(path, mode, owner, xattrs)


def _dir(
    root: Path, rel: str, mode: int = 0o755, owner: tuple[int, int] = (0, 0), xattrs: dict[str, bytes] | None = None
) -> None:
    path = root / rel
    path.mkdir(parents=True)
    _own(path, mode, owner, xattrs)


def build_lower(root: Path) -> None:
    """One of everything a change can touch, owned and timed so that changes show."""
    root.mkdir()
    _dir(root, "etc")
    _file(root, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    _file(root, "etc/motd", b"welcome\n", xattrs={"user.note": b"motd"})
    _file(root, "etc/shadow", b"root:*:19000::::::\n", 0o640, (0, 42))
    _dir(root, "bin")
    _file(root, "bin/su", b"\x7fELF" + bytes(200), 0o4755)
    _file(root, "bin/wall", b"\x7fELF wall", 0o2755, (0, 5))
    _dir(root, "tmp", 0o1777)
    _dir(root, "home")
    _dir(root, "home/user", 0o700, (1000, 1000))
    _file(root, "home/user/.profile", b"export PS1='$ '\n", owner=(1000, 1000))
    _file(root, "home/user/notes.txt", b"notes\n", 0o600, (1000, 1000), {"user.tag": b"a"})
    _dir(root, "data", xattrs={"user.dir": b"lower", "user.keep": b"1", "user.drop": b"bye"})
    _file(root, "data/file", b"data\n", xattrs={"user.a": b"1", "user.b": b"\x00\xff\x01", "user.c": b"3"})
    _file(root, "data/big.bin", _random(1, 300_000))  # over the writer's whole-read size
    _dir(root, "tree/a/b/empty")
    _file(root, "tree/a/b/c.txt", b"c\n")
    os.symlink("b/c.txt", root / "tree/a/link")
    os.mkfifo(root / "tree/x.fifo", 0o600)
    _dir(root, "swap/dir2file/sub")
    _file(root, "swap/dir2file/child", b"child\n")
    _file(root, "swap/dir2file/sub/grandchild", b"grandchild\n")
    _file(root, "swap/file2dir", b"a file for now\n")
    _dir(root, "opq", 0o750, (1000, 1000), {"user.opq": b"lower"})
    _file(root, "opq/old1", b"old one\n")
    _file(root, "opq/old2", b"old two\n")
    _dir(root, "opq/sub")
    _file(root, "opq/sub/old3", b"old three\n")
    os.symlink("old1", root / "opq/link")
    _dir(root, "links")
    _file(root, "links/target", b"target\n")
    os.symlink("target", root / "links/rel")
    os.symlink("/etc/passwd", root / "links/abs")
    os.symlink("nowhere", root / "links/dangling")
    _file(root, "links/file2link", b"a file, then a link\n")
    os.symlink("target", root / "links/link2file")
    _dir(root, "hard")
    _file(root, "hard/h1", b"shared by h1 and h2\n")
    os.link(root / "hard/h1", root / "hard/h2")
    _file(root, "hard/solo", b"solo\n")
    _dir(root, "names")
    for name in ("sp ace", "ü-日本", LATIN1, LONG_LOWER, "q'uo\"te"):
        _file(root, f"names/{name}", os.fsencode(name))
    _dir(root, DEEP)
    _file(root, f"{DEEP}/leaf.txt", b"leaf\n")
    _file(root, f"{DEEP}/gone.txt", b"to be deleted\n")
    _dir(root, "untouched")
    _file(root, "untouched/readme", b"no change set touches this\n")
    _dir(root, "misc")
    os.mkfifo(root / "misc/fifo", 0o640)
    for n, (dirpath, dirnames, filenames) in enumerate(os.walk(root, topdown=False)):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (T0 + n, T0 + n), follow_symlinks=False)


# --------------------------------------------------------------------------- change sets (made through M)


def new_files(m: Path) -> None:
    conf = m / "etc/new.conf"
    conf.write_bytes(b"new\n")
    os.chown(conf, 1000, 1000)
    os.chmod(conf, 0o640)
    (m / "newdir/sub").mkdir(parents=True)
    os.chmod(m / "newdir/sub", 0o700)
    (m / "newdir/sub/file").write_bytes(b"nested\n")
    (m / "newdir/empty").write_bytes(b"")
    (m / "newdir/big.bin").write_bytes(_random(2, 400_000))
    os.mkfifo(m / "newdir/fifo", 0o600)
    os.mknod(m / "newdir/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    (m / "newdir/suid").write_bytes(b"#!/bin/sh\n")
    os.chmod(m / "newdir/suid", 0o4755)
    (m / "home/user/new.txt").write_bytes(b"user's\n")
    os.chown(m / "home/user/new.txt", 1000, 1000)
    (m / "tmp/scratch").write_bytes(b"scratch\n")


def modified(m: Path) -> None:
    with open(m / "etc/motd", "ab") as f:
        f.write(b"have a nice day\n")
    (m / "etc/passwd").write_bytes(b"root:x:0:0:root:/root:/bin/bash\nuser:x:1000:1000::/home/user:/bin/sh\n")
    os.truncate(m / "home/user/notes.txt", 0)  # empty, with a user.* xattr: not an xattr whiteout
    with open(m / "data/big.bin", "r+b") as f:
        f.seek(150_000)
        f.write(b"patched in the middle")


def chmod_only(m: Path) -> None:
    os.chmod(m / "etc/passwd", 0o600)
    os.chmod(m / "bin/su", 0o755)  # setuid dropped
    os.chmod(m / "data/file", 0o4711)  # setuid added
    os.chmod(m / "bin/wall", 0o3755)  # setgid kept, sticky added
    os.chmod(m / "tmp", 0o755)  # sticky dropped from a directory
    os.chmod(m / "home/user", 0o1750)  # sticky added to a directory
    os.chmod(m / "links/target", 0o444)


def chown_only(m: Path) -> None:
    os.chown(m / "etc/motd", 1000, 1000)
    os.chown(m / "home", 1000, 100)
    os.chown(m / "links/rel", 1000, 1000, follow_symlinks=False)
    os.chown(m / "bin/su", 1000, 1000)  # the kernel drops setuid
    os.chown(m / "data", 1000, 1000)
    os.chown(m / "etc/shadow", 0, 0)


def delete_files(m: Path) -> None:
    (m / "etc/motd").unlink()
    (m / "links/dangling").unlink()
    (m / "hard/h1").unlink()  # h2, its other name, stays
    (m / "misc/fifo").unlink()


def delete_tree(m: Path) -> None:
    shutil.rmtree(m / "tree")


def dir_to_file(m: Path) -> None:
    shutil.rmtree(m / "swap/dir2file")
    (m / "swap/dir2file").write_bytes(b"was a directory\n")


def file_to_dir(m: Path) -> None:
    (m / "swap/file2dir").unlink()
    (m / "swap/file2dir").mkdir()
    (m / "swap/file2dir/inner").write_bytes(b"inside\n")


def opaque_dir(m: Path) -> None:
    shutil.rmtree(m / "opq")
    (m / "opq").mkdir()
    (m / "opq/old1").write_bytes(b"a new old1\n")
    (m / "opq/fresh").write_bytes(b"fresh\n")
    os.setxattr(m / "opq", "user.opq", b"upper")


def symlinks(m: Path) -> None:
    os.symlink("target", m / "links/new-rel")
    os.symlink("/nowhere/at/all", m / "links/new-abs")
    os.symlink("../etc", m / "links/to-dir")
    os.symlink("/" + "/".join(["long-target"] * 20) + "/ünï", m / "links/long")  # PAX linkpath
    (m / "links/rel").unlink()
    os.symlink("../etc/passwd", m / "links/rel")  # retargeted
    (m / "links/file2link").unlink()
    os.symlink("target", m / "links/file2link")
    (m / "links/link2file").unlink()
    (m / "links/link2file").write_bytes(b"now a file\n")


def hardlinks(m: Path) -> None:
    (m / "hl/sub").mkdir(parents=True)
    (m / "hl/one").write_bytes(b"one inode, three names\n")
    os.link(m / "hl/one", m / "hl/two")
    os.link(m / "hl/one", m / "hl/sub/three")
    os.link(m / "etc/passwd", m / "etc/passwd.link")  # a new name for a lower file (copied up)
    os.link(m / "hard/h2", m / "hard/h3")  # index=off: breaks h2 away from its lower link h1


def xattrs(m: Path) -> None:
    os.setxattr(m / "etc/passwd", "user.new", b"added")
    os.setxattr(m / "data/file", "user.a", b"changed")
    os.removexattr(m / "data/file", "user.c")
    os.setxattr(m / "data", "user.dir", b"upper")
    os.removexattr(m / "data", "user.drop")
    os.setxattr(m / "data", "user.added", bytes(range(256)))
    new = m / "data/new-with-xattrs"
    new.write_bytes(b"x\n")
    os.setxattr(new, "user.mime_type", b"text/plain")
    os.setxattr(new, "user.big", b"v" * 2000)
    os.removexattr(m / "home/user/notes.txt", "user.tag")


SPECIAL_NAMES = [
    "sp ace 2",
    "tab\there",
    "ünïcödé-日本語",
    os.fsdecode(b"bad-\xff\xfe"),
    "q'\"`$(x)",
    "-rf",
    "a=b%c#d",
    "star*?[x]",
    "back\\slash",
    "x" * 255,
    ".wh",
    ".whatever",
    "...",
    "trailing. ",
    "emoji-\U0001f389",
]


def special_names(m: Path) -> None:
    for name in SPECIAL_NAMES:
        (m / "names" / name).write_bytes(os.fsencode(name))
    (m / "names/sp ace").unlink()
    (m / "names" / LATIN1).unlink()
    (m / "names" / LONG_LOWER).unlink()
    with open(m / "names/ü-日本", "ab") as f:
        f.write(b"more\n")
    (m / "names/dir with spaces/ünï").mkdir(parents=True)
    (m / "names/dir with spaces/ünï/fïle").write_bytes(b"nested special\n")


def deep_paths(m: Path) -> None:
    base = m / DEEP
    with open(base / "leaf.txt", "ab") as f:
        f.write(b"changed deep down\n")
    (base / "gone.txt").unlink()
    new = base.joinpath(*(f"new{i:02d}-" + "n" * 20 for i in range(20)))
    new.mkdir(parents=True)
    (new / "bottom.txt").write_bytes(b"bottom\n")


@dataclass(frozen=True)
class ChangeSet:
    changes: tuple[Callable[[Path], None], ...]
    whiteouts: frozenset[str] = frozenset()  # the `.wh.` entries the diff layer must hold, exactly
    gone: tuple[str, ...] = ()  # lower paths that must not survive the diff


def _wh(path: str) -> str:
    head, _, base = path.rpartition("/")
    return f"{head}/{WHITEOUT_PREFIX}{base}" if head else WHITEOUT_PREFIX + base


CASES = {
    "new-files": ChangeSet((new_files,)),
    "modified-content": ChangeSet((modified,)),
    "chmod-only": ChangeSet((chmod_only,)),
    "chown-only": ChangeSet((chown_only,)),
    "deleted-files": ChangeSet(
        (delete_files,),
        frozenset(map(_wh, ["etc/motd", "links/dangling", "hard/h1", "misc/fifo"])),
        ("etc/motd", "links/dangling", "hard/h1", "misc/fifo"),
    ),
    "deleted-tree": ChangeSet((delete_tree,), frozenset({_wh("tree")}), ("tree",)),
    "dir-to-file": ChangeSet((dir_to_file,), gone=("swap/dir2file/child", "swap/dir2file/sub")),
    "file-to-dir": ChangeSet((file_to_dir,), frozenset({f"swap/file2dir/{WHITEOUT_OPAQUE}"})),
    "opaque-dir": ChangeSet(
        (opaque_dir,), frozenset({f"opq/{WHITEOUT_OPAQUE}"}), ("opq/old2", "opq/sub", "opq/link")
    ),
    "symlinks": ChangeSet((symlinks,)),
    "hardlinks": ChangeSet((hardlinks,)),
    "xattrs": ChangeSet((xattrs,)),
    "special-names": ChangeSet(
        (special_names,),
        frozenset(map(_wh, ["names/sp ace", f"names/{LATIN1}", f"names/{LONG_LOWER}"])),
        ("names/sp ace", f"names/{LATIN1}", f"names/{LONG_LOWER}"),
    ),
    "deep-paths": ChangeSet((deep_paths,), frozenset({_wh(f"{DEEP}/gone.txt")}), (f"{DEEP}/gone.txt",)),
}
COMBINED = ChangeSet(
    tuple(f for case in CASES.values() for f in case.changes),
    frozenset().union(*(case.whiteouts for case in CASES.values())),
    tuple(p for case in CASES.values() for p in case.gone),
)
CASES["combined"] = COMBINED


# --------------------------------------------------------------------------- running one change set


@dataclass
class Run:
    store: LocalContentStore
    lower_dir: Path
    upper: Path
    merged: dict[str, Entry]  # describe(M) while mounted
    lower: Layer
    diff: Layer


def overlay_round(
    tmp_path: Path,
    case: ChangeSet,
    *,
    options: str = OPTIONS,
    store: LocalContentStore | None = None,
    compression: Compression = Compression.ZSTD,
) -> Run:
    lower, upper, work = tmp_path / "lower", tmp_path / "upper", tmp_path / "work"
    build_lower(lower)
    upper.mkdir()
    work.mkdir()
    with mounted(tmp_path / "merged", f"lowerdir={lower},upperdir={upper},workdir={work},{options}") as m:
        for change in case.changes:
            change(m)
        merged = describe(m)
    store = store or LocalContentStore(tmp_path / "store")
    return Run(
        store,
        lower,
        upper,
        merged,
        write_layer(lower, store, compression=compression),
        write_layer(upper, store, compression=compression, overlay_upper=True),
    )


def apply_both(run: Run, target: Path) -> Path:
    """A fresh copy of the lower tree from its own layer, then the diff layer on top."""
    target.mkdir()
    apply_layer(run.store, run.lower.descriptor, target, diff_id=run.lower.diff_id, whiteouts="delete")
    assert_same_tree(describe(target), describe(run.lower_dir), "the lower layer applied")
    applied = apply_layer(run.store, run.diff.descriptor, target, diff_id=run.diff.diff_id, whiteouts="delete")
    assert applied.skipped == ()
    return target


def layer_members(store: LocalContentStore, layer: Layer) -> list[tarfile.TarInfo]:
    kind = Compression.of_media_type(layer.descriptor.media_type)
    with store.open(layer.descriptor) as blob, decompressor(kind, blob, limit=1 << 30) as stream:
        data = stream.read()
    assert len(data) == layer.size_uncompressed
    assert Digest.of(data) == layer.diff_id
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:", encoding="utf-8", errors="surrogateescape") as tar:
        return tar.getmembers()


_OVERLAY_PAX = re.compile(r"xattr\.(trusted|user)\.overlay\.")


def _is_whiteout_name(name: str) -> bool:
    return name.rpartition("/")[2].startswith(WHITEOUT_PREFIX)


def check_diff_tar(members: list[tarfile.TarInfo], whiteouts: frozenset[str]) -> None:
    """No OverlayFS leftovers; exactly the expected whiteouts, as empty regular files."""
    names = [m.name for m in members]
    assert len(names) == len(set(names)), "an entry appears twice"
    for member in members:
        leaked = [key for key in member.pax_headers if _OVERLAY_PAX.search(key)]
        assert not leaked, f"{member.name!r} carries OverlayFS xattrs {leaked}"
        assert not (member.ischr() and member.devmajor == 0 and member.devminor == 0), (
            f"{member.name!r} is an OverlayFS whiteout device"
        )
        if _is_whiteout_name(member.name):
            assert member.isreg() and member.size == 0, member.name
            assert not [key for key in member.pax_headers if "xattr" in key], member.name
    assert {n for n in names if _is_whiteout_name(n)} == whiteouts
    assert not [n for n in names if n.split("/")[0] == "untouched"], "the layer holds unchanged lower files"


def upper_entries(upper: Path) -> set[str]:
    """The paths of the upper directory that are not OverlayFS whiteout devices."""
    out = set()
    base = os.fsencode(upper)
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if not (stat.S_ISCHR(st.st_mode) and st.st_rdev == 0):
                out.add(os.fsdecode(os.path.relpath(path, base)))
    return out


def _overlay_xattrs(root: Path) -> dict[str, dict[str, bytes]]:
    """OverlayFS xattrs of every directory under (and of) `root`, by relative path."""
    out = {}
    for dirpath, _, _ in os.walk(root):
        found = {n: os.getxattr(dirpath, n) for n in os.listxattr(dirpath) if ".overlay." in n}
        if found:
            out[os.path.relpath(dirpath, root)] = found
    return out


# --------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_upper_dir_layer_reproduces_the_merged_view(tmp_path: Path, case: ChangeSet) -> None:
    run = overlay_round(tmp_path, case)
    members = layer_members(run.store, run.diff)
    check_diff_tar(members, case.whiteouts)
    assert {m.name for m in members if not _is_whiteout_name(m.name)} == upper_entries(run.upper)
    target = apply_both(run, tmp_path / "applied")
    assert_same_tree(describe(target), run.merged, "lower + diff layer")
    for path in case.gone:
        assert not os.path.lexists(target / path), path
    assert not _mounts_under(tmp_path)


def test_opaque_dir_is_marked_and_replaces_lower_children(tmp_path: Path) -> None:
    run = overlay_round(tmp_path, CASES["opaque-dir"])
    assert os.getxattr(run.upper / "opq", "trusted.overlay.opaque") == b"y"  # what the kernel wrote
    names = {m.name for m in layer_members(run.store, run.diff)}
    assert {"opq", f"opq/{WHITEOUT_OPAQUE}", "opq/old1", "opq/fresh"} <= names
    target = apply_both(run, tmp_path / "applied")
    assert sorted(os.listdir(target / "opq")) == ["fresh", "old1"]
    assert (target / "opq/old1").read_bytes() == b"a new old1\n"
    assert os.getxattr(target / "opq", "user.opq") == b"upper"


def test_userxattr_mount_upper_dir(tmp_path: Path) -> None:
    """A real `-o userxattr` mount: its upper marks opaque directories with user.overlay.opaque."""
    try:
        run = overlay_round(tmp_path, COMBINED, options=USERXATTR_OPTIONS)
    except MountFailed as exc:
        pytest.skip(f"this kernel refuses userxattr mounts: {exc}")
    marks = _overlay_xattrs(run.upper)
    assert marks["opq"]["user.overlay.opaque"] == b"y"
    assert marks["swap/file2dir"]["user.overlay.opaque"] == b"y"
    assert not [n for found in marks.values() for n in found if n.startswith("trusted.")]
    check_diff_tar(layer_members(run.store, run.diff), COMBINED.whiteouts)
    target = apply_both(run, tmp_path / "applied")
    assert_same_tree(describe(target), run.merged, "lower + diff layer (userxattr mount)")


@pytest.mark.parametrize("namespace", ["trusted", "user"])
def test_xattr_whiteouts_in_a_dir_marked_x(tmp_path: Path, namespace: str) -> None:
    """Kernel 6.7+ xattr whiteouts: empty files with overlay.whiteout in a dir with overlay.opaque=x.

    `x` says "holds xattr whiteouts", not "opaque": lower children not whited out stay.
    The truth is what the kernel shows with the hand-built directory as the top lower layer.
    """
    lower, hand = tmp_path / "lower", tmp_path / "upper"
    build_lower(lower)
    (hand / "opq").mkdir(parents=True)
    os.chown(hand / "opq", 1000, 1000)
    os.setxattr(hand / "opq", f"{namespace}.overlay.opaque", b"x")
    os.setxattr(hand / "opq", "user.opq", b"hand-built")
    (hand / "opq/old1").write_bytes(b"")
    os.setxattr(hand / "opq/old1", f"{namespace}.overlay.whiteout", b"")
    (hand / "opq/sub").mkdir()
    (hand / "opq/sub/old3").write_bytes(b"")
    os.setxattr(hand / "opq/sub", f"{namespace}.overlay.opaque", b"x")
    os.setxattr(hand / "opq/sub/old3", f"{namespace}.overlay.whiteout", b"")
    os.mknod(hand / "opq/link", stat.S_IFCHR, 0)  # a classic whiteout beside them
    (hand / "opq/old2").write_bytes(b"replaced\n")
    (hand / "opq/added").write_bytes(b"added\n")
    (hand / "opq/empty").write_bytes(b"")  # empty, no whiteout xattr: a file
    options = f"lowerdir={hand}:{lower}" + (",userxattr" if namespace == "user" else "")
    with mounted(tmp_path / "merged", options) as m:
        merged = describe(m)
    # The kernel's reading: old1, old3 and link are whited out, old2 replaced, nothing else hidden.
    assert sorted(p for p in merged if p.startswith("opq/")) == ["opq/added", "opq/empty", "opq/old2", "opq/sub"]

    store = LocalContentStore(tmp_path / "store")
    run = Run(store, lower, hand, merged, write_layer(lower, store), write_layer(hand, store, overlay_upper=True))
    members = layer_members(store, run.diff)
    check_diff_tar(members, frozenset({"opq/.wh.old1", "opq/sub/.wh.old3", "opq/.wh.link"}))
    by_name = {m.name: m for m in members}
    assert by_name["opq/empty"].isreg() and by_name["opq/empty"].size == 0
    target = apply_both(run, tmp_path / "applied")
    assert_same_tree(describe(target), merged, "lower + hand-built xattr-whiteout layer")


@pytest.mark.parametrize("namespace", ["trusted", "user"])
def test_hand_built_opaque_marker(tmp_path: Path, namespace: str) -> None:
    """overlay.opaque=y (user.* as a userxattr mount writes it) hides every lower child."""
    lower, hand = tmp_path / "lower", tmp_path / "upper"
    build_lower(lower)
    (hand / "opq").mkdir(parents=True)
    os.setxattr(hand / "opq", f"{namespace}.overlay.opaque", b"y")
    (hand / "opq/only").write_bytes(b"the only child\n")
    (hand / "data").mkdir()
    os.setxattr(hand / "data", f"{namespace}.overlay.opaque", b"n")  # present but not "y": merged
    (hand / "data/more").write_bytes(b"more\n")
    options = f"lowerdir={hand}:{lower}" + (",userxattr" if namespace == "user" else "")
    with mounted(tmp_path / "merged", options) as m:
        merged = describe(m)
    assert sorted(p for p in merged if p.startswith("opq/")) == ["opq/only"]
    assert "data/file" in merged

    store = LocalContentStore(tmp_path / "store")
    run = Run(store, lower, hand, merged, write_layer(lower, store), write_layer(hand, store, overlay_upper=True))
    check_diff_tar(layer_members(store, run.diff), frozenset({f"opq/{WHITEOUT_OPAQUE}"}))
    target = apply_both(run, tmp_path / "applied")
    assert_same_tree(describe(target), merged, "lower + hand-built opaque layer")


def test_a_wh_name_made_through_the_mount_is_refused(tmp_path: Path) -> None:
    """A file named `.wh.*` cannot be told from a whiteout in a layer: write_layer refuses, storing nothing."""
    lower, upper, work = tmp_path / "lower", tmp_path / "upper", tmp_path / "work"
    build_lower(lower)
    upper.mkdir()
    work.mkdir()
    with mounted(tmp_path / "merged", f"lowerdir={lower},upperdir={upper},workdir={work},{OPTIONS}") as m:
        (m / "etc/.wh.passwd").write_bytes(b"not a whiteout\n")
    store = LocalContentStore(tmp_path / "store")
    with pytest.raises(UnsafeArchiveEntry, match=r"\.wh\.passwd"):
        write_layer(upper, store, overlay_upper=True)
    assert list(store.walk()) == []


# --------------------------------------------------------------------------- umoci


def _umoci() -> str:
    path = shutil.which("umoci")
    if path is None:
        reason = "umoci is not installed (Debian: apt-get install umoci)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + "; required under CI=true")
        pytest.skip(reason)
    return path


def test_umoci_unpacks_lower_plus_diff_to_the_merged_view(tmp_path: Path) -> None:
    umoci = _umoci()
    images = Store(tmp_path / "store")
    # gzip: the umoci of Debian 12 (0.4.7) predates zstd layers.
    run = overlay_round(tmp_path, COMBINED, store=images.content, compression=Compression.GZIP)
    architecture, variant = host_platform()
    config = ImageConfig(
        architecture=architecture,
        variant=variant,
        os="linux",
        diff_ids=(run.lower.diff_id, run.diff.diff_id),
        created="2024-01-01T00:00:00Z",
        history=(HistoryEntry(created_by="lower tree"), HistoryEntry(created_by="overlay upper dir")),
    )
    config_blob = write_blob(images.content, canonical_json(config), MediaType.CONFIG)
    manifest = Manifest(config=config_blob, layers=(run.lower.descriptor, run.diff.descriptor))
    manifest_blob = write_blob(images.content, canonical_json(manifest), MediaType.MANIFEST)
    images.tags.set("localhost/overlay-diff:combined", manifest_blob)
    [(ref, tagged)] = images.tags.list()
    assert tagged.digest == manifest_blob.digest

    bundle = tmp_path / "bundle"
    done = subprocess.run(
        [umoci, "unpack", "--image", f"{images.root}:{ref}", str(bundle)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, f"umoci unpack failed ({done.returncode}):\n{done.stderr}\n{done.stdout}"
    assert_same_tree(describe(bundle / "rootfs"), run.merged, "umoci's unpack of [lower, diff]")
