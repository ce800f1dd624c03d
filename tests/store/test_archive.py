"""The tar mechanics of layers: the tree writer's bytes (store.tarwriter), the guard (store.archive) and the in-root applier (store.tarapply).

Hostile archives come from tests/store/hostile_tar.py and are applied next to
a canary directory that must stay byte-for-byte unchanged (hostile-inputs
"PC-CANARY"); every hostile case runs with openat2 and with the component
walk that replaces it on old kernels.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from store.archive import WHITEOUT_OPAQUE, Limits, TarGuard
from store.digest import Digester
from store.errors import (
    LimitExceeded,
    MalformedDocument,
    UnsafeArchiveEntry,
)
from store.tarapply import apply_tar
from store.tarwriter import encode_header, write_tree
from tests.store import hostile_tar as ht
from tests.store.treespec import describe, rich_tree, snapshot

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="device nodes, trusted.* xattrs and chown need root")


def tar_of(root: Path, **options: object) -> bytes:
    out = io.BytesIO()
    write_tree(root, out.write, **options)  # type: ignore[arg-type]
    return out.getvalue()


def members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return tar.getmembers()


def names(data: bytes) -> list[str]:
    return [m.name for m in members(data)]


@pytest.fixture
def user_xattrs(tmp_path: Path) -> None:
    probe = tmp_path / "xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.probe", b"1")
    except OSError as exc:
        pytest.skip(f"the temporary filesystem does not take user.* xattrs ({exc.strerror})")
    finally:
        probe.unlink()


# --------------------------------------------------------------------------- headers


def test_encode_header_is_what_tarfile_reads() -> None:
    block = encode_header(b"dir/file", typeflag=b"0", mode=0o4755, uid=1000, gid=100, size=0, mtime=1_700_000_000)
    assert len(block) == 512
    info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    assert (info.name, info.mode, info.uid, info.gid, info.mtime) == ("dir/file", 0o4755, 1000, 100, 1_700_000_000)
    assert (info.uname, info.gname) == ("", "")


@pytest.mark.parametrize(
    ("name", "pax_keys"),
    [
        (b"a" * 100, set()),
        (b"p" * 150 + b"/" + b"n" * 90, set()),  # fits ustar prefix + name
        (b"p" * 160 + b"/" + b"n" * 90, {"path"}),
        (b"x" * 300, {"path"}),
        ("é/日本".encode(), {"path"}),
        (b"latin1-\xe9", {"path", "hdrcharset"}),
    ],
)
def test_names_use_pax_only_when_ustar_cannot_hold_them(name: bytes, pax_keys: set[str]) -> None:
    data = encode_header(name, typeflag=b"0") + bytes(1024)
    (info,) = members(data)
    assert os.fsencode(info.name) == name
    assert set(info.pax_headers) == pax_keys


def test_big_numbers_and_xattrs_go_to_pax() -> None:
    data = encode_header(
        b"f", typeflag=b"0", uid=1 << 31, gid=3_000_000, mtime=-5, xattrs=((b"user.k", b"\x00\xff\n="),)
    ) + bytes(1024)
    (info,) = members(data)
    assert (info.uid, info.gid, info.mtime) == (1 << 31, 3_000_000, -5)
    assert info.pax_headers["SCHILY.xattr.user.k"].encode("utf-8", "surrogateescape") == b"\x00\xff\n="


def test_size_beyond_ustar_goes_to_pax() -> None:
    block = encode_header(b"huge", typeflag=b"0", size=1 << 40)
    assert b"size=1099511627776\n" in block


# --------------------------------------------------------------------------- writing


def test_same_tree_same_bytes_and_byte_order(tmp_path: Path) -> None:
    root = tmp_path / "t"
    rich_tree(root, devices=ROOT)
    first, second = tar_of(root), tar_of(root)
    assert first == second
    assert not any(m.uname or m.gname for m in members(first))


def test_entries_are_depth_first_with_siblings_in_byte_order(tmp_path: Path) -> None:
    root = tmp_path / "t"
    for name in ("a/c", "a-b", "B", "é", "z/y/x"):
        (root / name).mkdir(parents=True)
    (root / os.fsdecode(b"\xff")).write_bytes(b"")
    assert names(tar_of(root)) == ["B", "a", "a/c", "a-b", "z", "z/y", "z/y/x", "é", os.fsdecode(b"\xff")]


def test_copy_of_a_tree_gives_the_same_bytes(tmp_path: Path) -> None:
    rich_tree(tmp_path / "a", devices=ROOT)
    subprocess.run(["cp", "-a", str(tmp_path / "a"), str(tmp_path / "b")], check=True)
    assert tar_of(tmp_path / "a") == tar_of(tmp_path / "b")


def test_gnu_tar_reads_what_we_write(tmp_path: Path) -> None:
    if shutil.which("tar") is None:
        pytest.skip("GNU tar is not installed")
    root = tmp_path / "t"
    rich_tree(root, devices=ROOT)
    archive = tmp_path / "t.tar"
    archive.write_bytes(tar_of(root))
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(
        ["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf", str(archive), "-C", str(out)],
        check=True,
        capture_output=True,
    )
    assert describe(out) == describe(root)


def test_entry_kinds(tmp_path: Path) -> None:
    root = tmp_path / "t"
    rich_tree(root, devices=ROOT)
    by_name = {m.name: m for m in members(tar_of(root))}
    assert by_name["bin/su"].mode == 0o4755 and by_name["bin/sgid"].mode == 0o2711
    assert by_name["tmp"].isdir() and by_name["tmp"].mode == 0o1777
    assert by_name["rel-link"].issym() and by_name["rel-link"].linkname == "etc/hosts"
    assert (by_name["rel-link"].uid, by_name["rel-link"].gid) == (42, 43)
    assert by_name["abs-link"].linkname == "/etc/passwd"
    assert by_name["etc/hosts"].isreg() and (by_name["etc/hosts"].uid, by_name["etc/hosts"].gid) == (1234, 5678)
    # The inode is first met as etc/hosts (e < h), so the later path links to it.
    assert by_name["hosts.hardlink"].islnk() and by_name["hosts.hardlink"].linkname == "etc/hosts"
    assert by_name["fifo"].isfifo() and by_name["fifo"].mode == 0o640
    assert by_name["big.bin"].size == 1_000_000
    if ROOT:
        assert by_name["null"].ischr() and (by_name["null"].devmajor, by_name["null"].devminor) == (1, 3)
        assert by_name["loop9"].isblk() and (by_name["loop9"].devmajor, by_name["loop9"].devminor) == (7, 9)


def test_xattrs_are_recorded_raw(tmp_path: Path, user_xattrs: None) -> None:
    root = tmp_path / "t"
    rich_tree(root, devices=ROOT)
    by_name = {m.name: m for m in members(tar_of(root))}
    value = by_name["etc/hosts"].pax_headers["SCHILY.xattr.user.comment"]
    assert value.encode("utf-8", "surrogateescape") == b"\x00\xffbinary value"
    assert by_name["etc"].pax_headers["SCHILY.xattr.user.dir"] == "yes"
    if ROOT:
        assert by_name["rel-link"].pax_headers["SCHILY.xattr.trusted.symlink"] == "on a link"


def test_sockets_are_skipped(tmp_path: Path) -> None:
    import socket

    root = tmp_path / "t"
    root.mkdir()
    (root / "keep").write_text("x")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(root / "sock"))
        assert names(tar_of(root)) == ["keep"]


def test_mtimes_are_whole_seconds_clamped_to_the_epoch(tmp_path: Path) -> None:
    root = tmp_path / "t"
    root.mkdir()
    (root / "old").write_text("o")
    (root / "new").write_text("n")
    os.utime(root / "old", ns=(1_000_000_000_999_999_999, 1_000_000_000_999_999_999))
    os.utime(root / "new", ns=(2_000_000_000_500_000_000, 2_000_000_000_500_000_000))
    plain = {m.name: m.mtime for m in members(tar_of(root))}
    assert plain == {"new": 2_000_000_000, "old": 1_000_000_000}
    clamped = {m.name: m.mtime for m in members(tar_of(root, source_date_epoch=1_500_000_000))}
    assert clamped == {"new": 1_500_000_000, "old": 1_000_000_000}


def test_whiteout_names_are_refused_in_a_plain_tree(tmp_path: Path) -> None:
    root = tmp_path / "t"
    (root / "d").mkdir(parents=True)
    (root / "d" / ".wh.x").write_text("")
    with pytest.raises(UnsafeArchiveEntry) as caught:
        tar_of(root)
    assert caught.value.entry == "d/.wh.x"


def test_depth_limit_while_writing(tmp_path: Path) -> None:
    path = tmp_path / "t"
    path.mkdir()
    deep = path.joinpath(*["d"] * 12)
    deep.mkdir(parents=True)
    with pytest.raises(LimitExceeded):
        tar_of(path, limits=Limits(max_depth=8))


# --------------------------------------------------------------------------- overlay upper


@needs_root
def test_overlay_upper_whiteouts_become_oci_ones(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    (upper / "etc" / "opaque").mkdir(parents=True)
    (upper / "etc" / "opaque" / "kept").write_text("new")
    os.setxattr(upper / "etc" / "opaque", "trusted.overlay.opaque", b"y")
    (upper / "etc" / "user-opaque").mkdir()
    os.setxattr(upper / "etc" / "user-opaque", "user.overlay.opaque", b"y")
    os.mknod(upper / "etc" / "gone", stat.S_IFCHR, 0)
    (upper / "etc" / "xattr-gone").write_bytes(b"")
    os.setxattr(upper / "etc" / "xattr-gone", "user.overlay.whiteout", b"")
    (upper / "etc" / "real").write_text("r")
    os.setxattr(upper / "etc" / "real", "trusted.overlay.origin", b"\x00\x01")
    os.setxattr(upper / "etc" / "real", "user.keep", b"k")
    os.utime(upper / "etc" / "gone", (1_700_000_000, 1_700_000_000), follow_symlinks=False)
    data = tar_of(upper, overlay_upper=True)
    by_name = {m.name: m for m in members(data)}
    assert list(by_name) == [
        "etc",
        "etc/.wh.gone",
        "etc/.wh.xattr-gone",
        "etc/opaque",
        f"etc/opaque/{WHITEOUT_OPAQUE}",
        "etc/opaque/kept",
        "etc/real",
        "etc/user-opaque",
        f"etc/user-opaque/{WHITEOUT_OPAQUE}",
    ]
    for name in ("etc/.wh.gone", "etc/.wh.xattr-gone", f"etc/opaque/{WHITEOUT_OPAQUE}"):
        whiteout = by_name[name]
        assert (whiteout.type, whiteout.size, whiteout.mode, whiteout.mtime, whiteout.uid) == (b"0", 0, 0, 0, 0)
    assert by_name["etc/real"].pax_headers == {"SCHILY.xattr.user.keep": "k"}
    assert not by_name["etc/opaque"].pax_headers
    assert data == tar_of(upper, overlay_upper=True)


@needs_root
def test_overlay_upper_with_an_opaque_root(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    upper.mkdir()
    (upper / "f").write_text("f")
    os.setxattr(upper, "trusted.overlay.opaque", b"y")
    assert names(tar_of(upper, overlay_upper=True)) == [WHITEOUT_OPAQUE, "f"]


@needs_root
@pytest.mark.parametrize("xattr", ["trusted.overlay.redirect", "user.overlay.metacopy", "trusted.overlay.metacopy"])
def test_overlay_redirect_and_metacopy_are_refused(tmp_path: Path, xattr: str) -> None:
    upper = tmp_path / "upper"
    (upper / "d").mkdir(parents=True)
    if "redirect" in xattr:
        (upper / "d" / "moved").mkdir()
    else:
        (upper / "d" / "moved").write_bytes(b"")
    os.setxattr(upper / "d" / "moved", xattr, b"/elsewhere")
    with pytest.raises(UnsafeArchiveEntry) as caught:
        tar_of(upper, overlay_upper=True)
    assert caught.value.entry == "d/moved"
    assert xattr in str(caught.value)


@needs_root
def test_plain_tree_keeps_char_device_zero_and_drops_overlay_xattrs(tmp_path: Path) -> None:
    root = tmp_path / "t"
    root.mkdir()
    os.mknod(root / "c", stat.S_IFCHR, 0)
    (root / "d").mkdir()
    os.setxattr(root / "d", "trusted.overlay.opaque", b"y")
    by_name = {m.name: m for m in members(tar_of(root))}
    assert by_name["c"].ischr() and not by_name["d"].pax_headers


# --------------------------------------------------------------------------- the guard


def guarded(data: bytes, limits: Limits | None = None) -> TarGuard:
    guard = TarGuard(io.BytesIO(data), limits or Limits())
    while guard.read(1 << 16):
        pass
    return guard


def test_guard_passes_a_good_archive_through_unchanged(tmp_path: Path) -> None:
    rich_tree(tmp_path / "t", devices=False)
    data = tar_of(tmp_path / "t")
    digester = Digester()
    guard = TarGuard(io.BytesIO(data), Limits(), digester)
    out = b"".join(iter(lambda: guard.read(777), b""))
    guard.drain()
    assert out == data and digester.size == len(data) and guard.ended
    assert guard.entries == len(members(data))


@pytest.mark.parametrize(
    ("data", "error", "text"),
    [
        (ht.archive(ht.file(b"a", b"x"), end=False), MalformedDocument, "without an end-of-archive marker"),
        (ht.archive(ht.file(b"a", b"x" * 1000))[:700], MalformedDocument, "in entry 'a'"),
        (ht.archive(ht.file(b"a"), ht.header(b"b", bad_checksum=True)), MalformedDocument, "bad header checksum"),
        (ht.archive(ht.header(b"a", size_field=b"-0000001234\x00")), MalformedDocument, "negative size"),
        (ht.archive(ht.header(b"a", size_field=b"\xff" * 12)), MalformedDocument, "negative size"),
        (ht.archive(ht.header(b"a", size_field=b"12x4\x00      ")), MalformedDocument, "bad numeric field"),
        (ht.archive(ht.pax({b"comment": b"9" * 100}), ht.file(b"a")), MalformedDocument, "run of more than 64"),
        (ht.archive(ht.pax({b"path": b"x"}, global_=True), ht.file(b"a")), MalformedDocument, "global PAX"),
        (ht.archive(ht.pax({b"size": b"1_0"}), ht.file(b"a")), MalformedDocument, "PAX size"),
        (ht.archive(ht.pax({b"mtime": b"nan"}), ht.file(b"a")), MalformedDocument, "PAX mtime"),
        (ht.archive(ht.pax({b"a": b"1"}), ht.pax({b"b": b"2"}), ht.file(b"a")), MalformedDocument, "two PAX"),
        (ht.archive(ht.pax({b"a": b"1"})), MalformedDocument, "without an entry"),
        (ht.archive(ht.header(b"sparse", typeflag=b"S")), UnsafeArchiveEntry, "sparse"),
        (ht.archive(ht.pax({b"GNU.sparse.major": b"1"}), ht.file(b"a")), UnsafeArchiveEntry, "sparse"),
        (ht.archive(ht.header(b"vol", typeflag=b"V")), UnsafeArchiveEntry, "entry type"),
        (ht.archive(ht.file(b"evil\x00../../x", b"pwned")), UnsafeArchiveEntry, "NUL"),
        (ht.archive(ht.hardlink(b"l", b"target\x00/etc/passwd")), UnsafeArchiveEntry, "NUL"),
        (ht.archive(ht.pax({b"path": b"a\x00b"}), ht.file(b"a")), UnsafeArchiveEntry, "NUL"),
    ],
    ids=[
        "no-end-marker",
        "truncated-data",
        "bad-checksum-mid-stream",
        "negative-octal-size",
        "negative-base256-size",
        "garbage-size",
        "pax-digit-run",
        "global-pax-path",
        "pax-size-underscore",
        "pax-mtime-nan",
        "two-pax-headers",
        "pax-without-entry",
        "gnu-sparse",
        "pax-sparse",
        "volume-header",
        "nul-in-name",
        "nul-in-linkname",
        "nul-in-pax-path",
    ],
)
def test_guard_refuses(data: bytes, error: type[Exception], text: str) -> None:
    with pytest.raises(error, match=text.replace("(", r"\(")):
        guard = guarded(data)
        guard.drain()


def test_guard_caps_header_blocks_before_reading_them() -> None:
    huge = ht.header(b"././@PaxHeader", typeflag=b"x", size=512 << 20)  # 512 MiB declared, none present
    with pytest.raises(LimitExceeded, match="tar header block"):
        guarded(huge)
    with pytest.raises(LimitExceeded):
        guarded(ht.header(b"././@LongLink", typeflag=b"L", size=2 << 30))


def test_guard_refuses_an_entry_larger_than_a_layer_may_be() -> None:
    data = ht.pax({b"size": b"1099511627776"}) + ht.file(b"huge") + bytes(1 << 20)
    with pytest.raises(LimitExceeded, match="entry 'huge' declares 1099511627776 bytes"):
        guarded(data)


def test_guard_counts_entries() -> None:
    data = ht.archive(*(ht.file(b"f%d" % i) for i in range(11)))
    with pytest.raises(LimitExceeded, match="more than 10 entries"):
        guarded(data, Limits(max_entries=10))


def test_many_small_pax_records_are_fine() -> None:
    records = [(b"SCHILY.xattr.user.k%05d" % i, b"v") for i in range(20_000)]
    data = ht.archive(ht.pax(records), ht.file(b"a", b"x"))
    assert guarded(data).entries == 1


# --------------------------------------------------------------------------- applying: hostile


@pytest.fixture
def arena(tmp_path: Path):
    """T/root (the target) beside T/canary, whose snapshot must not change."""
    root = tmp_path / "root"
    root.mkdir()
    canary = tmp_path / "canary"
    (canary / "sub").mkdir(parents=True)
    (canary / "victim").write_text("CANARY-victim")
    os.chmod(canary / "victim", 0o600)
    os.symlink("victim", canary / "link")
    before = snapshot(canary)
    yield root, canary
    assert snapshot(canary) == before, "the canary changed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["canary", "root"], "something was created beside root"


RESOLVERS = [pytest.param(None, id="openat2"), pytest.param(False, id="walk")]


def hostile_cases(canary: Path) -> list[tuple[str, bytes, str]]:
    abs_canary = os.fsencode(canary)
    return [
        ("dotdot", ht.archive(ht.file(b"../canary/evil", b"pwned")), "../canary/evil"),
        ("inner-dotdot", ht.archive(ht.file(b"a/../../canary/evil", b"pwned")), "a/../../canary/evil"),
        ("absolute", ht.archive(ht.file(abs_canary + b"/evil", b"pwned")), os.fsdecode(abs_canary + b"/evil")),
        ("double-slash", ht.archive(ht.file(b"//double/slash", b"x")), "//double/slash"),
        (
            "symlink-absolute-then-write",
            ht.archive(ht.symlink(b"l", abs_canary), ht.file(b"l/pwn", b"pwned")),
            "l/pwn",
        ),
        ("symlink-up-then-write", ht.archive(ht.symlink(b"l", b"../.."), ht.file(b"l/pwn", b"pwned")), "l/pwn"),
        (
            "symlink-up-then-mkdir",
            ht.archive(ht.symlink(b"l", b"../canary"), ht.directory(b"l/newdir")),
            "l/newdir",
        ),
        (
            "symlink-deep-then-write",
            ht.archive(ht.directory(b"a"), ht.symlink(b"a/l", b"../../canary"), ht.file(b"a/l/x/pwn", b"pwned")),
            "a/l/x/pwn",
        ),
        ("hardlink-dotdot", ht.archive(ht.hardlink(b"l", b"../canary/victim")), "l"),
        ("hardlink-absolute", ht.archive(ht.hardlink(b"l", abs_canary + b"/victim")), "l"),
        (
            "hardlink-through-symlink",
            ht.archive(ht.symlink(b"d", abs_canary), ht.hardlink(b"l", b"d/victim")),
            "l",
        ),
        ("hardlink-missing", ht.archive(ht.hardlink(b"l", b"nothing")), "l"),
        ("hardlink-directory", ht.archive(ht.directory(b"d"), ht.hardlink(b"l", b"d")), "l"),
        ("whiteout-dot", ht.archive(ht.file(b".wh..")), ".wh.."),
        ("whiteout-dotdot", ht.archive(ht.file(b".wh...")), ".wh..."),
        ("whiteout-dotdot-nested", ht.archive(ht.file(b"etc/.wh...")), "etc/.wh..."),
        ("whiteout-empty", ht.archive(ht.file(b".wh.")), ".wh."),
        ("whiteout-of-whiteout", ht.archive(ht.file(b".wh..wh.foo")), ".wh..wh.foo"),
        ("whiteout-as-directory", ht.archive(ht.file(b".wh.a/b")), ".wh.a/b"),
        ("opaque-as-directory", ht.archive(ht.file(b".wh..wh..opq/x")), ".wh..wh..opq/x"),
        (
            "whiteout-through-symlink",
            ht.archive(ht.symlink(b"l", abs_canary), ht.file(b"l/.wh.victim")),
            "l/.wh.victim",
        ),
        (
            "hardlink-through-own-link-out",
            ht.archive(ht.symlink(b"d", b".."), ht.hardlink(b"l", b"d/canary/victim")),
            "l",
        ),
        (
            "opaque-in-symlink",
            ht.archive(ht.symlink(b"l", b"../canary"), ht.file(b"l/.wh..wh..opq")),
            "l/.wh..wh..opq",
        ),
        ("replace-root", ht.archive(ht.symlink(b".", abs_canary), ht.file(b"evil")), "."),
        ("replace-root-dotslash", ht.archive(ht.symlink(b"./", abs_canary)), "./"),
        ("newline", ht.archive(ht.file(b"a\nb")), "a\nb"),
        ("nul-in-name", ht.archive(ht.file(b"evil\x00../../canary/x", b"pwned")), "evil\\x00../../canary/x"),
        ("pax-path-escape", ht.archive(ht.pax({b"path": b"../canary/evil"}) + ht.file(b"innocent")), "../canary/evil"),
        ("gnu-longname-escape", ht.archive(ht.longname(b"../canary/evil") + ht.file(b"innocent")), "../canary/evil"),
    ]


HOSTILE = [case for case, _, _ in hostile_cases(Path("/canary"))]


@pytest.mark.parametrize("use_openat2", RESOLVERS)
@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_archive_is_refused(arena: tuple[Path, Path], use_openat2: bool | None, case: str) -> None:
    root, canary = arena
    data, entry = next((data, entry) for name, data, entry in hostile_cases(canary) if name == case)
    with pytest.raises(UnsafeArchiveEntry) as caught:
        apply_tar(io.BytesIO(data), root, use_openat2=use_openat2)
    assert caught.value.entry == entry
    assert repr(entry) in str(caught.value)


def contained_cases(canary: Path) -> list[tuple[str, dict[str, str], bytes, dict[str, bytes | None]]]:
    """Legal-but-odd archives: (name, symlinks a lower layer left in the target, archive, expected results).

    Each is applied with every effect inside the target; expected maps a path
    to its content (None for a directory).
    """
    abs_canary = os.fsdecode(canary)
    inside = abs_canary.lstrip("/")
    return [
        (
            "lower-absolute-link-then-write",
            {"l": abs_canary},
            ht.archive(ht.file(b"l/pwn", b"pwned")),
            {f"{inside}/pwn": b"pwned"},
        ),
        ("lower-up-link-then-write", {"l": "../.."}, ht.archive(ht.file(b"l/pwn", b"pwned")), {"pwn": b"pwned"}),
        (
            "lower-up-link-then-mkdir",
            {"l": "../canary"},
            ht.archive(ht.directory(b"l/newdir")),
            {"canary/newdir": None},
        ),
        ("lower-link-then-whiteout", {"l": abs_canary}, ht.archive(ht.file(b"l/.wh.victim")), {}),
        (
            "symlink-chain-up",
            {},
            ht.archive(
                ht.directory(b"a"), ht.symlink(b"a/b", b".."), ht.symlink(b"c", b"a/b/.."), ht.file(b"c/pwn", b"x")
            ),
            {"pwn": b"x"},
        ),
        (
            "link-out-replaced-by-a-directory",
            {},
            ht.archive(ht.symlink(b"l", os.fsencode(canary)), ht.directory(b"l"), ht.file(b"l/f", b"ok")),
            {"l/f": b"ok"},
        ),
    ]


CONTAINED = [case[0] for case in contained_cases(Path("/canary"))]


@pytest.mark.parametrize("use_openat2", RESOLVERS)
@pytest.mark.parametrize("case", CONTAINED)
def test_odd_archive_is_contained(arena: tuple[Path, Path], use_openat2: bool | None, case: str) -> None:
    root, canary = arena
    lower, data, expected = next(c[1:] for c in contained_cases(canary) if c[0] == case)
    for link, target in lower.items():
        os.symlink(target, root / link)
    apply_tar(io.BytesIO(data), root, use_openat2=use_openat2)
    for path, content in expected.items():
        target = root / path
        assert not target.is_symlink() and target.parent.resolve().is_relative_to(root)
        if content is None:
            assert target.is_dir()
        else:
            assert target.read_bytes() == content
    canary_inodes = {c.lstat().st_ino for c in canary.rglob("*")}
    assert not any(entry.lstat().st_ino in canary_inodes for entry in root.rglob("*"))


@pytest.mark.parametrize(
    ("limits", "member", "entry"),
    [
        (Limits(max_path=64), ht.pax({b"path": b"a/" * 40}) + ht.file(b"x"), "a/" * 39 + "a"),
        (Limits(max_component=50), ht.file(b"c" * 60), "c" * 60),
        (Limits(max_depth=5), ht.file(b"a/" * 6 + b"f"), "a/" * 6 + "f"),
        (Limits(), ht.pax({b"path": b"p" * 300}) + ht.file(b"x"), "p" * 300),
        (Limits(), ht.pax({b"path": b"x" * 5000}) + ht.file(b"x"), "x" * 5000),
    ],
    ids=["path", "component", "depth", "component-300", "path-5000"],
)
def test_name_limits(arena: tuple[Path, Path], limits: Limits, member: bytes, entry: str) -> None:
    root, _ = arena
    with pytest.raises(LimitExceeded) as caught:
        apply_tar(io.BytesIO(ht.archive(member)), root, limits=limits)
    assert repr(entry) in str(caught.value)


# --------------------------------------------------------------------------- applying: semantics


def apply_bytes(data: bytes, root: Path, **options: object):
    return apply_tar(io.BytesIO(data), root, **options)  # type: ignore[arg-type]


def listing(root: Path) -> list[str]:
    return sorted(str(row[0]) for row in describe(root))


@pytest.mark.parametrize("use_openat2", RESOLVERS)
def test_write_then_apply_gives_the_same_tree(tmp_path: Path, use_openat2: bool | None, user_xattrs: None) -> None:
    source, target = tmp_path / "src", tmp_path / "dst"
    rich_tree(source, devices=ROOT)
    target.mkdir()
    applied = apply_bytes(tar_of(source), target, use_openat2=use_openat2)
    assert describe(target) == describe(source)
    assert applied.skipped == ()


@pytest.mark.parametrize("tar_format", ["gnu", "posix", "ustar-free-names"])
def test_archives_from_gnu_tar_apply_the_same(tmp_path: Path, tar_format: str, user_xattrs: None) -> None:
    """A differential check of the guarded reader against what GNU tar writes."""
    if shutil.which("tar") is None:
        pytest.skip("GNU tar is not installed")
    source, target = tmp_path / "src", tmp_path / "dst"
    rich_tree(source, devices=ROOT)
    archive = tmp_path / "t.tar"
    options = {
        "gnu": ["--format=gnu"],
        "posix": ["--format=posix", "--xattrs", "--xattrs-include=*"],
        "ustar-free-names": ["--format=posix", "--pax-option=delete=atime,delete=ctime"],
    }[tar_format]
    subprocess.run(
        ["tar", *options, "--numeric-owner", "-cf", str(archive), "-C", str(source), "."], check=True, capture_output=True
    )
    target.mkdir()
    with archive.open("rb") as stream:
        apply_tar(stream, target)
    expected = describe(source)
    if tar_format != "posix":  # only PAX carries xattrs
        expected = [(*row[:8], (), *row[9:]) for row in expected]
    assert describe(target) == expected


def test_absolute_symlinks_are_stored_verbatim_and_relative_ones_followed(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    data = ht.archive(
        ht.symlink(b"abs", b"/etc"),
        ht.directory(b"real"),
        ht.symlink(b"rel", b"real"),
        ht.file(b"rel/f", b"via link"),
        ht.symlink(b"up", b"real/../real"),
        ht.file(b"up/g", b"g"),
    )
    apply_bytes(data, root)
    assert os.readlink(root / "abs") == "/etc"
    assert (root / "real" / "f").read_text() == "via link" and (root / "real" / "g").read_text() == "g"


def test_dangling_relative_symlink_parent_is_created_inside(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    apply_bytes(ht.archive(ht.symlink(b"l", b"made/here"), ht.file(b"l/f", b"x")), root, use_openat2=False)
    assert (root / "made" / "here" / "f").read_text() == "x"


def test_last_entry_wins_and_types_change(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    data = ht.archive(
        ht.directory(b"a"),
        ht.file(b"a/f", b"1"),
        ht.file(b"a", b"now a file"),
        ht.file(b"p", b"file"),
        ht.directory(b"p"),
        ht.file(b"p/q", b"q"),
        ht.file(b"same", b"first"),
        ht.file(b"same", b"second"),
        ht.symlink(b"s", b"x"),
        ht.file(b"s", b"regular"),
    )
    apply_bytes(data, root)
    assert (root / "a").read_text() == "now a file"
    assert (root / "p" / "q").read_text() == "q"
    assert (root / "same").read_text() == "second"
    assert not (root / "s").is_symlink() and (root / "s").read_text() == "regular"


def test_directory_modes_and_times_are_set_last(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    data = ht.archive(ht.directory(b"ro", mode=0o555), ht.file(b"ro/inner", b"x"), ht.directory(b"ro/sub", mode=0))
    apply_bytes(data, root)
    assert stat.S_IMODE(os.stat(root / "ro").st_mode) == 0o555
    assert stat.S_IMODE(os.stat(root / "ro" / "sub").st_mode) == 0
    assert os.stat(root / "ro").st_mtime == 1_600_000_000


def test_hardlink_to_a_lower_file(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0")
    apply_bytes(ht.archive(ht.hardlink(b"copy", b"etc/passwd")), root)
    assert os.stat(root / "copy").st_ino == os.stat(root / "etc" / "passwd").st_ino


def test_whiteouts_delete_lower_files(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "etc" / "dir").mkdir(parents=True)
    (root / "etc" / "dir" / "inner").write_text("x")
    (root / "etc" / "file").write_text("x")
    (root / "keep").write_text("x")
    data = ht.archive(
        ht.file(b"etc/.wh.dir"),
        ht.file(b"etc/.wh.file"),
        ht.file(b"etc/.wh.never-existed"),
        ht.file(b"dne/../.wh.keep-not"),
    )
    apply_bytes(data, root)
    assert listing(root) == ["etc", "keep"]


def test_whiteouts_spare_this_layers_own_files(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    (root / "f").write_text("lower")
    apply_bytes(ht.archive(ht.file(b"f", b"this layer"), ht.file(b".wh.f")), root)
    assert (root / "f").read_text() == "this layer"


def test_whiteout_of_a_directory_this_layer_fills_keeps_only_its_part(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "lower").write_text("lower")
    apply_bytes(ht.archive(ht.file(b"a/b/mine", b"m"), ht.file(b"a/.wh.b")), root)
    assert listing(root) == ["a", "a/b", "a/b/mine"]


@pytest.mark.parametrize("marker_last", [False, True], ids=["marker-first", "marker-last"])
def test_opaque_directory_hides_lower_content_whatever_the_order(tmp_path: Path, marker_last: bool) -> None:
    root = tmp_path / "r"
    (root / "a" / "b" / "old").mkdir(parents=True)
    (root / "a" / "b" / "lower-file").write_text("lower")
    (root / "a" / "lower").write_text("lower")
    (root / "outside").write_text("kept")
    own = [ht.file(b"a/b/c/foo", b"new"), ht.file(b"a/top", b"new")]
    marker = [ht.file(b"a/" + WHITEOUT_OPAQUE.encode())]
    apply_bytes(ht.archive(*(own + marker if marker_last else marker + own)), root)
    assert listing(root) == ["a", "a/b", "a/b/c", "a/b/c/foo", "a/top", "outside"]


def test_opaque_root(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    (root / "lower").write_text("x")
    apply_bytes(ht.archive(ht.file(WHITEOUT_OPAQUE.encode()), ht.file(b"new", b"n")), root)
    assert listing(root) == ["new"]


def test_root_directory_entry_is_ignored_and_dot_slash_names_work(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    os.chmod(root, 0o711)
    apply_bytes(ht.archive(ht.directory(b"./", mode=0o777), ht.file(b"./rel", b"r"), ht.file(b"x//y", b"y")), root)
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o711
    assert listing(root) == ["rel", "x", "x/y"]


def test_overlay_xattrs_from_layers_are_dropped(tmp_path: Path, user_xattrs: None) -> None:
    root = tmp_path / "r"
    root.mkdir()
    member = ht.pax({b"SCHILY.xattr.user.overlay.opaque": b"y", b"SCHILY.xattr.user.ok": b"1"}) + ht.directory(b"d")
    apply_bytes(ht.archive(member), root)
    assert os.listxattr(root / "d") == ["user.ok"]


@needs_root
def test_ownership_is_numeric(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    apply_bytes(ht.archive(ht.file(b"f", b"x", uid=4321, gid=8765)), root)
    st = os.stat(root / "f")
    assert (st.st_uid, st.st_gid) == (4321, 8765)


@pytest.mark.parametrize("uid", [0xFFFFFFFF, 1 << 40])
def test_out_of_range_owner_is_refused(tmp_path: Path, uid: int) -> None:
    root = tmp_path / "r"
    root.mkdir()
    with pytest.raises(UnsafeArchiveEntry, match="out of range"):
        apply_bytes(ht.archive(ht.pax({b"uid": b"%d" % uid}) + ht.file(b"f")), root)


def test_not_root_skips_devices_and_ownership(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "r"
    root.mkdir()
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    data = ht.archive(ht.header(b"mem", typeflag=b"3", devmajor=1, devminor=1), ht.file(b"f", b"x", uid=4321))
    applied = apply_bytes(data, root)
    monkeypatch.undo()
    assert listing(root) == ["f"] and os.stat(root / "f").st_uid == os.geteuid()
    assert applied.skipped == ("mem: device nodes are created only as root",)


def test_not_root_marks_opaque_directories_in_user_xattrs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Unprivileged OverlayFS (mount option userxattr) reads user.overlay.*, not trusted.overlay.*.
    root = tmp_path / "r"
    root.mkdir()
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    apply_bytes(ht.archive(ht.directory(b"d"), ht.file(b"d/.wh..wh..opq")), root, whiteouts="overlay")
    monkeypatch.undo()
    assert os.getxattr(root / "d", "user.overlay.opaque") == b"y"
    assert "trusted.overlay.opaque" not in os.listxattr(root / "d")


@needs_root
def test_char_device_zero_is_never_created(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    applied = apply_bytes(ht.archive(ht.header(b"x", typeflag=b"3")), root)
    assert listing(root) == [] and "look-alike" in applied.skipped[0]


@needs_root
def test_overlay_mode_writes_overlay_whiteouts(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    data = ht.archive(
        ht.directory(b"etc"),
        ht.file(b"etc/.wh.gone"),
        ht.directory(b"op"),
        ht.file(b"op/" + WHITEOUT_OPAQUE.encode()),
        ht.file(b"op/new", b"n"),
    )
    apply_bytes(data, root, whiteouts="overlay")
    st = os.lstat(root / "etc" / "gone")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.getxattr(root / "op", "trusted.overlay.opaque") == b"y"
    assert (root / "op" / "new").read_text() == "n"


def test_digester_sees_the_whole_stream(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    data = ht.archive(ht.file(b"f", b"x")) + bytes(10240)  # record padding after the end marker
    digester = Digester()
    applied = apply_bytes(data, root, digester=digester)
    assert digester.size == len(data) == applied.size and applied.entries == 1
