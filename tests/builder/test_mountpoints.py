"""The stub layer: which mount points an image lacks, looked up through its layers as OverlayFS does."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from builder.mountpoints import missing, stub_layer, with_stub_layer
from store.snapshots import Mount

NEEDS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: whiteouts are character devices 0:0")
ALL = {"proc", "dev", "sys", "etc", "etc/hosts", "etc/hostname", "etc/resolv.conf"}


def layer(root: Path, *entries: str) -> str:
    """A layer directory; entries ending in / are directories, the others empty files."""
    root.mkdir(parents=True)
    for entry in entries:
        path = root / entry
        if entry.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
    return str(root)


def paths(wanted: tuple) -> set[str]:
    return {path for path, _, _ in wanted}


def test_a_complete_image_needs_no_stubs(tmp_path: Path) -> None:
    image = layer(tmp_path / "l", "proc/", "dev/", "sys/", "etc/hosts", "etc/hostname", "etc/resolv.conf")
    assert missing([image]) == ()


def test_an_empty_image_needs_every_mount_point(tmp_path: Path) -> None:
    wanted = missing([layer(tmp_path / "l")])
    assert paths(wanted) == ALL
    assert {p: d for p, d, _ in wanted}["etc"] is True
    assert all(attributes is None for _, _, attributes in wanted)  # nothing of the image's to copy


def test_etc_files_missing_keep_the_images_etc_attributes(tmp_path: Path) -> None:
    image = layer(tmp_path / "l", "proc/", "dev/", "sys/", "etc/passwd")
    os.chmod(Path(image) / "etc", 0o750)
    os.utime(Path(image) / "etc", ns=(10**9, 10**9))
    wanted = missing([image])
    assert paths(wanted) == {"etc", "etc/hosts", "etc/hostname", "etc/resolv.conf"}
    assert wanted[0] == ("etc", True, (0o750, os.getuid(), os.getgid(), 10**9))
    stubs = Path(stub_layer(str(tmp_path / "cache"), wanted))
    st = (stubs / "etc").stat()
    assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o750, 10**9)
    assert sorted(p.name for p in (stubs / "etc").iterdir()) == ["hostname", "hosts", "resolv.conf"]
    assert not (stubs / "proc").exists()


def test_stub_layers_are_made_once(tmp_path: Path) -> None:
    wanted = missing([layer(tmp_path / "l", "etc/")])
    first = stub_layer(str(tmp_path / "cache"), wanted)
    assert stub_layer(str(tmp_path / "cache"), wanted) == first
    assert os.listdir(tmp_path / "cache") == [os.path.basename(first)]


@NEEDS_ROOT
def test_a_whiteout_above_hides_a_mount_point_below(tmp_path: Path) -> None:
    lower = layer(tmp_path / "lower", "proc/", "dev/", "sys/", "etc/hosts", "etc/hostname", "etc/resolv.conf")
    upper = layer(tmp_path / "upper", "etc/")
    os.mknod(Path(upper) / "etc" / "hosts", stat.S_IFCHR, 0)
    os.mknod(Path(upper) / "sys", stat.S_IFCHR, 0)
    assert paths(missing([upper, lower])) == {"etc", "etc/hosts", "sys"}


def test_an_opaque_directory_above_hides_what_is_below(tmp_path: Path) -> None:
    lower = layer(tmp_path / "lower", "proc/", "dev/", "sys/", "etc/hosts", "etc/hostname", "etc/resolv.conf")
    upper = layer(tmp_path / "upper", "etc/hosts")
    name = "trusted.overlay.opaque" if os.geteuid() == 0 else "user.overlay.opaque"
    os.setxattr(Path(upper) / "etc", name, b"y")
    assert paths(missing([upper, lower])) == {"etc", "etc/hostname", "etc/resolv.conf"}


def test_no_stubs_under_an_etc_that_is_a_link(tmp_path: Path) -> None:
    image = layer(tmp_path / "l", "proc/", "dev/", "sys/", "private/etc/")
    os.symlink("private/etc", Path(image) / "etc")
    assert missing([image]) == ()  # made inside the container, through the link, if at all


def test_with_stub_layer_lays_it_over_the_lower_directories(tmp_path: Path) -> None:
    image = layer(tmp_path / "l", "proc/", "dev/", "sys/", "etc/passwd")
    upper = layer(tmp_path / "u")
    rootfs = (Mount("overlay", "overlay", (f"lowerdir={image}", f"upperdir={upper}", "workdir=/w", "index=off")),)
    known: dict[str, str | None] = {}
    (mount,) = with_stub_layer(rootfs, str(tmp_path / "cache"), known)
    stubs, below = mount.option("lowerdir").split(":")  # type: ignore[union-attr]
    assert below == image and sorted(os.listdir(Path(stubs) / "etc")) == ["hostname", "hosts", "resolv.conf"]
    assert mount.options[1:] == rootfs[0].options[1:]
    assert known == {image: stubs} and with_stub_layer(rootfs, "/nowhere", known) == (mount,)  # looked up once
    bind = (Mount("bind", image, ("rbind", "rw")),)
    assert with_stub_layer(bind, str(tmp_path / "cache"), known) == bind  # no lower directories to add one to
