"""A container's changes become a layer that reproduces exactly what the container saw.

A sandbox run makes a change set on busybox (files added, changed, deleted,
directories removed and replaced, an opaque directory, links, modes and
owners); `Checkout.commit` turns the upper directory into a layer and a
committed snapshot. Then three views must agree, entry by entry (path, type,
mode, owner, size, content digest, link target):

- the merged view inside a container on the committed stack (`find` and
  `stat` in the sandbox),
- the layers applied in order onto an empty directory (store.layer),
- `umoci unpack` of an image made of the two layers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from builder.namespace_sandbox import NamespaceSandbox
from builder.sandbox import ExecRequest
from store.compression import Compression
from store.content import write_blob
from store.descriptor import MediaType
from store.image import ImageConfig, Manifest, canonical_json, host_platform
from store.images import Store
from store.layer import apply_layer
from store.reference import parse_reference
from store.rootfs import import_rootfs
from store.tags import TagStore

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: real namespaces and OverlayFS mounts")

CHANGES = r"""
set -e
mkdir -p /app/deep/er && echo new > /app/deep/er/file && chmod 640 /app/deep/er/file
echo changed >> /etc/passwd
rm /bin/true /sbin/halt
rm -rf /usr/sbin
rm -rf /root && echo now-a-file > /root
rm /linuxrc && mkdir /linuxrc && echo inside > /linuxrc/f
rm -rf /usr/bin && mkdir /usr/bin && echo only > /usr/bin/only
ln -s ../app/deep /tmp/link && ln -sf /bin/busybox /bin/cat
echo shared > /app/a && ln /app/a /app/b && ln /bin/busybox /app/busybox-link
chmod 1777 /tmp && chown 1000:1000 /app/deep && chmod 4755 /app/a
"""

# Every entry of the merged view, one JSON list per line: path, type, mode, uid, gid, size, md5 or link target.
LISTING = r"""
cd / && find . -xdev ! -path . | sort | while read -r p; do
  t=$(stat -c '%F|%a|%u|%g|%s' "$p")
  case "$t" in
    regular*) x=$(md5sum < "$p" | cut -d' ' -f1) ;;
    symbolic*) x=$(readlink "$p") ;;
    *) x= ;;
  esac
  echo "${p#.}|$t|$x"
done
"""

TYPES = {stat.S_IFREG: ("regular file", "regular empty file"), stat.S_IFDIR: ("directory",), stat.S_IFLNK: ("symbolic link",)}
MOUNT_POINTS = {"/proc", "/dev", "/sys", "/etc/hosts", "/etc/hostname", "/etc/resolv.conf"}


def describe_inside(sandbox: NamespaceSandbox, mounts: tuple) -> dict[str, tuple[str, ...]]:
    out: list[bytes] = []
    result = sandbox.run(ExecRequest(argv=("sh", "-c", LISTING), rootfs=mounts), on_output=lambda fd, d: out.append(d))
    assert result.status == 0, b"".join(out)
    entries = {}
    for line in b"".join(out).decode().splitlines():
        path, kind, mode, uid, gid, size, extra = line.split("|")
        kind = "file" if kind.startswith("regular") else kind
        if kind == "directory":
            size = ""  # directory sizes are the filesystem's business
        entries[path] = (kind, mode, uid, gid, size, extra)
    return entries


def describe_tree(root: Path) -> dict[str, tuple[str, ...]]:
    entries = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = "/" + str(path.relative_to(root))
            fmt = stat.S_IFMT(st.st_mode)
            kind = {stat.S_IFREG: "file", stat.S_IFDIR: "directory", stat.S_IFLNK: "symbolic link"}[fmt]
            extra = ""
            if fmt == stat.S_IFREG:
                extra = hashlib.md5(path.read_bytes()).hexdigest()
            elif fmt == stat.S_IFLNK:
                extra = os.readlink(path)
            size = "" if fmt == stat.S_IFDIR else str(st.st_size)
            entries[rel] = (kind, f"{stat.S_IMODE(st.st_mode):o}", str(st.st_uid), str(st.st_gid), size, extra)
    return entries


@pytest.fixture
def store(tmp_path: Path, busybox_rootfs: Path) -> Store:
    store = Store(tmp_path / "store")
    import_rootfs(store.content, busybox_rootfs, "busybox", compression=Compression.GZIP)  # umoci 0.4 reads no zstd
    return store


def test_a_containers_layer_reproduces_its_merged_view(store: Store, tmp_path: Path) -> None:
    image = store.image("busybox")
    with NamespaceSandbox(state_root=tmp_path / "state") as sandbox:
        rootfs = store.checkout(image)
        result = sandbox.run(ExecRequest(argv=("sh", "-c", CHANGES), rootfs=rootfs.mounts))
        assert result.status == 0, result
        with store.metadata.lease() as lease:
            committed = rootfs.commit(lease=lease, compression=Compression.GZIP)  # gzip: umoci 0.4 reads no zstd
        assert store.snapshots.usable(committed.chain_id)

        view_key = "view-test"
        view = store.snapshots.prepare(view_key, committed.chain_id)
        try:
            inside = describe_inside(sandbox, view)
        finally:
            store.snapshots.remove(view_key)

    for path in MOUNT_POINTS - {"/proc", "/dev", "/sys"}:  # the image has no such files: stubs, not content
        inside.pop(path, None)
    assert inside["/root"][0] == "file" and "/usr/sbin" not in inside and "/bin/true" not in inside
    assert set(inside) >= {"/app/deep/er/file", "/linuxrc/f", "/usr/bin/only", "/tmp/link"}
    assert not any(p.startswith("/usr/bin/") and p != "/usr/bin/only" for p in inside)  # opaque: old entries gone

    applied = tmp_path / "applied"
    applied.mkdir()
    for layer, diff_id in zip(image.manifest.layers, image.config.diff_ids):
        apply_layer(store.content, layer, applied, diff_id=diff_id)
    apply_layer(store.content, committed.layer.descriptor, applied, diff_id=committed.layer.diff_id)
    assert describe_tree(applied) == inside

    if shutil.which("umoci") is None and os.environ.get("CI") != "true":
        pytest.skip("umoci not installed (apt-get install umoci)")
    architecture, variant = host_platform()
    config = ImageConfig(
        architecture=architecture,
        variant=variant,
        os="linux",
        diff_ids=(*image.config.diff_ids, committed.layer.diff_id),
    )
    config_descriptor = write_blob(store.content, canonical_json(config), MediaType.CONFIG)
    manifest = Manifest(config=config_descriptor, layers=(*image.manifest.layers, committed.layer.descriptor))
    manifest_descriptor = write_blob(store.content, canonical_json(manifest), MediaType.MANIFEST)
    TagStore(store.root).set(parse_reference("localhost/diff:test"), manifest_descriptor)
    bundle = tmp_path / "bundle"
    unpacked = subprocess.run(
        ["umoci", "unpack", "--image", f"{store.root}:localhost/diff:test", str(bundle)], capture_output=True, text=True, check=False
    )
    assert unpacked.returncode == 0, unpacked.stderr
    assert describe_tree(bundle / "rootfs") == inside
    json.loads((bundle / "config.json").read_text())  # umoci made a runtime bundle of it
