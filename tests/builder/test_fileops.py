"""builder.fileops: COPY and ADD onto real directories, checked file by file (run as root for ownership).

Each test lays out a source tree (`ctx`) and an image root (`root`) in
tmp_path, selects sources the way builder.context does (`select`), copies,
and reads the result back with lstat. Hostile cases also keep a canary
directory beside the root and check it is untouched.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard

from builder.errors import ContextError
from builder.fileops import (
    CopySpec,
    SymbolicMode,
    archive_kind,
    copy_into,
    parse_chmod,
    resolve_owner,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="ownership checks need root")

OLD = 1_500_000_000_123_456_789  # an mtime no test run has


@dataclass(frozen=True)
class Entry:
    rel: str
    kind: str
    mode: int
    size: int
    mtime_ns: int
    target: str | None = None
    digest: str | None = None


@dataclass(frozen=True)
class Match:
    source: str
    rel: str
    kind: str
    entries: tuple[Entry, ...]


def _entry(ctx: Path, rel: str) -> Entry:
    path = ctx / rel if rel else ctx
    st = path.lstat()
    kind = "dir" if stat.S_ISDIR(st.st_mode) else "symlink" if stat.S_ISLNK(st.st_mode) else "file"
    target = os.readlink(path) if kind == "symlink" else None
    return Entry(rel, kind, stat.S_IMODE(st.st_mode), st.st_size if kind == "file" else 0, st.st_mtime_ns, target)


def select(ctx: Path, rel: str, source: str | None = None) -> Match:
    """The match for `rel` with every entry beneath it, as builder.context lists them."""
    first = _entry(ctx, rel)
    entries = [first]
    if first.kind == "dir":
        base = ctx / rel if rel else ctx
        for dirpath, dirnames, filenames in os.walk(base):
            for name in dirnames + filenames:
                entries.append(_entry(ctx, str((Path(dirpath) / name).relative_to(ctx))))
        entries[1:] = sorted(entries[1:], key=lambda e: e.rel)
    return Match(source if source is not None else rel, rel, first.kind, tuple(entries))


def write(path: Path, data: bytes = b"data", mode: int = 0o644, mtime: int = OLD, owner: tuple[int, int] = (4321, 4321)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chown(path, *owner)
    os.chmod(path, mode)
    os.utime(path, ns=(mtime, mtime))
    return path


def owner(path: Path) -> tuple[int, int]:
    st = path.lstat()
    return st.st_uid, st.st_gid


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def ctx(tmp_path: Path) -> Path:
    (tmp_path / "ctx").mkdir()
    return tmp_path / "ctx"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "root").mkdir()
    return tmp_path / "root"


def copy(root: Path, ctx: Path, sources: list[str], dest: str, **options: object) -> None:
    copy_into(root, ctx, [select(ctx, s.removeprefix("./")) for s in sources], CopySpec(dest=dest, **options))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- files and directories


def test_a_file_to_a_file_keeps_mode_and_mtime_and_is_owned_by_root(root: Path, ctx: Path) -> None:
    write(ctx / "a.txt", b"hello", mode=0o751)
    copy(root, ctx, ["a.txt"], "/b.txt")
    result = root / "b.txt"
    assert result.read_bytes() == b"hello"
    assert mode(result) == 0o751
    assert result.lstat().st_mtime_ns == OLD
    assert owner(result) == (0, 0)  # never the source's 4321


def test_a_file_into_an_existing_directory_or_a_trailing_slash(root: Path, ctx: Path) -> None:
    write(ctx / "a.txt")
    (root / "existing").mkdir()
    copy(root, ctx, ["a.txt"], "/existing")
    copy(root, ctx, ["a.txt"], "/new/")
    assert (root / "existing" / "a.txt").read_bytes() == b"data"
    assert (root / "new" / "a.txt").read_bytes() == b"data"


def test_a_relative_destination_is_under_workdir(root: Path, ctx: Path) -> None:
    write(ctx / "a.txt")
    copy(root, ctx, ["a.txt"], "rel/", workdir="/usr/src/app")
    copy(root, ctx, ["a.txt"], ".", workdir="/w")
    assert (root / "usr/src/app/rel/a.txt").exists()
    assert (root / "w/a.txt").exists()


def test_a_directory_copies_its_contents_not_itself(root: Path, ctx: Path) -> None:
    write(ctx / "dir/x", b"x", mode=0o600)
    write(ctx / "dir/sub/y", b"y", mode=0o755)
    os.chmod(ctx / "dir/sub", 0o750)
    os.utime(ctx / "dir/sub", ns=(OLD, OLD))
    os.chmod(ctx / "dir", 0o700)
    os.symlink("x", ctx / "dir/link")
    copy(root, ctx, ["dir"], "/app")
    app = root / "app"
    assert sorted(p.name for p in app.iterdir()) == ["link", "sub", "x"]
    assert mode(app) == 0o755  # made by the copy, not the source directory's 0700
    assert (app / "sub/y").read_bytes() == b"y"
    assert mode(app / "sub") == 0o750
    assert (app / "sub").lstat().st_mtime_ns == OLD  # set after its children went in
    assert owner(app / "sub") == owner(app / "sub/y") == owner(app / "link") == (0, 0)


def test_the_whole_context_copies_with_an_empty_rel(root: Path, ctx: Path) -> None:
    write(ctx / "a/b")
    copy_into(root, ctx, [select(ctx, "", ".")], CopySpec(dest="/all/"))
    assert (root / "all/a/b").read_bytes() == b"data"


def test_more_than_one_source_needs_a_trailing_slash(root: Path, ctx: Path) -> None:
    write(ctx / "a")
    write(ctx / "b")
    with pytest.raises(ContextError) as caught:
        copy(root, ctx, ["a", "b"], "/dest")
    assert str(caught.value) == (
        "When using COPY with more than one source file, the destination must be a directory and end with a /"
    )
    assert not (root / "dest").exists()
    copy(root, ctx, ["a", "b"], "/dest/")
    assert sorted(p.name for p in (root / "dest").iterdir()) == ["a", "b"]


def test_wildcard_matches_go_into_the_directory_and_need_the_slash(root: Path, ctx: Path) -> None:
    write(ctx / "one.txt", b"1")
    write(ctx / "two.txt", b"2")
    matches = [select(ctx, "one.txt", "*.txt"), select(ctx, "two.txt", "*.txt")]
    copy_into(root, ctx, matches, CopySpec(dest="/txt/"))
    assert (root / "txt/one.txt").read_bytes() == b"1"
    assert (root / "txt/two.txt").read_bytes() == b"2"
    with pytest.raises(ContextError, match="destination must be a directory"):
        copy_into(root, ctx, matches[:1], CopySpec(dest="/single", instruction="ADD"))


def test_a_symbolic_link_is_copied_as_a_link_never_followed(root: Path, ctx: Path) -> None:
    os.symlink("/etc/shadow", ctx / "abs")
    os.symlink("../../outside", ctx / "rel")
    copy(root, ctx, ["abs", "rel"], "/links/")
    assert os.readlink(root / "links/abs") == "/etc/shadow"
    assert os.readlink(root / "links/rel") == "../../outside"
    assert owner(root / "links/abs") == (0, 0)


def test_hard_links_become_independent_files(root: Path, ctx: Path) -> None:
    write(ctx / "d/one")
    os.link(ctx / "d/one", ctx / "d/two")
    copy(root, ctx, ["d"], "/d")
    assert (root / "d/one").stat().st_ino != (root / "d/two").stat().st_ino
    assert (root / "d/two").read_bytes() == b"data"


# --------------------------------------------------------------------------- the destination stays in root


def test_a_link_in_the_destination_path_resolves_inside_root(root: Path, ctx: Path) -> None:
    write(ctx / "a.txt")
    (root / "opt/app").mkdir(parents=True)
    os.symlink("/opt/app", root / "app")
    copy(root, ctx, ["a.txt"], "/app/")
    assert (root / "opt/app/a.txt").read_bytes() == b"data"
    assert os.path.islink(root / "app")


def test_a_hostile_absolute_link_leads_back_into_root(tmp_path: Path, root: Path, ctx: Path) -> None:
    canary = tmp_path / "canary"
    canary.mkdir()
    write(ctx / "x", b"payload")
    os.symlink(str(canary), root / "evil")  # the host path of the canary, absolute
    os.symlink("/", root / "slash")
    os.symlink("../../../../../..", root / "up")
    copy(root, ctx, ["x"], "/evil/x")
    copy(root, ctx, ["x"], "/slash/y")
    copy(root, ctx, ["x"], "/up/z")
    assert list(canary.iterdir()) == []
    assert (root / str(canary).lstrip("/") / "x").read_bytes() == b"payload"
    assert (root / "y").read_bytes() == (root / "z").read_bytes() == b"payload"
    assert not (tmp_path / "z").exists()


def test_a_link_as_the_destination_itself_is_followed_inside_root(root: Path, ctx: Path) -> None:
    write(ctx / "a.txt", b"new")
    write(root / "real/file", b"old")
    os.symlink("/real/file", root / "file-link")
    os.symlink("/real", root / "dir-link")
    os.symlink("/made/by/copy", root / "dangling")
    copy(root, ctx, ["a.txt"], "/file-link")
    copy(root, ctx, ["a.txt"], "/dir-link")
    copy(root, ctx, ["a.txt"], "/dangling")
    assert (root / "real/file").read_bytes() == b"new"
    assert (root / "real/a.txt").read_bytes() == b"new"
    assert (root / "made/by/copy").read_bytes() == b"new"
    assert os.path.islink(root / "file-link")


def test_a_file_replaces_a_file_or_a_link_at_the_target(root: Path, ctx: Path) -> None:
    write(ctx / "a.txt", b"new")
    write(ctx / "b.txt", b"new")
    write(root / "app/a.txt", b"old")
    os.link(root / "app/a.txt", root / "hardlinked")
    os.symlink("/etc/hostname", root / "app/b.txt")
    copy(root, ctx, ["a.txt", "b.txt"], "/app/")
    assert (root / "app/a.txt").read_bytes() == b"new"
    assert (root / "hardlinked").read_bytes() == b"old"  # unlinked, not written through
    assert not os.path.islink(root / "app/b.txt")
    assert (root / "app/b.txt").read_bytes() == b"new"


def test_a_file_over_a_directory_is_an_error_naming_it(root: Path, ctx: Path) -> None:
    write(ctx / "a.txt")
    write(root / "app/a.txt/inside")
    with pytest.raises(ContextError) as caught:
        copy(root, ctx, ["a.txt"], "/app/")
    assert str(caught.value) == "cannot replace to directory /app/a.txt with file"
    assert (root / "app/a.txt/inside").exists()


def test_a_directory_over_a_file_is_an_error_naming_it(root: Path, ctx: Path) -> None:
    write(ctx / "dir/sub/x")
    write(root / "file")
    write(root / "app/sub")
    with pytest.raises(ContextError, match=r"^cannot copy to non-directory: /file$"):
        copy(root, ctx, ["dir"], "/file")
    with pytest.raises(ContextError, match=r"^cannot copy to non-directory: /app/sub$"):
        copy(root, ctx, ["dir"], "/app")


# --------------------------------------------------------------------------- owners, modes, times


def test_made_parents_are_0755_and_owned_by_the_chown_owner_or_root(root: Path, ctx: Path) -> None:
    write(ctx / "a.txt")
    copy(root, ctx, ["a.txt"], "/plain/deep/")
    copy(root, ctx, ["a.txt"], "/owned/deep/a", owner=(1000, 1001))
    assert owner(root / "plain") == owner(root / "plain/deep") == (0, 0)
    assert mode(root / "plain/deep") == 0o755
    assert owner(root / "owned") == owner(root / "owned/deep") == owner(root / "owned/deep/a") == (1000, 1001)
    assert mode(root / "owned/deep") == 0o755


def test_existing_directories_on_the_way_keep_their_metadata(root: Path, ctx: Path) -> None:
    write(ctx / "dir/f")
    (root / "existing/target").mkdir(parents=True)
    for path in (root / "existing", root / "existing/target"):
        os.chown(path, 5, 6)
        os.chmod(path, 0o1777)
        os.utime(path, ns=(OLD, OLD))
    copy(root, ctx, ["dir"], "/existing/target", owner=(1000, 1000), chmod=0o700)
    copy(root, ctx, ["dir/f"], "/existing/", owner=(1000, 1000))
    for path in (root / "existing", root / "existing/target"):
        assert (owner(path), mode(path)) == ((5, 6), 0o1777)
    assert (root / "existing").lstat().st_mtime_ns != OLD  # a new entry in it: the kernel's doing
    assert owner(root / "existing/target/f") == (1000, 1000)


def test_existing_directories_inside_the_copied_tree_take_the_sources_metadata(root: Path, ctx: Path) -> None:
    # BuildKit (fsutil copyDirectoryOnly with overwriteTargetMetadata) does this for nested directories.
    write(ctx / "tree/tmp/f")
    os.chmod(ctx / "tree/tmp", 0o750)
    (root / "tmp").mkdir()
    os.chmod(root / "tmp", 0o1777)
    copy(root, ctx, ["tree"], "/")
    assert mode(root / "tmp") == 0o750
    assert mode(root) != 0o750  # the destination itself keeps its own


def test_set_id_bits_survive_the_chown(root: Path, ctx: Path) -> None:
    write(ctx / "su", mode=0o4755)
    copy(root, ctx, ["su"], "/su", owner=(1000, 1000))
    assert mode(root / "su") == 0o4755
    assert owner(root / "su") == (1000, 1000)


def test_octal_chmod_replaces_the_mode_of_files_and_directories(root: Path, ctx: Path) -> None:
    write(ctx / "d/f", mode=0o644)
    (ctx / "d/sub").mkdir()
    copy(root, ctx, ["d"], "/new", chmod=parse_chmod("0750"))
    assert mode(root / "new/f") == mode(root / "new/sub") == mode(root / "new") == 0o750
    copy(root, ctx, ["d/f"], "/deep/er/f", chmod=0o600)
    assert mode(root / "deep/er") == 0o755  # parents keep 0755 whatever --chmod says


def test_symbolic_chmod_edits_each_mode(root: Path, ctx: Path) -> None:
    write(ctx / "d/plain", mode=0o600)
    write(ctx / "d/tool", mode=0o700)
    (ctx / "d/sub").mkdir(mode=0o700)
    copy(root, ctx, ["d"], "/d", chmod=parse_chmod("u=rwX,go=rX"))
    assert mode(root / "d/plain") == 0o644
    assert mode(root / "d/tool") == 0o755
    assert mode(root / "d/sub") == 0o755


def test_chown_from_the_images_passwd_and_group(root: Path) -> None:
    write(root / "etc/passwd", b"root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n", owner=(0, 0))
    write(root / "etc/group", b"root:x:0:\nstaff:x:50:app\n", owner=(0, 0))
    assert resolve_owner("app", root) == (1000, 1001)  # the passwd entry's primary group
    assert resolve_owner("app:staff", root) == (1000, 50)
    assert resolve_owner("app:77", root) == (1000, 77)
    assert resolve_owner("1234", root) == (1234, 1234)  # a number is its own gid
    assert resolve_owner("1234:staff", root) == (1234, 50)
    assert resolve_owner("0:0", root) == (0, 0)


def test_chown_reads_passwd_through_links_inside_root_only(tmp_path: Path, root: Path) -> None:
    host = tmp_path / "host-passwd"
    host.write_text("app:x:6666:6666::/:/bin/sh\n")
    write(root / "shared/passwd", b"app:x:1000:1000::/:/bin/sh\n", owner=(0, 0))
    (root / "etc").mkdir()
    os.symlink("/shared/passwd", root / "etc/passwd")
    assert resolve_owner("app", root) == (1000, 1000)
    os.unlink(root / "etc/passwd")
    os.symlink(str(host), root / "etc/passwd")  # the host path, re-rooted: missing
    with pytest.raises(ContextError, match="no such user"):
        resolve_owner("app", root)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("bob", "can't find uid for user bob: no such user: bob"),
        ("root:bob", "can't find gid for group bob: no such group: bob"),
        ("bob:1:555", "invalid chown string format: bob:1:555"),
        ("bob:", "invalid chown string format: bob:"),
        ("99999999999", "invalid chown string format: 99999999999: 99999999999 is out of range"),
    ],
)
def test_chown_errors_in_dockers_words(root: Path, spec: str, message: str) -> None:
    write(root / "etc/passwd", b"root:x:0:0::/root:/bin/sh\n", owner=(0, 0))
    with pytest.raises(ContextError) as caught:
        resolve_owner(spec, root)
    assert str(caught.value) == message


def test_chown_without_passwd_file_knows_no_names(root: Path) -> None:
    with pytest.raises(ContextError, match="^can't find uid for user app: no such user: app$"):
        resolve_owner("app", root)
    assert resolve_owner("7:8", root) == (7, 8)


# --------------------------------------------------------------------------- --chmod values


@pytest.mark.parametrize(("text", "value"), [("755", 0o755), ("0644", 0o644), ("7", 0o7), ("07777", 0o7777)])
def test_parse_chmod_octal(text: str, value: int) -> None:
    assert parse_chmod(text) == value


@pytest.mark.parametrize("text", ["10000", "64a", "8", "", "0x1ff"])
def test_parse_chmod_bad_numbers_in_buildkits_words(text: str) -> None:
    with pytest.raises(ContextError) as caught:
        parse_chmod(text)
    assert str(caught.value) == f"invalid chmod parameter: '{text}'. it should be octal string and between 0 and 07777"


@pytest.mark.parametrize(
    ("text", "before", "is_dir", "after"),
    [
        ("+x", 0o644, False, 0o755),
        ("u+x", 0o644, False, 0o744),
        ("a-w", 0o666, False, 0o444),
        ("go=", 0o777, False, 0o700),
        ("g=u", 0o640, False, 0o660),
        ("u=rwX,go=rX", 0o600, False, 0o644),
        ("u=rwX,go=rX", 0o700, False, 0o755),
        ("u=rwX,go=rX", 0o700, True, 0o755),
        ("u+s,g+s", 0o755, False, 0o6755),
        ("o+s", 0o755, False, 0o755),  # set-id bits are u's and g's
        ("+t", 0o777, True, 0o1777),
        ("u+r-w", 0o600, False, 0o400),
    ],
)
def test_parse_chmod_symbolic(text: str, before: int, is_dir: bool, after: int) -> None:
    parsed = parse_chmod(text)
    assert isinstance(parsed, SymbolicMode)
    assert parsed.apply(before, is_dir=is_dir) == after


@pytest.mark.parametrize("text", ["u+q", "z+x", "u", "g=ur", "u+x,"])
def test_parse_chmod_bad_symbolic_names_the_value(text: str) -> None:
    with pytest.raises(ContextError) as caught:
        parse_chmod(text)
    assert str(caught.value).startswith(f"invalid chmod parameter: '{text}': ")


# --------------------------------------------------------------------------- COPY --parents


def test_parents_keep_the_path_of_each_match(root: Path, ctx: Path) -> None:
    write(ctx / "x/a.txt", b"xa")
    write(ctx / "y/a.txt", b"ya")
    os.chmod(ctx / "x", 0o750)
    copy(root, ctx, ["./x/a.txt", "./y/a.txt"], "/parents/", parents=True)
    assert (root / "parents/x/a.txt").read_bytes() == b"xa"
    assert (root / "parents/y/a.txt").read_bytes() == b"ya"
    assert mode(root / "parents/x") == 0o750  # made from the source directory


def test_parents_keep_only_what_follows_the_pivot(root: Path, ctx: Path) -> None:
    write(ctx / "x/y/a.txt", b"a")
    write(ctx / "x/y/d/b.txt", b"b")
    matches = [select(ctx, "x/y/a.txt", "./x/./y/*"), select(ctx, "x/y/d", "./x/./y/*")]
    copy_into(root, ctx, matches, CopySpec(dest="/parents/", parents=True))
    assert (root / "parents/y/a.txt").read_bytes() == b"a"
    assert (root / "parents/y/d/b.txt").read_bytes() == b"b"
    assert not (root / "parents/x").exists()


def test_parents_pivot_after_a_link_in_the_source_path(root: Path, ctx: Path) -> None:
    write(ctx / "real/y/a.txt", b"a")
    os.symlink("real", ctx / "link")
    match = select(ctx, "real/y/a.txt", "./link/./y/a.txt")  # the selection reports the real path
    copy_into(root, ctx, [match], CopySpec(dest="/p/", parents=True))
    assert (root / "p/y/a.txt").read_bytes() == b"a"


# --------------------------------------------------------------------------- ADD of local archives


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def _info(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, **fields: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mode, info.mtime = kind, size, 0o644, 1_600_000_000
    for key, value in fields.items():
        setattr(info, key, value)
    return info


def _app_tar() -> bytes:
    return _tar(
        [
            (_info("app", tarfile.DIRTYPE, mode=0o750, uid=123, gid=456), None),
            (_info("app/hello", size=5, mode=0o755, uid=123, gid=456), b"hello"),
            (_info("app/link", tarfile.SYMTYPE, linkname="hello"), None),
        ]
    )


COMPRESSED = {
    "tar": lambda data: data,
    "gzip": gzip.compress,
    "bzip2": bz2.compress,
    "xz": lzma.compress,
    "zstd": lambda data: zstandard.ZstdCompressor().compress(data),
}


@pytest.mark.parametrize("kind", sorted(COMPRESSED))
def test_add_unpacks_local_archives_judged_by_content(root: Path, ctx: Path, kind: str) -> None:
    archive = write(ctx / "archive.bin", COMPRESSED[kind](_app_tar()))
    assert archive_kind(archive) == kind
    copy(root, ctx, ["archive.bin"], "/opt", unpack=True, instruction="ADD")
    assert (root / "opt/app/hello").read_bytes() == b"hello"
    assert os.readlink(root / "opt/app/link") == "hello"
    assert owner(root / "opt/app/hello") == (123, 456)  # the archive's owners, without --chown
    assert mode(root / "opt/app") == 0o750
    assert not (root / "opt/archive.bin").exists()


def test_add_unpack_with_chown_overrides_the_archives_owners(root: Path, ctx: Path) -> None:
    write(ctx / "a.tar.gz", gzip.compress(_app_tar()))
    copy(root, ctx, ["a.tar.gz"], "/opt/", unpack=True, owner=(7, 8))
    assert owner(root / "opt") == owner(root / "opt/app") == owner(root / "opt/app/hello") == (7, 8)
    assert owner(root / "opt/app/link") == (7, 8)


def test_add_unpack_overwrites_existing_files(root: Path, ctx: Path) -> None:
    write(ctx / "a.tar", _app_tar())
    write(root / "opt/app/hello", b"old")
    copy(root, ctx, ["a.tar"], "/opt/", unpack=True)
    assert (root / "opt/app/hello").read_bytes() == b"hello"


def test_add_of_a_non_archive_copies_it_as_it_is(root: Path, ctx: Path) -> None:
    write(ctx / "notes.tar.gz", gzip.compress(b"plain text, not a tar"))
    write(ctx / "empty.tar", bytes(1024))
    write(ctx / "text.txt", b"hello")
    copy(root, ctx, ["notes.tar.gz", "empty.tar", "text.txt"], "/in/", unpack=True)
    assert gzip.decompress((root / "in/notes.tar.gz").read_bytes()) == b"plain text, not a tar"
    assert (root / "in/empty.tar").read_bytes() == bytes(1024)
    assert (root / "in/text.txt").read_bytes() == b"hello"
    assert archive_kind(ctx / "text.txt") is None
    copy(root, ctx, ["notes.tar.gz"], "/notes.tgz")  # COPY never unpacks
    assert (root / "notes.tgz").read_bytes() == (ctx / "notes.tar.gz").read_bytes()


def test_archive_kind_of_corrupt_data_or_a_link_is_none(ctx: Path) -> None:
    write(ctx / "cut.tar.xz", lzma.compress(_app_tar())[:40])
    write(ctx / "bad.tar.bz2", b"BZh9" + bytes(100))
    os.symlink("cut.tar.xz", ctx / "link.tar.xz")
    assert archive_kind(ctx / "cut.tar.xz") is None
    assert archive_kind(ctx / "bad.tar.bz2") is None
    assert archive_kind(ctx / "link.tar.xz") is None


def test_archive_kind_takes_an_fd_without_moving_it(ctx: Path) -> None:
    path = write(ctx / "a.tar.xz", lzma.compress(_app_tar()))
    fd = os.open(path, os.O_RDONLY)
    try:
        os.lseek(fd, 3, os.SEEK_SET)
        assert archive_kind(fd) == "xz"
        assert os.lseek(fd, 0, os.SEEK_CUR) == 3
    finally:
        os.close(fd)


HOSTILE = {
    "dot-dot": ([(_info("../evil", size=4), b"evil")], "its name leaves the root"),
    "absolute": ([(_info("/evil", size=4), b"evil")], "its name is absolute"),
    "link-then-write": (
        [(_info("out", tarfile.SYMTYPE, linkname="/"), None), (_info("out/evil", size=4), b"evil")],
        "goes through the symbolic link 'out'",
    ),
    "relative-link-then-write": (
        [(_info("up", tarfile.SYMTYPE, linkname="../.."), None), (_info("up/evil", size=4), b"evil")],
        "goes through the symbolic link 'up'",
    ),
    "device": ([(_info("null", tarfile.CHRTYPE, devmajor=1, devminor=3), None)], "a device node"),
    "whiteout": ([(_info(".wh.etc", size=0), b"")], "a whiteout name"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_archive_is_refused_before_anything_is_written(tmp_path: Path, root: Path, ctx: Path, case: str) -> None:
    members, why = HOSTILE[case]
    canary = tmp_path / "canary"
    canary.mkdir()
    write(root / "keep", b"image file")
    harmless = [(_info("first", size=2), b"ok")]
    write(ctx / "evil.tar", gzip.compress(_tar(harmless + members)))
    with pytest.raises(ContextError) as caught:
        copy(root, ctx, ["evil.tar"], "/dest/", unpack=True)
    message = str(caught.value)
    assert message.startswith("archive 'evil.tar': entry ") and why in message
    assert "\n" not in message
    assert list((root / "dest").iterdir()) == []  # vetted before the first entry was written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["canary", "ctx", "root"]
    assert list(canary.iterdir()) == [] and (root / "keep").read_bytes() == b"image file"


def test_links_already_in_the_destination_keep_extraction_inside_it(tmp_path: Path, root: Path, ctx: Path) -> None:
    canary = tmp_path / "canary"
    canary.mkdir()
    (root / "opt").mkdir()
    os.symlink(str(canary), root / "opt/lib")  # from a lower layer, absolute
    write(ctx / "a.tar", _tar([(_info("lib/x", size=1), b"x")]))
    copy(root, ctx, ["a.tar"], "/opt/", unpack=True)
    assert list(canary.iterdir()) == []
    assert (root / "opt" / str(canary).lstrip("/") / "x").read_bytes() == b"x"


def test_a_decompression_bomb_stops_at_the_limit(monkeypatch: pytest.MonkeyPatch, root: Path, ctx: Path) -> None:
    import store.archive

    monkeypatch.setattr(store.archive, "DEFAULT_LIMITS", store.archive.Limits(max_size=1 << 20))
    big = _tar([(_info("zeros", size=4 << 20), bytes(4 << 20))])
    write(ctx / "bomb.tar.bz2", bz2.compress(big))
    with pytest.raises(ContextError, match="archive 'bomb.tar.bz2'"):
        copy(root, ctx, ["bomb.tar.bz2"], "/b/", unpack=True)
    assert not (root / "b/zeros").exists()


# --------------------------------------------------------------------------- sources that change


def test_a_source_of_another_size_than_listed_has_changed(root: Path, ctx: Path) -> None:
    write(ctx / "a.txt", b"short")
    match = select(ctx, "a.txt")
    (ctx / "a.txt").write_bytes(b"much longer now")
    with pytest.raises(ContextError, match=r"^context changed during COPY: 'a.txt'$"):
        copy_into(root, ctx, [match], CopySpec(dest="/a.txt"))


def test_a_file_swapped_for_a_fifo_or_a_link_is_not_read(root: Path, ctx: Path) -> None:
    write(ctx / "d/f")
    write(ctx / "d/g")
    match = select(ctx, "d")
    os.unlink(ctx / "d/f")
    os.mkfifo(ctx / "d/f")  # a blocking open would hang the test
    with pytest.raises(ContextError, match="context changed during COPY: 'd/f'"):
        copy_into(root, ctx, [match], CopySpec(dest="/d/"))
    os.unlink(ctx / "d/f")
    os.symlink("/etc/passwd", ctx / "d/f")
    with pytest.raises(ContextError, match="context changed during COPY: 'd/f'"):
        copy_into(root, ctx, [match], CopySpec(dest="/d/"))


def test_a_directory_swapped_for_a_link_is_not_followed(tmp_path: Path, root: Path, ctx: Path) -> None:
    canary = tmp_path / "canary"
    write(canary / "secret", b"CANARY")
    write(ctx / "dir/secret", b"fine")
    match = select(ctx, "dir")
    os.rename(ctx / "dir", ctx / "old")
    os.symlink(str(canary), ctx / "dir")
    with pytest.raises(ContextError, match=r"^context changed during COPY: 'dir'$"):
        copy_into(root, ctx, [match], CopySpec(dest="/d/"))
    assert not any(b"CANARY" in p.read_bytes() for p in root.rglob("*") if p.is_file())


def test_add_onto_a_file_is_an_error_naming_it(root: Path, ctx: Path) -> None:
    write(ctx / "a.tar", _app_tar())
    write(root / "opt", b"a file")
    with pytest.raises(ContextError, match=r"^cannot copy to non-directory: /opt$"):
        copy(root, ctx, ["a.tar"], "/opt", unpack=True)
