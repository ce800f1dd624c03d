"""COPY and ADD end to end: the files a build puts in the image, with Docker's placement, owner and mode rules.

Each test builds for real (namespaces, OverlayFS, the layer writer) and reads
the result back with `flatten`, the image's layers applied in order. The
last test has umoci, an independent OCI implementation, unpack the same image
and compares the two trees.
"""

from __future__ import annotations

import bz2
import contextlib
import functools
import gzip
import hashlib
import http.server
import io
import lzma
import os
import stat
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.errors import BuildError, ContextError
from grammar.errors import RecipeValidationError
from tests.build.conftest import describe_tree, flatten, pybuild, umoci_tree

# --------------------------------------------------------------------------- helpers


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def owner(path: Path) -> tuple[int, int]:
    info = path.lstat()
    return info.st_uid, info.st_gid


def tar_bytes(members: dict[str, str | bytes], *, uid: int = 1234, file_mode: int = 0o640) -> bytes:
    """An uncompressed tar: a `pkg/` directory, its files (owned by `uid`) and a `pkg/link` to the first one."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        directory = tarfile.TarInfo("pkg")
        directory.type, directory.mode, directory.uid, directory.gid, directory.mtime = tarfile.DIRTYPE, 0o750, uid, uid, 1_600_000_000
        tar.addfile(directory)
        for name, content in members.items():
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(f"pkg/{name}")
            info.size, info.mode, info.uid, info.gid, info.mtime = len(data), file_mode, uid, uid, 1_600_000_000
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("pkg/link")
        link.type, link.linkname, link.mtime = tarfile.SYMTYPE, next(iter(members)), 1_600_000_000
        tar.addfile(link)
    return out.getvalue()


def zstd_bytes(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor().compress(data)


@contextlib.contextmanager
def serving(directory: Path) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 for `directory`, in a thread; yields its base URL, then stops."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# --------------------------------------------------------------------------- COPY placement


def test_copy_a_file_to_a_file_a_new_dir_and_an_existing_dir(make_build, fresh_store, context_dir: Path, tmp_path: Path) -> None:
    (context_dir / "a.txt").write_text("a\n")
    os.chmod(context_dir / "a.txt", 0o640)
    os.chown(context_dir / "a.txt", 4321, 4321)
    os.utime(context_dir / "a.txt", (1_500_000_000, 1_500_000_000))
    result = make_build(
        """
        FROM busybox
        COPY a.txt /renamed.txt
        COPY a.txt /new/dir/
        COPY a.txt /etc
        COPY a.txt /tmp/
        """
    )
    tree = flatten(fresh_store, result, tmp_path / "tree")
    for path in ("renamed.txt", "new/dir/a.txt", "etc/a.txt", "tmp/a.txt"):
        assert (tree / path).read_text() == "a\n", path
        assert mode(tree / path) == 0o640, path  # the source's mode
        assert owner(tree / path) == (0, 0), path  # never the source's owner
        assert (tree / path).stat().st_mtime == 1_500_000_000, path  # the source's mtime
    assert (tree / "etc").is_dir() and (tree / "etc" / "passwd").is_file()  # an existing dir is copied into
    assert mode(tree / "tmp") == 0o1777  # and keeps its own metadata
    assert mode(tree / "new") == 0o755 and mode(tree / "new" / "dir") == 0o755  # missing dirs are made 0755
    created_by = [h.created_by for h in result.config.history]
    assert created_by[-4:] == [
        "COPY a.txt /renamed.txt # buildkit",
        "COPY a.txt /new/dir/ # buildkit",
        "COPY a.txt /etc # buildkit",
        "COPY a.txt /tmp/ # buildkit",
    ]
    assert not any(h.empty_layer for h in result.config.history[-4:])
    assert len(result.config.diff_ids) == 5


def test_copy_a_directory_copies_its_contents(make_build, fresh_store, context_dir: Path, tmp_path: Path) -> None:
    files = {"dir/top.txt": "top\n", "dir/sub/deep.txt": "deep\n", "dir/empty/.keep": ""}
    from tests.build.conftest import write_tree

    write_tree(context_dir, files)
    os.chmod(context_dir / "dir" / "sub", 0o750)
    result = make_build(
        """
        FROM busybox
        COPY dir /dst
        COPY dir/ /slash/
        COPY dir/sub /etc/
        """
    )
    tree = flatten(fresh_store, result, tmp_path / "tree")
    for dest in ("dst", "slash"):
        assert sorted(p.relative_to(tree / dest).as_posix() for p in (tree / dest).rglob("*")) == [
            "empty",
            "empty/.keep",
            "sub",
            "sub/deep.txt",
            "top.txt",
        ]
        assert mode(tree / dest / "sub") == 0o750  # a copied directory keeps its mode
    assert not (tree / "dst" / "dir").exists()
    assert (tree / "etc" / "deep.txt").read_text() == "deep\n" and (tree / "etc" / "passwd").exists()
    assert mode(tree / "etc") == 0o755


def test_wildcards_and_several_sources_need_a_directory_destination(make_build, fresh_store, tmp_path: Path) -> None:
    files = {"a.txt": "a\n", "b.txt": "b\n", "c.md": "c\n", "docs/d.txt": "d\n"}
    result = make_build(
        """
        FROM busybox
        COPY *.txt /wild/
        COPY a.txt c.md /several/
        COPY [ab].txt /class/
        COPY ?.md /single-wildcard/
        COPY doc* /docs-wild/
        """,
        files,
    )
    tree = flatten(fresh_store, result, tmp_path / "tree")
    assert sorted(p.name for p in (tree / "docs-wild").iterdir()) == ["d.txt"]  # a matched directory: its contents
    assert sorted(p.name for p in (tree / "wild").iterdir()) == ["a.txt", "b.txt"]  # not docs/d.txt: `*` stops at /
    assert sorted(p.name for p in (tree / "several").iterdir()) == ["a.txt", "c.md"]
    assert sorted(p.name for p in (tree / "class").iterdir()) == ["a.txt", "b.txt"]
    assert (tree / "single-wildcard" / "c.md").read_text() == "c\n"
    many = "When using COPY with more than one source file, the destination must be a directory and end with a /"
    for recipe in ("FROM busybox\nCOPY a.txt c.md /dst\n", "FROM busybox\nCOPY *.txt /dst\n"):
        with pytest.raises(ContextError) as failure:
            make_build(recipe)
        assert failure.value.message.endswith(many)
        assert failure.value.span is not None and failure.value.span.line == 2
    with pytest.raises(ContextError, match=r'COPY: "\*.nothing": no match in the build context'):
        make_build("FROM busybox\nCOPY *.nothing /dst/\n")


def test_relative_destination_is_against_workdir(make_build, fresh_store, tmp_path: Path) -> None:
    result = make_build(
        """
        FROM busybox
        WORKDIR /app
        COPY a.txt .
        COPY a.txt named
        COPY a.txt sub/
        WORKDIR lib
        COPY a.txt ../up.txt
        """,
        {"a.txt": "a\n"},
    )
    tree = flatten(fresh_store, result, tmp_path / "tree")
    for path in ("app/a.txt", "app/named", "app/sub/a.txt", "app/up.txt"):
        assert (tree / path).read_text() == "a\n", path
    assert (tree / "app" / "lib").is_dir()


# --------------------------------------------------------------------------- COPY flags


def test_copy_from_a_stage_by_name_and_index_and_from_an_image(make_build, fresh_store, tmp_path: Path) -> None:
    result = make_build(
        """
        FROM busybox AS build
        RUN mkdir -p /out/sub && echo built > /out/f && ln -s f /out/link && echo deep > /out/sub/g && chmod 700 /out/sub
        FROM busybox
        COPY --from=build /out/f /by-name
        COPY --from=0 /out /by-index/
        COPY --from=busybox /etc/passwd /from-image/
        """
    )
    tree = flatten(fresh_store, result, tmp_path / "tree")
    assert (tree / "by-name").read_text() == "built\n"
    assert (tree / "by-index" / "f").read_text() == "built\n"
    assert os.readlink(tree / "by-index" / "link") == "f"  # a link is copied as a link
    assert (tree / "by-index" / "sub" / "g").read_text() == "deep\n"
    assert mode(tree / "by-index" / "sub") == 0o700
    assert (tree / "from-image" / "passwd").read_text().startswith("root:x:0:0:")
    with pytest.raises(BuildError, match="COPY --from=nowhere: no stage or image of that name in the store"):
        make_build("FROM busybox\nCOPY --from=nowhere /x /x\n")


def test_chown_by_number_and_by_name_from_the_image(make_build, fresh_store, tmp_path: Path) -> None:
    result = make_build(
        """
        FROM busybox
        COPY --chown=1000:2000 a.txt /numeric/
        COPY --chown=1000 a.txt /number-alone/
        COPY --chown=nobody a.txt /name-alone/
        COPY --chown=nobody:root dir /names/
        COPY --chown=0:nobody a.txt /group-name
        """,
        {"a.txt": "a\n", "dir/sub/b.txt": "b\n"},
    )
    tree = flatten(fresh_store, result, tmp_path / "tree")
    assert owner(tree / "numeric" / "a.txt") == (1000, 2000)
    assert owner(tree / "numeric") == (1000, 2000)  # a directory made on the way takes the owner
    assert owner(tree / "number-alone" / "a.txt") == (1000, 1000)  # a number is its own gid
    assert owner(tree / "name-alone" / "a.txt") == (65534, 65534)  # a name takes its primary group
    for path in ("names", "names/sub", "names/sub/b.txt"):
        assert owner(tree / path) == (65534, 0), path
    assert owner(tree / "group-name") == (0, 65534)
    assert result.config.history[-1].created_by == "COPY --chown=0:nobody a.txt /group-name # buildkit"
    with pytest.raises(ContextError, match="can't find uid for user ghost: no such user: ghost"):
        make_build("FROM busybox\nCOPY --chown=ghost a.txt /x\n")
    with pytest.raises(ContextError, match="can't find gid for group ghosts: no such group: ghosts"):
        make_build("FROM busybox\nCOPY --chown=root:ghosts a.txt /x\n")


def test_chmod_octal_and_symbolic(make_build, fresh_store, context_dir: Path, tmp_path: Path) -> None:
    from tests.build.conftest import write_tree

    write_tree(context_dir, {"a.txt": "a\n", "dir/plain": "p\n", "dir/tool": "#!/bin/sh\n", "dir/sub/x": "x\n"})
    os.chmod(context_dir / "a.txt", 0o644)
    os.chmod(context_dir / "dir" / "plain", 0o600)
    os.chmod(context_dir / "dir" / "tool", 0o700)
    os.chmod(context_dir / "dir" / "sub", 0o700)
    write_tree(context_dir, {"setuid": "#!/bin/sh\n"})
    os.chmod(context_dir / "setuid", 0o4755)
    result = make_build(
        """
        FROM busybox
        COPY --chown=1000:1000 setuid /kept-setuid
        COPY --chmod=0640 a.txt /octal
        COPY --chmod=755 a.txt /octal-short
        COPY --chmod=u=rwX,go=rX dir /symbolic/
        COPY --chmod=+x a.txt /plus-x
        COPY --chmod=go-r,u+s a.txt /minus
        """
    )
    tree = flatten(fresh_store, result, tmp_path / "tree")
    assert mode(tree / "kept-setuid") == 0o4755 and owner(tree / "kept-setuid") == (1000, 1000)  # chown did not clear it
    assert mode(tree / "octal") == 0o640
    assert mode(tree / "octal-short") == 0o755
    assert mode(tree / "symbolic" / "plain") == 0o644
    assert mode(tree / "symbolic" / "tool") == 0o755  # X: already executable
    assert mode(tree / "symbolic" / "sub") == 0o755  # X: a directory
    assert mode(tree / "symbolic" / "sub" / "x") == 0o644
    assert mode(tree / "plus-x") == 0o755
    assert mode(tree / "minus") == 0o4600
    with pytest.raises(RecipeValidationError, match="invalid chmod value '64a'"):
        make_build("FROM busybox\nCOPY --chmod=64a a.txt /x\n")
    with pytest.raises(RecipeValidationError, match="invalid chmod value '17777'"):
        make_build("FROM busybox\nCOPY --chmod=17777 a.txt /x\n")


def test_link_puts_the_files_over_every_layer_below(make_build, fresh_store, tmp_path: Path) -> None:
    result = make_build("FROM busybox\nRUN echo one > /one\nCOPY --link a.txt /linked/\nCOPY --link a.txt /etc/\n", {"a.txt": "a\n"})
    tree = flatten(fresh_store, result, tmp_path / "tree")
    assert (tree / "linked" / "a.txt").read_text() == "a\n"
    assert (tree / "one").read_text() == "one\n" and (tree / "bin" / "sh").exists()  # the layers below are all there
    assert (tree / "etc" / "a.txt").exists() and (tree / "etc" / "passwd").exists()  # added to /etc, not replacing it


def test_link_layer_is_reused_when_an_earlier_step_changes(make_build) -> None:
    # What --link is for: the copy does not depend on what lies below it, so
    # its cache survives a change above it and its layer is the same blob.
    first = make_build("FROM busybox\nRUN echo one > /one\nCOPY --link a.txt /linked/\n", {"a.txt": "a\n"})
    second = make_build("FROM busybox\nRUN echo two > /two\nCOPY --link a.txt /linked/\n")
    copy = second.steps[-1]
    assert copy.text == "COPY --link a.txt /linked/"
    assert copy.cached, copy.reasons
    assert first.config.diff_ids[-1] == second.config.diff_ids[-1]
    assert first.config.diff_ids[-2] != second.config.diff_ids[-2]


def test_parents_keeps_each_source_path(make_build, fresh_store, tmp_path: Path) -> None:
    files = {"src/a/x.txt": "ax\n", "src/b/x.txt": "bx\n", "src/b/y.txt": "by\n", "top.txt": "top\n"}
    result = make_build(
        """
        FROM busybox
        COPY --parents src/a/x.txt top.txt /kept/
        COPY --parents src/*/x.txt /wild/
        COPY --parents ./src/./b/y.txt /pivot/
        """,
        files,
    )
    tree = flatten(fresh_store, result, tmp_path / "tree")
    assert (tree / "kept" / "src" / "a" / "x.txt").read_text() == "ax\n"
    assert (tree / "kept" / "top.txt").read_text() == "top\n"
    assert sorted(p.relative_to(tree / "wild").as_posix() for p in (tree / "wild").rglob("*.txt")) == ["src/a/x.txt", "src/b/x.txt"]
    assert sorted(p.relative_to(tree / "pivot").as_posix() for p in (tree / "pivot").rglob("*")) == ["b", "b/y.txt"]


def test_exclude_drops_paths_below_each_source(make_build, fresh_store, tmp_path: Path) -> None:
    files = {"docs/a.md": "a\n", "docs/b.txt": "b\n", "docs/sub/c.md": "c\n", "home.txt": "h\n", "homework.md": "w\n"}
    result = make_build(
        """
        FROM busybox
        COPY --exclude=*.md docs /top-level/
        COPY --exclude=**/*.md docs /everywhere/
        COPY --exclude=*.txt hom* /wild/
        COPY --exclude=sub --exclude=!sub/c.md docs /reincluded/
        """,
        files,
    )
    tree = flatten(fresh_store, result, tmp_path / "tree")

    def listing(name: str) -> list[str]:
        return sorted(p.relative_to(tree / name).as_posix() for p in (tree / name).rglob("*") if p.is_file())

    assert listing("top-level") == ["b.txt", "sub/c.md"]
    assert listing("everywhere") == ["b.txt"]
    assert listing("wild") == ["homework.md"]  # home.txt: a wildcard's match is tested too
    assert listing("reincluded") == ["a.md", "b.txt", "sub/c.md"]


def test_heredoc_sources(make_build, fresh_store, tmp_path: Path) -> None:
    result = make_build(
        """
        FROM busybox
        ARG NAME=world
        COPY <<EOF /greeting
        hello $NAME
        EOF
        COPY <<'EOF' /verbatim
        hello $NAME
        EOF
        COPY <<ONE <<TWO /several/
        first
        ONE
        second
        TWO
        COPY --chmod=755 <<EOF /script
        #!/bin/sh
        echo hi
        EOF
        """
    )
    tree = flatten(fresh_store, result, tmp_path / "tree")
    assert (tree / "greeting").read_text() == "hello world\n"  # an unquoted delimiter expands, as BuildKit does
    assert (tree / "verbatim").read_text() == "hello $NAME\n"
    assert (tree / "several" / "ONE").read_text() == "first\n"
    assert (tree / "several" / "TWO").read_text() == "second\n"
    assert mode(tree / "greeting") == 0o644 and owner(tree / "greeting") == (0, 0)
    assert mode(tree / "script") == 0o755


def test_heredoc_with_a_dash_strips_leading_tabs(make_build, fresh_store, tmp_path: Path) -> None:
    # Not dedented by make_build: the body's tabs are the point.
    result = make_build("FROM busybox\nCOPY <<-EOF /chomped\n\tindented\n\t\ttwice\nEOF\n")
    assert (flatten(fresh_store, result, tmp_path / "tree") / "chomped").read_text() == "indented\ntwice\n"


def test_heredoc_file_mode_does_not_depend_on_the_builders_umask(make_build, fresh_store, tmp_path: Path) -> None:
    previous = os.umask(0o077)
    try:
        result = make_build("FROM busybox\nCOPY <<EOF /greeting\nhello\nEOF\n")
    finally:
        os.umask(previous)
    assert mode(flatten(fresh_store, result, tmp_path / "tree") / "greeting") == 0o644


# --------------------------------------------------------------------------- the context's limits


def test_links_in_the_destination_resolve_inside_the_image(make_build, fresh_store, tmp_path: Path) -> None:
    escape = Path(f"/tmp/pybuild-escape-{os.getpid()}")
    assert not escape.exists()
    result = make_build(
        f"""
        FROM busybox
        RUN mkdir /target && ln -s /target /via-link && ln -s ../../../..{escape} /climbing && ln -s {escape} /absolute
        COPY a.txt /via-link/
        COPY a.txt /climbing/
        COPY a.txt /absolute/b.txt
        """,
        {"a.txt": "a\n"},
    )
    tree = flatten(fresh_store, result, tmp_path / "tree")
    assert (tree / "target" / "a.txt").read_text() == "a\n"
    assert os.readlink(tree / "via-link") == "/target"  # the link stays a link
    inside = tree / escape.relative_to("/")
    assert (inside / "a.txt").read_text() == "a\n" and (inside / "b.txt").read_text() == "a\n"
    assert not escape.exists()  # nothing was written on the host


def test_dockerignore_hides_a_source_and_the_error_names_the_rule(make_build, fresh_store, context_dir: Path, tmp_path: Path) -> None:
    files = {".dockerignore": "# logs\n*.log\nsecret/\n", "app.log": "log\n", "keep.txt": "k\n", "secret/key": "k\n"}
    with pytest.raises(ContextError) as failure:
        make_build("FROM busybox\nCOPY app.log /\n", files)
    error = failure.value
    assert error.message == 'COPY: "app.log": not found in the build context: excluded by .dockerignore:2 (*.log)'
    assert error.located() == f'{context_dir}/Recipefile:2:1: error: {error.message}'
    # COPY . leaves the ignored paths out
    result = make_build("FROM busybox\nCOPY . /ctx/\n")
    tree = flatten(fresh_store, result, tmp_path / "tree")
    names = sorted(p.relative_to(tree / "ctx").as_posix() for p in (tree / "ctx").rglob("*"))
    assert "keep.txt" in names and "app.log" not in names and not any(n.startswith("secret") for n in names)


def test_recipe_specific_ignore_file_wins(make_build, context_dir: Path) -> None:
    files = {".dockerignore": "a.txt\n", "Recipefile.dockerignore": "# mine\n\nb.txt\n", "a.txt": "a\n", "b.txt": "b\n"}
    make_build("FROM busybox\nCOPY a.txt /\n", files)  # .dockerignore is not read at all
    with pytest.raises(ContextError) as failure:
        make_build("FROM busybox\nCOPY b.txt /\n")
    assert failure.value.message == 'COPY: "b.txt": not found in the build context: excluded by Recipefile.dockerignore:3 (b.txt)'


def test_cli_prints_a_context_error_located_without_traceback(fresh_store, context_dir: Path) -> None:
    from tests.build.conftest import write_tree

    write_tree(context_dir, {"Recipefile": "FROM busybox\n\nCOPY app.log /\n", ".dockerignore": "*.log\n", "app.log": "x\n"})
    out = pybuild("build", "--progress", "plain", str(context_dir), store=fresh_store, check=False)
    assert out.returncode == 1
    assert out.stderr.splitlines()[-1] == (
        f'{context_dir}/Recipefile:3:1: error: COPY: "app.log": not found in the build context: excluded by .dockerignore:1 (*.log)'
    )
    assert "Traceback" not in out.stderr and out.stdout == ""


def test_paths_outside_the_context_are_refused(make_build, context_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "outside.txt").write_text("outside\n")
    with pytest.raises(ContextError) as failure:
        make_build("FROM busybox\nCOPY ../outside.txt /\n")
    assert failure.value.message == "COPY: forbidden path outside the build context: ../outside.txt"
    with pytest.raises(ContextError, match="forbidden path outside the build context"):
        make_build("FROM busybox\nCOPY sub/../../outside.txt /\n")
    # an absolute source is a context path
    with pytest.raises(ContextError, match='"/etc/passwd": not found in the build context'):
        make_build("FROM busybox\nCOPY /etc/passwd /\n")


def test_symlinks_are_copied_as_links_and_never_leak_the_host(make_build, fresh_store, context_dir: Path, tmp_path: Path) -> None:
    (context_dir / "a.txt").write_text("a\n")
    os.symlink("a.txt", context_dir / "relative")
    os.symlink("/etc/passwd", context_dir / "absolute")
    os.symlink("/etc", context_dir / "etc-dir")
    os.mkdir(context_dir / "tree")
    os.symlink("../../../../../../etc/shadow", context_dir / "tree" / "climbing")
    result = make_build(
        """
        FROM busybox
        COPY relative absolute /links/
        COPY tree /tree/
        """
    )
    tree = flatten(fresh_store, result, tmp_path / "tree")
    assert os.readlink(tree / "links" / "relative") == "a.txt"
    assert os.readlink(tree / "links" / "absolute") == "/etc/passwd"  # verbatim: it names the image's file
    assert os.readlink(tree / "tree" / "climbing") == "../../../../../../etc/shadow"
    host_passwd = Path("/etc/passwd").read_bytes()
    for path in tree.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert path.read_bytes() != host_passwd, path
    # A link as a parent is resolved inside the context: <context>/etc/passwd, which is not there.
    with pytest.raises(ContextError, match='"etc-dir/passwd": not found in the build context'):
        make_build("FROM busybox\nCOPY etc-dir/passwd /leak\n")
    with pytest.raises(ContextError, match="not found in the build context"):
        make_build("FROM busybox\nCOPY etc-dir/ /leak/\n")


# --------------------------------------------------------------------------- ADD


def test_add_extracts_local_archives_of_every_compression(make_build, fresh_store, context_dir: Path, tmp_path: Path) -> None:
    plain = tar_bytes({"hello.txt": "hello\n"})
    files: dict[str, str | bytes] = {
        "plain.tar": plain,
        "gzip.tgz": gzip.compress(plain),
        "bzip2.tar.bz2": bz2.compress(plain),
        "xz.tar.xz": lzma.compress(plain),
        "zstd.tar.zst": zstd_bytes(plain),
        "unnamed-archive": gzip.compress(plain),  # judged by content, not by name
    }
    result = make_build(
        """
        FROM busybox
        ADD plain.tar /plain
        ADD gzip.tgz /gzip/
        ADD bzip2.tar.bz2 /bzip2/
        ADD xz.tar.xz /xz/
        ADD zstd.tar.zst /zstd/
        ADD unnamed-archive /unnamed/
        ADD --chown=7:8 gzip.tgz /owned/
        COPY gzip.tgz /copied/
        """,
        files,
    )
    tree = flatten(fresh_store, result, tmp_path / "tree")
    for name in ("plain", "gzip", "bzip2", "xz", "zstd", "unnamed"):
        pkg = tree / name / "pkg"
        assert (pkg / "hello.txt").read_text() == "hello\n", name
        assert mode(pkg / "hello.txt") == 0o640 and mode(pkg) == 0o750, name  # the archive's modes
        assert owner(pkg / "hello.txt") == (1234, 1234), name  # and owners
        assert (pkg / "hello.txt").stat().st_mtime == 1_600_000_000, name  # and times
        assert os.readlink(pkg / "link") == "hello.txt", name
    for path in ("owned/pkg", "owned/pkg/hello.txt", "owned/pkg/link"):
        assert owner(tree / path) == (7, 8), path
    assert (tree / "copied" / "gzip.tgz").read_bytes() == files["gzip.tgz"]  # COPY never extracts


def test_add_copies_what_is_not_an_archive_as_it_is(make_build, fresh_store, tmp_path: Path) -> None:
    files: dict[str, str | bytes] = {
        "notes.txt": "just text\n",
        "fake.tar.gz": gzip.compress(b"gzipped text, not a tar\n"),
        "empty.tar": b"\0" * 1024,
    }
    result = make_build("FROM busybox\nADD notes.txt /notes.txt\nADD fake.tar.gz empty.tar /files/\n", files)
    tree = flatten(fresh_store, result, tmp_path / "tree")
    assert (tree / "notes.txt").read_text() == "just text\n"
    assert (tree / "files" / "fake.tar.gz").read_bytes() == files["fake.tar.gz"]
    assert (tree / "files" / "empty.tar").read_bytes() == files["empty.tar"]


def test_add_refuses_an_archive_that_climbs_out(make_build, context_dir: Path) -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        info = tarfile.TarInfo("../../escaped")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"x\n"))
    with pytest.raises(ContextError, match="escaped"):
        make_build("FROM busybox\nADD evil.tar /x/\n", {"evil.tar": out.getvalue()})


def test_add_an_http_url(make_build, fresh_store, tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    (served / "file.txt").write_text("downloaded\n")
    os.chmod(served / "file.txt", 0o644)
    os.utime(served / "file.txt", (1_650_000_000, 1_650_000_000))
    (served / "archive.tar").write_bytes(tar_bytes({"x": "x\n"}))
    digest = hashlib.sha256(b"downloaded\n").hexdigest()
    with serving(served) as url:
        result = make_build(
            f"""
            FROM busybox
            ADD {url}/file.txt /downloaded
            ADD {url}/file.txt /dir/
            ADD --checksum=sha256:{digest} {url}/file.txt /checked
            ADD {url}/archive.tar /remote/
            """
        )
        tree = flatten(fresh_store, result, tmp_path / "tree")
        for path in ("downloaded", "dir/file.txt", "checked"):
            assert (tree / path).read_text() == "downloaded\n", path
            assert mode(tree / path) == 0o600, path  # as Docker leaves a download
            assert owner(tree / path) == (0, 0), path
        assert (tree / "downloaded").stat().st_mtime == 1_650_000_000  # the server's Last-Modified
        assert (tree / "remote" / "archive.tar").is_file()  # a download is not extracted
        wrong = "sha256:" + "0" * 64
        with pytest.raises(BuildError) as failure:
            make_build(f"FROM busybox\nADD --checksum={wrong} {url}/file.txt /x\n")
        assert failure.value.message == (
            f"ADD {url}/file.txt: checksum mismatch: expected {wrong}, got sha256:{digest}"
        )
        with pytest.raises(BuildError, match=r"ADD http://127\.0\.0\.1:\d+/missing\.txt: download failed"):
            make_build(f"FROM busybox\nADD {url}/missing.txt /x\n")


def test_add_checksum_is_only_for_urls(make_build) -> None:
    with pytest.raises(BuildError, match="ADD --checksum: only for http"):
        make_build("FROM busybox\nADD --checksum=sha256:" + "0" * 64 + " a.txt /\n", {"a.txt": "a\n"})


# --------------------------------------------------------------------------- interoperability


def test_umoci_unpacks_the_same_tree(make_build, fresh_store, context_dir: Path, tmp_path: Path) -> None:
    from tests.build.conftest import write_tree

    write_tree(context_dir, {"app/bin/tool": "#!/bin/sh\necho tool\n", "app/data/a.txt": "a\n", "app/empty/.keep": "", "conf.ini": "x=1\n"})
    os.chmod(context_dir / "app" / "bin" / "tool", 0o755)
    os.chmod(context_dir / "app" / "data", 0o750)
    os.chmod(context_dir / "conf.ini", 0o600)
    os.symlink("bin/tool", context_dir / "app" / "tool-link")
    os.symlink("/etc/passwd", context_dir / "app" / "passwd-link")
    result = make_build(
        """
        FROM busybox
        COPY app /opt/app/
        COPY --chown=65534:65534 --chmod=640 conf.ini /etc/app/conf.ini
        COPY <<EOF /etc/motd
        welcome
        EOF
        RUN rm /bin/true && rm -r /opt/app/empty && mkdir -m 1777 /scratch
        """,
        tags=["umoci-check:1"],
    )
    expected = describe_tree(flatten(fresh_store, result, tmp_path / "flat"))
    assert umoci_tree(fresh_store, "umoci-check:1", tmp_path) == expected
