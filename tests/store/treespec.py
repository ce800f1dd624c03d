"""Trees for layer tests: build one from a compact spec, describe one for comparison.

`describe(root)` lists every entry under `root` (not `root` itself) as a
tuple of what a layer must carry: path, type, mode, uid, gid, size, sha256,
link target, xattrs, mtime, and for hard links the first path of the inode.
Directory mtimes are included, so an applier that touches a directory after
setting its time is caught.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

KINDS = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "char",
    stat.S_IFBLK: "block",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}


def describe(root: Path | str, *, mtimes: bool = True) -> list[tuple[object, ...]]:
    root = os.fsencode(os.fspath(root))
    first_of_inode: dict[tuple[int, int], str] = {}
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            rel = os.fsdecode(os.path.relpath(path, root))
            st = os.lstat(path)
            kind = KINDS[stat.S_IFMT(st.st_mode)]
            digest = target = linked = None
            if kind == "file":
                with open(path, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            if kind == "symlink":
                target = os.fsdecode(os.readlink(path))
            if kind != "dir" and st.st_nlink > 1:
                linked = first_of_inode.setdefault((st.st_dev, st.st_ino), rel)
            if kind in ("char", "block"):
                target = (os.major(st.st_rdev), os.minor(st.st_rdev))
            out.append(
                (
                    rel,
                    kind,
                    oct(stat.S_IMODE(st.st_mode)) if kind != "symlink" else None,
                    st.st_uid,
                    st.st_gid,
                    st.st_size if kind in ("file", "symlink") else None,
                    digest,
                    target,
                    xattrs(path),
                    st.st_mtime_ns // 1_000_000_000 if mtimes else None,
                    linked,
                )
            )
    return out


def xattrs(path: bytes | str) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    return tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False)) for n in names))


def snapshot(root: Path) -> list[tuple[object, ...]]:
    """A canary's state: describe() plus nlink and nanosecond mtimes, and the root itself."""
    st = os.lstat(root)
    rows: list[tuple[object, ...]] = [(".", st.st_mode, st.st_mtime_ns, st.st_nlink)]
    for row in describe(root):
        path = os.path.join(root, str(row[0]))
        st = os.lstat(path)
        rows.append((*row, st.st_nlink, st.st_mtime_ns))
    return rows


def set_time(path: Path | str, seconds: int) -> None:
    os.utime(path, (seconds, seconds), follow_symlinks=False)


def rich_tree(root: Path, *, devices: bool) -> None:
    """A tree with one of everything a layer must carry."""
    root.mkdir(exist_ok=True)
    (root / "etc").mkdir()
    (root / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    (root / "empty").write_bytes(b"")
    (root / "bin").mkdir()
    su = root / "bin" / "su"
    su.write_bytes(b"\x7fELF" + bytes(100))
    os.chmod(su, 0o4755)
    sgid = root / "bin" / "sgid"
    sgid.write_bytes(b"x")
    os.chmod(sgid, 0o2711)
    (root / "tmp").mkdir()
    os.chmod(root / "tmp", 0o1777)
    big = root / "big.bin"
    big.write_bytes(os.urandom(700_000) + bytes(300_000))  # more than one streamed chunk
    os.link(root / "etc" / "hosts", root / "hosts.hardlink")
    os.symlink("etc/hosts", root / "rel-link")
    os.symlink("/etc/passwd", root / "abs-link")
    os.symlink("does/not/exist", root / "dangling")
    os.mkfifo(root / "fifo", 0o640)
    os.chown(root / "etc" / "hosts", 1234, 5678)
    os.chown(root / "rel-link", 42, 43, follow_symlinks=False)
    deep = root / ("d" * 80) / ("e" * 80) / ("f" * 80)
    deep.mkdir(parents=True)
    (deep / "long-name.txt").write_text("deep\n")
    (root / "dir with spaces" / "é-ü-日本").mkdir(parents=True)
    (root / "dir with spaces" / "é-ü-日本" / "naïve.txt").write_text("utf-8\n")
    (root / os.fsdecode(b"latin1-\xe9")).write_bytes(b"not utf-8 name\n")
    (root / ("n" * 200)).write_text("long single component\n")
    (root / "ro-dir").mkdir()
    (root / "ro-dir" / "inside").write_text("x")
    os.chmod(root / "ro-dir", 0o555)
    os.setxattr(root / "etc" / "hosts", "user.comment", b"\x00\xffbinary value")
    os.setxattr(root / "etc", "user.dir", b"yes")
    if devices:
        os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        os.mknod(root / "loop9", stat.S_IFBLK | 0o660, os.makedev(7, 9))
        os.setxattr(root / "rel-link", "trusted.symlink", b"on a link", follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in dirnames + filenames:
            set_time(os.path.join(dirpath, name), 1_600_000_000 + len(name))
    set_time(root, 1_600_000_000)
