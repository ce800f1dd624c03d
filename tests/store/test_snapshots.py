"""OverlaySnapshotter and Store.checkout on real directories, with the described mounts mounted for real.

The snapshotter only describes mounts; these tests perform them with mount(8)
in a private mount namespace of their own (`unshare -m --propagation
private`), so nothing can stay mounted on the host, and look at the merged
view: the parents' files, writes landing in the upper directory, whiteouts
and opaque directories of a middle layer. A stack of 150 layers over busybox
runs in a real NamespaceSandbox (its absolute lowerdir is longer than a page,
which the sandbox must shorten). Checkout: committed snapshots named by
chainID are unpacked once, reused, rebuilt when their files are gone, never
left half made by a corrupt blob, and shared by concurrent checkouts.

Needs root: OverlayFS mounts, whiteout devices and trusted.* xattrs.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import stat
import subprocess
import threading
from pathlib import Path

import pytest

from store.checkout import checkout
from store.errors import (
    AlreadyExists,
    DigestMismatch,
    IntegrityError,
    NotFound,
    StoreError,
)
from store.image import chain_id
from store.images import Store
from store.metadata import Metadata
from store.overlay import OverlaySnapshotter
from store.rootfs import import_rootfs
from store.snapshots import Kind, Mount
from tests.store.treespec import describe

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: OverlayFS mounts, whiteout devices and trusted.* xattrs"
)

OVERLAY_OPTIONS = ("redirect_dir=off", "metacopy=off", "index=off")
PAGE = 4096


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def metadata(tmp_path: Path) -> Metadata:
    md = Metadata(tmp_path / "store")
    yield md
    md.close()


@pytest.fixture
def snaps(tmp_path: Path, metadata: Metadata) -> OverlaySnapshotter:
    assert not set(",:\\") & set(str(tmp_path)), f"{tmp_path} cannot be written in OverlayFS mount options"
    return OverlaySnapshotter(tmp_path / "store", metadata, userxattr=False)


def fake_chain(i: int | str) -> str:
    return "sha256:" + hashlib.sha256(str(i).encode()).hexdigest()


def write_files(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def committed(snaps: OverlaySnapshotter, name: str, parent: str | None, files: dict[str, str] | None = None) -> str:
    """A committed snapshot `name` over `parent` holding `files` (path -> text)."""
    key = f"unpack-{name}"
    snaps.prepare(key, parent)
    write_files(snaps.upper_dir(key), files or {})
    snaps.commit(name, key)
    return name


def whiteout(path: Path) -> None:
    """An OverlayFS whiteout (character device 0:0) at `path`, as root writes it in an upper directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(0, 0))


def mount_argv(mount: Mount, target: Path) -> list[str]:
    """`mount` as mount(8) takes it: `mount -t type -o options source target` (bind: -o rbind,...)."""
    if mount.type == "bind":
        return ["mount", "-o", ",".join(mount.options), mount.source, str(target)]
    return ["mount", "-t", mount.type, "-o", ",".join(mount.options), mount.source, str(target)]


def in_mount_namespace(mounts: tuple[Mount, ...], target: Path, script: str) -> subprocess.CompletedProcess[str]:
    """Mount `mounts` on `target` in a private mount namespace of its own, then run `script` (sh) there.

    The namespace dies with the shell: whatever it mounted goes with it.
    """
    assert len(mounts) == 1, mounts
    target.mkdir(exist_ok=True)
    body = f"{shlex.join(mount_argv(mounts[0], target))} || exit 97\ncd {shlex.quote(str(target))}\n{script}"
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-ec", body],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def mounted_ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 97, f"mount failed: {result.stderr.strip()}"
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr.strip()}"
    return result.stdout


def mounts_under(root: Path) -> list[str]:
    prefix = str(root) + "/"
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(prefix)]


@pytest.fixture(autouse=True)
def _no_leaked_mounts(tmp_path: Path) -> None:
    yield
    assert not mounts_under(tmp_path), "a mount outlived its namespace"


# --------------------------------------------------------------------------- the lifecycle


def test_prepare_without_parent_is_a_read_write_bind_of_its_fs_dir(snaps: OverlaySnapshotter) -> None:
    mounts = snaps.prepare("ctr", None)
    fs = snaps.upper_dir("ctr")
    assert mounts == (Mount("bind", str(fs), ("rbind", "rw")),)
    assert fs.is_dir() and (fs.parent / "work").is_dir()
    assert fs.parent.parent == snaps.root
    info = snaps.stat("ctr")
    assert (info.kind, info.name, info.parent) == (Kind.ACTIVE, "ctr", None)
    assert snaps.mounts("ctr") == mounts


def test_prepare_over_committed_parents_is_an_overlay_nearest_parent_first(snaps: OverlaySnapshotter) -> None:
    base = committed(snaps, fake_chain("base"), None, {"base.txt": "base"})
    mid = committed(snaps, fake_chain("mid"), base, {"mid.txt": "mid"})
    (mount,) = snaps.prepare("ctr", mid)
    own = snaps.upper_dir("ctr").parent
    assert mount.type == "overlay" and mount.source == "overlay"
    assert mount.options[:3] == (
        f"lowerdir={snaps.upper_dir(mid)}:{snaps.upper_dir(base)}",
        f"upperdir={own / 'fs'}",
        f"workdir={own / 'work'}",
    )
    assert sorted(mount.options[3:]) == sorted(OVERLAY_OPTIONS)
    assert mount.option("lowerdir") == f"{snaps.upper_dir(mid)}:{snaps.upper_dir(base)}"
    assert snaps.mounts("ctr") == (mount,)
    assert snaps.stat("ctr").parent == mid

    unprivileged = OverlaySnapshotter(snaps.root.parent, snaps._metadata, userxattr=True)
    (mount,) = unprivileged.prepare("rootless", mid)
    assert mount.option("lowerdir") == f"{snaps.upper_dir(mid)}:{snaps.upper_dir(base)}"
    # OverlayFS markers in user.* xattrs; userxattr implies redirect_dir=nofollow and the
    # kernel refuses it beside redirect_dir=off.
    assert {"userxattr", "metacopy=off", "index=off"} <= set(mount.options[3:])
    assert "redirect_dir=off" not in mount.options


def test_views_are_read_only(snaps: OverlaySnapshotter) -> None:
    base = committed(snaps, fake_chain("base"), None, {"base.txt": "base"})
    mid = committed(snaps, fake_chain("mid"), base, {"mid.txt": "mid"})
    assert snaps.view("view-1", base) == (Mount("bind", str(snaps.upper_dir(base)), ("rbind", "ro")),)
    (mount,) = snaps.view("view-2", mid)
    assert mount.type == "overlay"
    assert mount.options[0] == f"lowerdir={snaps.upper_dir(mid)}:{snaps.upper_dir(base)}"
    assert sorted(mount.options[1:]) == sorted(OVERLAY_OPTIONS)
    assert mount.option("upperdir") is None and mount.option("workdir") is None
    for key, parent in (("view-1", base), ("view-2", mid)):
        info = snaps.stat(key)
        assert (info.kind, info.parent) == (Kind.VIEW, parent)
        assert not snaps.upper_dir(key).exists()  # a view has no files of its own
    assert snaps.mounts("view-2") == (mount,)


def test_commit_moves_the_directory_and_the_record(snaps: OverlaySnapshotter) -> None:
    base = committed(snaps, fake_chain("base"), None, {"base.txt": "base"})
    snaps.prepare("work-1", base)
    (snaps.upper_dir("work-1") / "new.txt").write_text("new")
    active_dir = snaps.upper_dir("work-1").parent
    name = fake_chain("top")
    snaps.commit(name, "work-1")
    assert not active_dir.exists()
    assert snaps.upper_dir(name).is_dir()
    assert (snaps.upper_dir(name) / "new.txt").read_text() == "new"
    assert not (snaps.upper_dir(name).parent / "work").exists()  # the work dir is not part of a layer
    info = snaps.stat(name)
    assert (info.kind, info.name, info.parent) == (Kind.COMMITTED, name, base)
    with pytest.raises(NotFound):
        snaps.stat("work-1")
    assert snaps.usable(name)
    with pytest.raises(StoreError, match="committed"):
        snaps.mounts(name)


def test_commit_errors(snaps: OverlaySnapshotter) -> None:
    base = committed(snaps, fake_chain("base"), None)
    with pytest.raises(NotFound):
        snaps.commit(fake_chain("x"), "no-such-key")
    with pytest.raises(NotFound):  # committing twice: the key is gone after the first
        snaps.commit(fake_chain("again"), f"unpack-{base}")
    # Another unpack of the same chain loses: AlreadyExists, its snapshot stays active and intact.
    snaps.prepare("loser", None)
    (snaps.upper_dir("loser") / "f").write_text("mine")
    with pytest.raises(AlreadyExists):
        snaps.commit(base, "loser")
    assert snaps.stat("loser").kind is Kind.ACTIVE
    assert (snaps.upper_dir("loser") / "f").read_text() == "mine"
    assert snaps.stat(base).kind is Kind.COMMITTED
    # Only an active snapshot can be committed.
    snaps.view("a-view", base)
    with pytest.raises(StoreError) as caught:
        snaps.commit(fake_chain("v"), "a-view")
    assert not isinstance(caught.value, (NotFound, AlreadyExists))
    assert snaps.stat("a-view").kind is Kind.VIEW


def test_prepare_errors_leave_nothing_behind(snaps: OverlaySnapshotter) -> None:
    base = committed(snaps, fake_chain("base"), None)
    snaps.prepare("ctr", base)
    (snaps.upper_dir("ctr") / "keep").write_text("x")
    before = sorted(os.listdir(snaps.root))
    with pytest.raises(AlreadyExists):
        snaps.prepare("ctr", None)
    with pytest.raises(AlreadyExists):
        snaps.view("ctr", base)
    assert (snaps.upper_dir("ctr") / "keep").read_text() == "x"
    assert snaps.stat("ctr").parent == base
    with pytest.raises(NotFound):
        snaps.prepare("orphan", fake_chain("missing"))
    # A parent that is not committed (here: active) is refused, before anything is made.
    with pytest.raises(StoreError):
        snaps.prepare("on-active", "ctr")
    with pytest.raises(StoreError):
        snaps.view("view-on-active", "ctr")
    for key in ("orphan", "on-active", "view-on-active"):
        with pytest.raises(NotFound):
            snaps.stat(key)
    assert sorted(os.listdir(snaps.root)) == before


def test_remove_refuses_a_snapshot_with_children(snaps: OverlaySnapshotter) -> None:
    base = committed(snaps, fake_chain("base"), None, {"f": "x"})
    snaps.prepare("child", base)
    with pytest.raises(StoreError, match="children"):
        snaps.remove(base)
    assert snaps.usable(base) and (snaps.upper_dir(base) / "f").exists()
    snaps.remove("child")
    assert not snaps.upper_dir("child").parent.exists()
    snaps.remove(base)
    assert not snaps.upper_dir(base).parent.exists()
    assert not snaps.usable(base)
    with pytest.raises(NotFound):
        snaps.remove(base)
    assert os.listdir(snaps.root) == []


def test_walk_lists_every_snapshot(snaps: OverlaySnapshotter) -> None:
    base = committed(snaps, fake_chain("base"), None)
    mid = committed(snaps, fake_chain("mid"), base)
    snaps.prepare("ctr", mid)
    snaps.view("v", base)
    snaps.prepare("lone", None)
    walked = {info.name: (info.kind, info.parent) for info in snaps.walk()}
    assert walked == {
        base: (Kind.COMMITTED, None),
        mid: (Kind.COMMITTED, base),
        "ctr": (Kind.ACTIVE, mid),
        "v": (Kind.VIEW, base),
        "lone": (Kind.ACTIVE, None),
    }
    assert all(info.created > 0 for info in snaps.walk())


def test_sweep_removes_orphan_directories_only(snaps: OverlaySnapshotter) -> None:
    base = committed(snaps, fake_chain("base"), None, {"f": "x"})
    snaps.prepare("ctr", base)
    orphan = snaps.root / "0123456789abcdef"
    (orphan / "fs" / "deep").mkdir(parents=True)
    (orphan / "fs" / "deep" / "file").write_text("left over")
    (orphan / "work" / "work").mkdir(parents=True)
    os.chmod(orphan / "work" / "work", 0o000)  # as OverlayFS leaves it
    assert snaps.sweep() == ["0123456789abcdef"]
    assert not orphan.exists()
    assert (snaps.upper_dir(base) / "f").exists() and snaps.upper_dir("ctr").is_dir()
    assert snaps.sweep() == []


def test_mounts_of_unknown_or_committed_snapshots_raise(snaps: OverlaySnapshotter) -> None:
    base = committed(snaps, fake_chain("base"), None)
    with pytest.raises(NotFound):
        snaps.mounts("nothing")
    with pytest.raises(StoreError):
        snaps.mounts(base)


def test_discard_forgets_a_damaged_snapshot_and_what_stands_on_it(snaps: OverlaySnapshotter) -> None:
    base = committed(snaps, fake_chain("base"), None, {"f": "x"})
    mid = committed(snaps, fake_chain("mid"), base)
    snaps.prepare("ctr", mid)
    other = committed(snaps, fake_chain("other"), None)
    shutil.rmtree(snaps.upper_dir(base))
    assert not snaps.usable(base)
    snaps.discard(base)
    assert {info.name for info in snaps.walk()} == {other}
    assert sorted(os.listdir(snaps.root)) == [snaps.upper_dir(other).parent.name]


# --------------------------------------------------------------------------- real mounts


def test_merged_view_of_a_three_layer_stack(snaps: OverlaySnapshotter, tmp_path: Path) -> None:
    base = committed(
        snaps,
        fake_chain("base"),
        None,
        {"a.txt": "from base\n", "b.txt": "from base\n", "dir/c.txt": "c\n", "opq/old.txt": "old\n"},
    )
    key = "unpack-mid"
    snaps.prepare(key, base)
    mid_fs = snaps.upper_dir(key)
    write_files(mid_fs, {"m.txt": "from mid\n", "opq/new.txt": "new\n"})
    whiteout(mid_fs / "a.txt")
    os.setxattr(mid_fs / "opq", "trusted.overlay.opaque", b"y")
    mid = fake_chain("mid")
    snaps.commit(mid, key)

    mounts = snaps.prepare("ctr", mid)
    script = "ls -A . opq; echo --; cat b.txt dir/c.txt m.txt; echo written > new.txt; echo changed > b.txt; rm dir/c.txt"
    out = mounted_ok(in_mount_namespace(mounts, tmp_path / "merged", script))
    listing, _, contents = out.partition("--\n")
    # a.txt: whited out by the middle layer; opq: opaque there, so base's old.txt is hidden.
    assert listing.split() == [".:", "b.txt", "dir", "m.txt", "opq", "opq:", "new.txt"]
    assert contents.splitlines() == ["from base", "c", "from mid"]
    upper = snaps.upper_dir("ctr")
    assert (upper / "new.txt").read_text() == "written\n"
    assert (upper / "b.txt").read_text() == "changed\n"
    assert stat.S_ISCHR(os.lstat(upper / "dir" / "c.txt").st_mode)  # deleting a lower file: a whiteout
    # The committed layers are untouched.
    assert (snaps.upper_dir(base) / "b.txt").read_text() == "from base\n"
    assert (snaps.upper_dir(base) / "dir" / "c.txt").exists()
    assert (snaps.upper_dir(base) / "a.txt").exists()


def test_real_mount_of_a_bind_active_snapshot(snaps: OverlaySnapshotter, tmp_path: Path) -> None:
    mounts = snaps.prepare("ctr", None)
    mounted_ok(in_mount_namespace(mounts, tmp_path / "root", "mkdir sub; echo hi > sub/f"))
    assert (snaps.upper_dir("ctr") / "sub" / "f").read_text() == "hi\n"


def test_real_mounts_of_views_are_read_only(snaps: OverlaySnapshotter, tmp_path: Path) -> None:
    base = committed(snaps, fake_chain("base"), None, {"base.txt": "base"})
    mid = committed(snaps, fake_chain("mid"), base, {"mid.txt": "mid"})
    for key, parent, expected in (("v1", base, "base"), ("v2", mid, "basemid")):
        result = in_mount_namespace(
            snaps.view(key, parent), tmp_path / key, "cat *.txt; if touch x 2>/dev/null; then exit 3; fi"
        )
        assert mounted_ok(result) == expected
    assert sorted(os.listdir(snaps.upper_dir(base))) == ["base.txt"]
    assert sorted(os.listdir(snaps.upper_dir(mid))) == ["mid.txt"]


def test_mounts_described_for_userxattr_can_be_mounted(snaps: OverlaySnapshotter, tmp_path: Path) -> None:
    unprivileged = OverlaySnapshotter(snaps.root.parent, snaps._metadata, userxattr=True)
    base = committed(unprivileged, fake_chain("base"), None, {"base.txt": "base"})
    mounts = unprivileged.prepare("ctr", base)
    assert "userxattr" in mounts[0].options
    mounted_ok(in_mount_namespace(mounts, tmp_path / "merged", "cat base.txt; echo w > w.txt"))
    assert (unprivileged.upper_dir("ctr") / "w.txt").read_text() == "w\n"


# --------------------------------------------------------------------------- a deep stack in a sandbox


@pytest.fixture
def store(tmp_path: Path, busybox_rootfs: Path) -> Store:
    s = Store(tmp_path / "store")
    import_rootfs(s.content, busybox_rootfs, "busybox")
    yield s
    s.metadata.close()


def test_150_layers_over_busybox_in_a_sandbox(store: Store, tmp_path: Path) -> None:
    from builder.namespace_sandbox import NamespaceSandbox
    from builder.sandbox import ExecRequest

    snaps = store.snapshots
    image = store.image("busybox")
    bottom = str(chain_id(list(image.config.diff_ids)))
    parent = store.checkout(image).parent
    assert parent == bottom and snaps.usable(bottom)
    for i in range(150):
        key = f"unpack-{i}"
        snaps.prepare(key, parent)
        (snaps.upper_dir(key) / f"layer{i:03d}").write_text(f"{i}\n")
        parent = fake_chain(i)
        snaps.commit(parent, key)
    mounts = snaps.prepare("ctr", parent)
    lowerdir = mounts[0].option("lowerdir")
    assert lowerdir is not None
    lowers = lowerdir.split(":")
    assert len(lowers) == 151 and lowers[-1] == str(snaps.upper_dir(bottom))
    assert len(lowerdir) > PAGE, "the point: absolute paths do not fit in one page of mount options"
    assert len(",".join(mounts[0].options)) > PAGE

    output: list[bytes] = []
    with NamespaceSandbox(state_root=tmp_path / "sandbox") as sandbox:
        result = sandbox.run(
            ExecRequest(argv=("/bin/sh", "-c", "ls /layer* | wc -l; cat /layer000 /layer149; echo top > /top"), rootfs=mounts),
            on_output=lambda fd, data: output.append(data),
        )
    text = b"".join(output).decode()
    assert result.status == 0, (result, text)
    assert text.split() == ["150", "0", "149"]
    assert (snaps.upper_dir("ctr") / "top").read_text() == "top\n"
    assert sorted(os.listdir(snaps.upper_dir("ctr"))) == ["top"]  # mount stubs are gone again
    assert not mounts_under(tmp_path)


# --------------------------------------------------------------------------- Store.checkout


def test_first_checkout_unpacks_then_reuses(store: Store) -> None:
    image = store.image("busybox")
    chain = str(chain_id(list(image.config.diff_ids)))
    assert chain == str(image.config.diff_ids[0])  # one layer: the chainID is its diff_id
    assert not store.snapshots.usable(chain)
    first = store.checkout("busybox")
    assert first.parent == chain
    assert store.snapshots.stat(chain).kind is Kind.COMMITTED
    assert (store.snapshots.upper_dir(chain) / "bin" / "busybox").is_file()
    assert first.mounts[0].option("lowerdir") == str(store.snapshots.upper_dir(chain))
    assert first.mounts[0].option("upperdir") == str(first.upper_dir)
    before = os.stat(store.snapshots.upper_dir(chain))
    second = store.checkout(image)
    after = os.stat(store.snapshots.upper_dir(chain))
    assert (after.st_ino, after.st_mtime_ns, after.st_ctime_ns) == (before.st_ino, before.st_mtime_ns, before.st_ctime_ns)
    assert second.key != first.key and second.parent == chain
    kinds = sorted((info.kind.value, info.name) for info in store.snapshots.walk())
    assert kinds == sorted([("committed", chain), ("active", first.key), ("active", second.key)])
    first.remove()
    second.remove()


def test_a_missing_committed_snapshot_is_rebuilt_from_blobs(store: Store) -> None:
    image = store.image("busybox")
    chain = str(chain_id(list(image.config.diff_ids)))
    store.checkout(image).remove()
    fs = store.snapshots.upper_dir(chain)
    expected = describe(fs)
    assert len(expected) > 100
    shutil.rmtree(fs)
    assert not store.snapshots.usable(chain)
    again = store.checkout(image)
    assert store.snapshots.usable(chain)
    assert describe(fs) == expected
    assert store.snapshots.sweep() == []
    again.remove()


def test_a_snapshot_of_an_earlier_boot_is_unpacked_again(store: Store) -> None:
    # Snapshot files are not synced: after a reboot (a crash, as far as anyone can tell) they may be torn.
    image = store.image("busybox")
    chain = str(chain_id(list(image.config.diff_ids)))
    store.checkout(image).remove()
    fs = store.snapshots.upper_dir(chain)
    marker = fs.parent / "boot"
    assert marker.read_text() == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    expected = describe(fs)
    torn = next(p for p in sorted(fs.rglob("*")) if p.is_file() and not p.is_symlink() and p.stat().st_size > 0)
    torn.write_bytes(b"")  # what a crash can leave of a file written without fsync
    marker.write_text("00000000-0000-0000-0000-000000000000")
    assert not store.snapshots.usable(chain)
    again = store.checkout(image)
    assert store.snapshots.usable(chain)
    assert describe(fs) == expected
    again.remove()


def test_a_corrupt_blob_leaves_no_half_unpacked_snapshot(store: Store) -> None:
    image = store.image("busybox")
    chain = str(chain_id(list(image.config.diff_ids)))
    blob = store.root / "blobs" / "sha256" / image.manifest.layers[0].digest.hex
    good = blob.read_bytes()
    damaged = bytearray(good)
    damaged[len(damaged) // 2] ^= 0x01
    os.chmod(blob, 0o644)
    blob.write_bytes(bytes(damaged))
    try:
        with pytest.raises(IntegrityError) as caught:
            store.checkout(image)
        assert isinstance(caught.value, DigestMismatch)
        assert not store.snapshots.usable(chain)
        with pytest.raises(NotFound):
            store.snapshots.stat(chain)
        assert list(store.snapshots.walk()) == []
        store.snapshots.sweep()
        assert os.listdir(store.snapshots.root) == []
        assert store.metadata.leases() == []
    finally:
        blob.write_bytes(good)
        os.chmod(blob, 0o444)
    co = store.checkout(image)  # the repaired blob unpacks
    assert store.snapshots.usable(chain)
    co.remove()


def test_checkout_remove_drops_the_active_snapshot_and_its_lease(store: Store) -> None:
    co = store.checkout("busybox")
    (co.upper_dir / "scratch").write_text("x")
    [lease] = store.metadata.leases()
    assert lease.id == co.lease.id and lease.snapshots == frozenset({co.key})
    co.remove()
    assert not co.upper_dir.parent.exists()
    with pytest.raises(NotFound):
        store.snapshots.stat(co.key)
    assert store.metadata.leases() == []
    assert store.snapshots.usable(co.parent)  # the committed layers stay: a cache


def _checkout_after(barrier: threading.Barrier, store: Store, results: list[object], i: int) -> None:
    """Check busybox out of `store` once every worker is ready; the Checkout (or the error) goes to results[i]."""
    try:
        image = store.image("busybox")
        barrier.wait(timeout=30)
        results[i] = store.checkout(image)
    except BaseException as exc:  # noqa: BLE001 - reported by the test's assertion
        results[i] = exc


def test_concurrent_checkouts_share_one_committed_snapshot(tmp_path: Path, busybox_rootfs: Path) -> None:
    for round_ in range(3):
        root = tmp_path / f"store-{round_}"
        import_rootfs(Store(root).content, busybox_rootfs, "busybox")
        stores = [Store(root), Store(root)]  # one each, as two processes have
        barrier = threading.Barrier(len(stores))
        results: list[object] = [None] * len(stores)
        threads = [
            threading.Thread(target=_checkout_after, args=(barrier, store, results, i))
            for i, store in enumerate(stores)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not [r for r in results if isinstance(r, BaseException)], results
        snaps = stores[0].snapshots
        records = list(snaps.walk())
        committed_ = [r.name for r in records if r.kind is Kind.COMMITTED]
        chain = str(chain_id(list(stores[0].image("busybox").config.diff_ids)))
        assert committed_ == [chain]
        assert {r.name for r in records if r.kind is Kind.ACTIVE} == {c.key for c in results}  # type: ignore[union-attr]
        for c in results:
            assert c.upper_dir.is_dir() and c.parent == chain  # type: ignore[union-attr]
        assert snaps.sweep() == []  # the loser removed its copy
        assert len(os.listdir(snaps.root)) == 3
        for c in results:
            c.remove()  # type: ignore[union-attr]
        for s in stores:
            s.metadata.close()


def test_a_checkout_racing_an_unpack_keeps_the_winners_snapshots(tmp_path: Path, busybox_rootfs: Path) -> None:
    root = tmp_path / "store"
    a, b = Store(root), Store(root)  # two processes' views of one store
    import_rootfs(a.content, busybox_rootfs, "busybox")
    image = a.image("busybox")
    won: list[object] = []
    real_usable = b.snapshots.usable

    def usable_then_a_finishes(name: str) -> bool:
        answer = real_usable(name)
        if not won:  # B has looked (not there yet); now A unpacks, commits and checks out
            won.append(checkout(a, image))
        return answer

    b.snapshots.usable = usable_then_a_finishes  # type: ignore[method-assign]
    b_checkout = checkout(b, image)
    (a_checkout,) = won
    assert a.snapshots.stat(a_checkout.key).kind is Kind.ACTIVE  # type: ignore[attr-defined]
    assert a_checkout.upper_dir.is_dir()  # type: ignore[attr-defined]
    b_checkout.remove()
    a_checkout.remove()  # type: ignore[attr-defined]


def test_commit_over_a_leftover_directory_keeps_the_fresh_copy(store: Store) -> None:
    image = store.image("busybox")
    chain = str(chain_id(list(image.config.diff_ids)))
    store.checkout(image).remove()
    # A remove cut short: the record is gone, part of the directory is still there.
    store.metadata.delete_snapshot(chain)
    (store.snapshots.upper_dir(chain) / "bin" / "busybox").unlink()
    co = store.checkout(image)
    assert store.snapshots.usable(chain)
    assert (store.snapshots.upper_dir(chain) / "bin" / "busybox").is_file()
    co.remove()
