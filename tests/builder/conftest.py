"""Fixtures for the sandbox and `pybuild run` tests: one store with test images, and host-state probes.

The store (session-scoped, imported once) holds three images:

- `busybox`: fixtures/busybox-rootfs.py's root filesystem, one layer, no config.
- `bare`: the same files without /etc, /proc, /dev and /sys, so that every
  mount point the sandbox needs is missing and has to be made as a stub.
- `configured`: the busybox layer plus a second layer (/app/hello, an
  executable script; /run; /var/run -> /run), and a config with ENTRYPOINT,
  CMD, ENV (PATH includes /app), WORKDIR /app and USER nobody.

The probes read the host as it is: the mount table, `pybuild-*` cgroups in
this process's own cgroups, children of this process, snapshot directories.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import stat
import tarfile
import time
from pathlib import Path

import pytest

from store.content import write_blob
from store.descriptor import MediaType
from store.image import (
    ContainerConfig,
    HistoryEntry,
    ImageConfig,
    Manifest,
    canonical_json,
    host_platform,
)
from store.images import Store
from store.layer import write_layer
from store.reference import parse_reference
from store.rootfs import import_rootfs
from store.tags import TagStore

NEEDS_ROOT = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="needs root: real namespaces, OverlayFS mounts and cgroups (run the suite as root)",
)

HELLO = b"#!/bin/sh\necho \"hello from $0 as $(id -u) in $(pwd)\"\n"
CONFIGURED = ContainerConfig(
    env=("PATH=/app:/usr/sbin:/usr/bin:/sbin:/bin", "GREETING=hello world", "OVERRIDE=image"),
    entrypoint=("/bin/echo", "ep"),
    cmd=("default-cmd",),
    working_dir="/app",
    user="nobody",
)


@pytest.fixture(scope="session")
def store_root(tmp_path_factory: pytest.TempPathFactory, busybox_rootfs: Path) -> Path:
    """A store with the images `busybox`, `bare` and `configured` (see the module docstring)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: real namespaces, OverlayFS mounts and cgroups (run the suite as root)")
    root = tmp_path_factory.mktemp("sandbox-store") / "store"
    store = Store(root)
    import_rootfs(store.content, busybox_rootfs, parse_reference("busybox"))
    import_rootfs(store.content, io.BytesIO(_without(busybox_rootfs, {"etc", "proc", "dev", "sys"})),
                  parse_reference("bare"), name="bare.tar")  # fmt: skip
    _configured_image(store, busybox_rootfs, tmp_path_factory.mktemp("layer"))
    yield root
    with contextlib.suppress(Exception):
        store.metadata.close()


@pytest.fixture(scope="session")
def store(store_root: Path) -> Store:
    return Store(store_root)


def _without(tar_path: Path, tops: set[str]) -> bytes:
    """The tarball at `tar_path` without the entries under the top-level directories `tops`."""
    out = io.BytesIO()
    with tarfile.open(tar_path) as src, tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as dst:
        for member in src.getmembers():
            if member.name.strip("./").split("/")[0] in tops:
                continue
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    return out.getvalue()


def _configured_image(store: Store, busybox_rootfs: Path, scratch: Path) -> None:
    tree = scratch / "tree"
    (tree / "app").mkdir(parents=True)
    (tree / "app" / "hello").write_bytes(HELLO)
    os.chmod(tree / "app" / "hello", 0o755)
    (tree / "run").mkdir(mode=0o755)
    (tree / "var").mkdir(mode=0o755)
    os.symlink("/run", tree / "var" / "run")
    layer = write_layer(tree, store.content, source_date_epoch=0)
    base = store.image("busybox")
    architecture, variant = host_platform()
    config = ImageConfig(
        architecture=architecture,
        variant=variant,
        os="linux",
        diff_ids=(*base.config.diff_ids, layer.diff_id),
        config=CONFIGURED,
        created="1970-01-01T00:00:00Z",
        history=(HistoryEntry(created_by="import"), HistoryEntry(created_by="test layer")),
    )
    config_descriptor = write_blob(store.content, canonical_json(config), MediaType.CONFIG)
    manifest = Manifest(config=config_descriptor, layers=(*base.manifest.layers, layer.descriptor))
    descriptor = write_blob(store.content, canonical_json(manifest), MediaType.MANIFEST)
    TagStore(store.root).set(parse_reference("configured"), descriptor)


# ---------------------------------------------------------------------------- host probes


def mountinfo() -> str:
    with open("/proc/self/mountinfo") as f:
        return f.read()


def own_cgroup_dirs() -> list[tuple[Path, bool]]:
    """(directory, is the hierarchy's root) of this process's own cgroup in every mounted hierarchy.

    Found from /proc/self/cgroup and the cgroup mounts of /proc/self/mountinfo.
    """
    mounts = []  # (fstype, root, mount point, super options)
    for line in mountinfo().splitlines():
        fields = line.split()
        sep = fields.index("-")
        fstype, superopts = fields[sep + 1], set(fields[sep + 3].split(","))
        if fstype in ("cgroup", "cgroup2"):
            mounts.append((fstype, _unescape(fields[3]), _unescape(fields[4]), superopts))
    dirs = []
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for fstype, root, point, superopts in mounts:
                v2 = fstype == "cgroup2"
                if v2 != (controllers == "") or (not v2 and not set(controllers.split(",")) <= superopts):
                    continue
                if path == root or path.startswith(root.rstrip("/") + "/"):
                    dirs.append((Path(point) / os.path.relpath(path, root), path == "/"))
    return dirs


def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def pybuild_cgroups() -> list[Path]:
    """The `pybuild-*` cgroups in this process's own cgroups: those this process (or its children) made.

    A sandbox makes its node in every hierarchy it uses, under the maker's own
    cgroup. Where one own cgroup is not a hierarchy's root (here the v1 memory
    one, per session), a node missing there was made by another process that
    shares the root cgroups (cpu, pids), and is not counted.
    """
    dirs = own_cgroup_dirs()
    found = {p for where, _ in dirs for p in _glob(where)}
    if any(not is_root for _, is_root in dirs):
        private = {p.name for where, is_root in dirs if not is_root for p in _glob(where)}
        found = {p for p in found if p.name in private}
    return sorted(found)


def _glob(where: Path) -> list[Path]:
    try:
        return [p for p in where.glob("pybuild-*") if p.is_dir()]
    except OSError:
        return []


def cgroups_left(before: list[Path], grace: float = 3.0) -> list[Path]:
    """pybuild_cgroups() not in `before` that are still there after up to `grace` seconds."""
    deadline = time.monotonic() + grace
    while True:
        left = [p for p in pybuild_cgroups() if p not in before]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def children(pid: int | None = None) -> list[tuple[int, str]]:
    """(pid, comm) of the live processes whose parent is `pid` (default: this process)."""
    pid = os.getpid() if pid is None else pid
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                data = f.read()
        except OSError:
            continue
        comm = data[data.index("(") + 1 : data.rindex(")")]
        fields = data[data.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            out.append((int(entry), comm))
    return out


def processes_with(marker: bytes) -> list[int]:
    """Pids of live processes whose command line or environment contains `marker`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        for name in ("cmdline", "environ"):
            try:
                with open(f"/proc/{entry}/{name}", "rb") as f:
                    if marker in f.read():
                        found.append(int(entry))
                        break
            except OSError:
                pass
    return found


def tree(root: Path, *, times: bool = False) -> dict[str, tuple[object, ...]]:
    """Every entry under `root`: relative path -> (type, mode, uid, gid, content hash / link target / rdev[, mtime])."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    what: object = ("file", hashlib.sha256(f.read()).hexdigest())
            elif stat.S_ISLNK(st.st_mode):
                what = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                what = ("dir",)
            else:
                what = ("other", stat.S_IFMT(st.st_mode), st.st_rdev)
            row = (what, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
            out[os.path.relpath(path, root)] = (*row, st.st_mtime_ns) if times else row
    return out


def snapshot_dirs(store: Store) -> set[str]:
    """The directory names under the store's snapshots/."""
    try:
        return set(os.listdir(store.snapshots.root))
    except FileNotFoundError:
        return set()


def committed_snapshot_dirs(store: Store) -> set[str]:
    """The directory names the store's committed snapshots have."""
    return {
        store.snapshots.upper_dir(info.name).parent.name
        for info in store.snapshots.walk()
        if info.kind.value == "committed"
    }
