"""The build context: COPY source selection, the ignore-file view, digests and the stat cache.

Every test builds a real directory under tmp_path. Hostile paths point at a
canary directory beside the context (design/hostile-inputs.md), never at a
real system file, and the canary's content must appear in no entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import threading
import time
from pathlib import Path

import pytest

from builder.context import BuildContext, ContextEntry, SourceMatch
from builder.errors import ContextError
from builder.ignore import IgnoreRules

CANARY = b"CANARY-2f6c0d1e"


class Link(str):
    """A symbolic link's target in a tree spec."""


def make_tree(root: Path, spec: dict[str, str | bytes | Link | None]) -> Path:
    """Files (str/bytes), directories (None) and symbolic links (Link) under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, content in spec.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            path.mkdir(exist_ok=True)
        elif isinstance(content, Link):
            path.symlink_to(str(content))
        else:
            path.write_bytes(content.encode() if isinstance(content, str) else content)
    return root


def settle() -> None:
    # The stat cache remembers a digest only once the file's timestamps are
    # safely older than the read (see _settled); let fresh files age.
    time.sleep(0.1)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def rels(match: SourceMatch) -> list[str]:
    return [entry.rel for entry in match.entries]


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "canary", {"victim": CANARY, "sub/deep": CANARY})


def assert_no_canary(matches: tuple[SourceMatch, ...]) -> None:
    leaked = sha(CANARY)
    for match in matches:
        for entry in match.entries:
            assert entry.digest != leaked, entry


# --------------------------------------------------------------------------- selection


def test_a_literal_file(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "ctx", {"src/app.py": "print(1)\n"})
    (root / "src/app.py").chmod(0o640)
    (match,) = BuildContext(root).select(["src/app.py"])
    assert (match.source, match.rel, match.kind) == ("src/app.py", "src/app.py", "file")
    (entry,) = match.entries
    assert entry == ContextEntry(
        "src/app.py", "file", 0o640, 9, (root / "src/app.py").lstat().st_mtime_ns, None, sha(b"print(1)\n")
    )


@pytest.mark.parametrize("source", ["/src/app.py", "./src/app.py", "src//app.py", "src/./app.py", "other/../src/app.py"])
def test_sources_are_cleaned_and_relative_to_the_root(tmp_path: Path, source: str) -> None:
    root = make_tree(tmp_path / "ctx", {"src/app.py": "x"})
    (match,) = BuildContext(root).select([source])
    assert (match.source, match.rel) == (source, "src/app.py")


def test_a_directory_is_itself_then_everything_beneath_sorted(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "ctx", {"d/b.txt": "b", "d/a/z.txt": "z", "d/a-c": "ac", "d/empty": None, "d/l": Link("b.txt")})
    (match,) = BuildContext(root).select(["d"])
    assert match.kind == "dir"
    assert rels(match) == ["d", "d/a", "d/a-c", "d/a/z.txt", "d/b.txt", "d/empty", "d/l"]
    kinds = {entry.rel: (entry.kind, entry.size, entry.target, entry.digest) for entry in match.entries}
    assert kinds["d"] == ("dir", 0, None, None)
    assert kinds["d/l"] == ("symlink", 0, "b.txt", None)
    assert kinds["d/a/z.txt"] == ("file", 1, None, sha(b"z"))


@pytest.mark.parametrize("source", [".", "/", "./", ""])
def test_the_root_itself(tmp_path: Path, source: str) -> None:
    root = make_tree(tmp_path / "ctx", {"a.txt": "a", "sub/b.txt": "b"})
    (match,) = BuildContext(root).select([source])
    assert (match.rel, match.kind) == ("", "dir")
    assert rels(match) == ["", "a.txt", "sub", "sub/b.txt"]


def test_wildcards_expand_sorted_per_component(tmp_path: Path) -> None:
    root = make_tree(
        tmp_path / "ctx",
        {"home.txt": "1", "homer.md": "2", "hom": None, "other": "3", "src/app/main.go": "4", "src/lib/main.go": "5", "src/main.go": "6"},
    )
    context = BuildContext(root)
    assert [m.rel for m in context.select(["hom*"])] == ["hom", "home.txt", "homer.md"]
    assert [m.rel for m in context.select(["hom?.txt"])] == ["home.txt"]
    assert [m.rel for m in context.select(["src/*/main.go"])] == ["src/app/main.go", "src/lib/main.go"]
    assert [m.rel for m in context.select(["[h]o[l-n]e.*"])] == ["home.txt"]
    assert all(m.source == "src/*/main.go" for m in context.select(["src/*/main.go"]))


def test_wildcards_do_not_follow_links_below_their_start(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "ctx", {"d/f": "x", "l": Link("d")})
    assert [m.rel for m in BuildContext(root).select(["*/f"])] == ["d/f"]


def test_several_sources_keep_their_order(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "ctx", {"b": "b", "a": "a"})
    assert [m.rel for m in BuildContext(root).select(["b", "a"])] == ["b", "a"]


@pytest.mark.parametrize("source", ["nomatch*", "*.nothing", "src/*/absent"])
def test_a_wildcard_that_matches_nothing_is_an_error(tmp_path: Path, source: str) -> None:
    root = make_tree(tmp_path / "ctx", {"src/app/main.go": "x"})
    with pytest.raises(ContextError, match="no match in the build context") as caught:
        BuildContext(root).select([source])
    assert f'"{source}"' in str(caught.value)


def test_a_malformed_wildcard_is_an_error(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "ctx", {"a": "a"})
    with pytest.raises(ContextError, match='"a\\[": malformed pattern'):
        BuildContext(root).select(["a["])


@pytest.mark.parametrize("source", ["../x", "sub/../../x", "/../x", "../../etc/passwd", ".."])
def test_sources_that_climb_out_are_refused(tmp_path: Path, source: str) -> None:
    root = make_tree(tmp_path / "ctx", {"sub/a": "a"})
    make_tree(tmp_path, {"x": CANARY})
    with pytest.raises(ContextError) as caught:
        BuildContext(root).select([source])
    assert str(caught.value) == f"forbidden path outside the build context: {source}"


def test_an_overlong_source_is_one_line_error(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "ctx", {"a": "a"})
    with pytest.raises(ContextError, match="cannot read from the build context: file name too long"):
        BuildContext(root).select(["x" * 5000])


def test_a_future_mtime_does_not_defeat_the_cache(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "ctx", {"a": "a"})
    os.utime(root / "a", ns=(4 * 10**18, 4 * 10**18))  # the year 2096
    cache = tmp_path / "cache.json"
    settle()
    first = BuildContext(root, stat_cache=cache)
    first.select(["a"])
    first.save()
    again = BuildContext(root, stat_cache=cache)
    again.select(["a"])
    assert again.files_hashed == 0


def test_a_missing_source_names_it(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "ctx", {"a.txt": "a"})
    with pytest.raises(ContextError) as caught:
        BuildContext(root).select(["nope/file.txt"])
    assert str(caught.value) == '"nope/file.txt": not found in the build context'


@pytest.mark.parametrize("source", ["a.txt/", "a.txt/.", "a.txt/b"])
def test_a_file_is_not_a_directory(tmp_path: Path, source: str) -> None:
    root = make_tree(tmp_path / "ctx", {"a.txt": "a"})
    with pytest.raises(ContextError, match="not found in the build context"):
        BuildContext(root).select([source])


# --------------------------------------------------------------------------- symbolic links


def test_a_symlink_source_is_selected_as_a_symlink(tmp_path: Path, canary: Path) -> None:
    root = make_tree(tmp_path / "ctx", {"pw": Link("/etc/passwd"), "out": Link(str(canary / "victim")), "rel": Link("../canary")})
    context = BuildContext(root)
    matches = context.select(["pw", "out", "rel"])
    assert [(m.rel, m.kind, m.entries[0].target, m.entries[0].digest) for m in matches] == [
        ("pw", "symlink", "/etc/passwd", None),
        ("out", "symlink", str(canary / "victim"), None),
        ("rel", "symlink", "../canary", None),
    ]
    assert context.files_hashed == 0


def test_links_inside_a_walk_are_never_followed(tmp_path: Path, canary: Path) -> None:
    root = make_tree(tmp_path / "ctx", {"dir/inner": Link(str(canary)), "dir/up": Link("../../canary"), "dir/f": "f"})
    settle()
    context = BuildContext(root)
    matches = context.select([".", "dir"])
    assert rels(matches[1]) == ["dir", "dir/f", "dir/inner", "dir/up"]
    assert_no_canary(matches)
    assert context.files_hashed == 1


def test_link_components_resolve_inside_the_root(tmp_path: Path, canary: Path) -> None:
    root = make_tree(
        tmp_path / "ctx",
        {
            "etc/passwd": "inside",
            "abs": Link("/etc"),  # absolute: from the context root
            "rel": Link("etc"),
            "up": Link("../../../.."),  # climbing stops at the root
            "out": Link(str(canary)),  # <root>/<canary path>, which does not exist
            "chain": Link("rel"),
        },
    )
    context = BuildContext(root)
    for source in ["abs/passwd", "rel/passwd", "up/etc/passwd", "chain/passwd", "up/up/abs/passwd"]:
        (match,) = context.select([source])
        assert (match.rel, match.entries[0].digest) == ("etc/passwd", sha(b"inside")), source
    for source in ["out/victim", "out/sub/deep", "up/../canary/victim"]:
        with pytest.raises(ContextError, match="not found in the build context"):
            context.select([source])


def test_a_trailing_slash_follows_a_link_to_a_directory(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "ctx", {"real/f": "f", "alias": Link("/real")})
    context = BuildContext(root)
    (as_link,) = context.select(["alias"])
    assert as_link.kind == "symlink"
    (as_dir,) = context.select(["alias/"])
    assert (as_dir.rel, as_dir.kind, rels(as_dir)) == ("real", "dir", ["real", "real/f"])


def test_a_link_loop_is_an_error(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "ctx", {"a": Link("b"), "b": Link("a")})
    with pytest.raises(ContextError, match="too many levels of symbolic links"):
        BuildContext(root).select(["a/x"])


# --------------------------------------------------------------------------- ignore files


def test_an_ignored_source_says_which_rule_hid_it(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "ctx", {".dockerignore": "# logs\n*.log\n", "app.log": "secret"})
    context = BuildContext.open(root)
    with pytest.raises(ContextError) as caught:
        context.select(["app.log"])
    assert str(caught.value) == '"app.log": not found in the build context: excluded by .dockerignore:2 (*.log)'
    with pytest.raises(ContextError) as caught:
        context.select(["*.log"])
    assert str(caught.value) == '"*.log": no match in the build context: excluded by .dockerignore:2 (*.log)'
    assert context.files_hashed == 0


def test_ignored_paths_cannot_be_reached_another_way(tmp_path: Path) -> None:
    root = make_tree(
        tmp_path / "ctx",
        {
            ".dockerignore": "secret.txt\n**/*.pem\n!keep.pem\nalias\n",
            "secret.txt": CANARY,
            "keys/a.pem": CANARY,
            "keep.pem": "public",
            "sub/x": "x",
            "leak": Link("secret.txt"),
            "keys2": Link("keys"),
            "alias": Link("sub"),
        },
    )
    context = BuildContext.open(root)
    for source in ["./secret.txt", "sub/../secret.txt", "secret.tx?", "secret.txt/", "keys/a.pem", "keys2/a.pem", "alias/x"]:
        with pytest.raises(ContextError, match="in the build context"):
            context.select([source])
    (leak,) = context.select(["leak"])
    assert (leak.kind, leak.entries[0].target) == ("symlink", "secret.txt")
    everything = context.select(["."])
    assert rels(everything[0]) == ["", ".dockerignore", "keep.pem", "keys", "keys2", "leak", "sub", "sub/x"]
    assert_no_canary(everything)
    before = context.digest(everything)
    (root / "secret.txt").write_bytes(CANARY + b"-changed")
    assert BuildContext.open(root).digest(BuildContext.open(root).select(["."])) == before


def test_exceptions_reinclude_inside_excluded_directories(tmp_path: Path) -> None:
    root = make_tree(
        tmp_path / "ctx",
        {".dockerignore": "*\n!src/keep.txt\n", "src/keep.txt": "k", "src/drop.txt": "d", "other/x": "x", "top": "t"},
    )
    context = BuildContext.open(root)
    (everything,) = context.select(["."])
    assert rels(everything) == ["", "src", "src/keep.txt"]
    (src,) = context.select(["src"])
    assert rels(src) == ["src", "src/keep.txt"]
    assert context.select(["src/keep.txt"])[0].rel == "src/keep.txt"
    with pytest.raises(ContextError, match=r'"other": not found in the build context: excluded by \.dockerignore:1 \(\*\)'):
        context.select(["other"])
    assert [m.rel for m in context.select(["*"])] == ["src"]


def test_a_recipe_ignore_file_wins_over_the_root_one(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "ctx", {".dockerignore": "a.txt\n", "a.txt": "a", "b.txt": "b"})
    recipes = make_tree(tmp_path / "recipes", {"Recipefile": "FROM scratch\n", "Recipefile.dockerignore": "\nb.txt\n"})
    context = BuildContext.open(root, recipe=recipes / "Recipefile")
    assert context.ignore is not None and context.ignore.rules[0].origin == "Recipefile.dockerignore"
    assert context.select(["a.txt"])[0].rel == "a.txt"
    with pytest.raises(ContextError, match=r"excluded by Recipefile\.dockerignore:2 \(b\.txt\)"):
        context.select(["b.txt"])
    other = make_tree(tmp_path / "other", {"Recipefile": "FROM scratch\n"})
    fallback = BuildContext.open(root, recipe=other / "Recipefile")
    with pytest.raises(ContextError, match=r"excluded by \.dockerignore:1 \(a\.txt\)"):
        fallback.select(["a.txt"])
    assert BuildContext.open(make_tree(tmp_path / "bare", {"x": "x"})).ignore is None


def test_an_ignore_file_must_be_a_small_regular_file(tmp_path: Path, canary: Path) -> None:
    (canary / "ignorefile").write_text("*\n")
    linked = make_tree(tmp_path / "linked", {".dockerignore": Link(str(canary / "ignorefile"))})
    with pytest.raises(ContextError, match='".dockerignore": an ignore file cannot be a symbolic link'):
        BuildContext.open(linked)
    huge = make_tree(tmp_path / "huge", {".dockerignore": "x\n" * (1 << 20)})
    with pytest.raises(ContextError, match='".dockerignore": larger than 1 MiB'):
        BuildContext.open(huge)
    odd = make_tree(tmp_path / "odd", {".dockerignore/": None})
    with pytest.raises(ContextError, match="must be a regular file"):
        BuildContext.open(odd)


def test_ignore_rules_can_be_given_directly(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "ctx", {"a.log": "a", "b.txt": "b"})
    context = BuildContext(root, ignore=IgnoreRules.parse("*.log", "custom"))
    assert rels(context.select(["."])[0]) == ["", "b.txt"]


# --------------------------------------------------------------------------- COPY --exclude


def test_exclude_patterns_are_relative_to_the_copied_directory(tmp_path: Path) -> None:
    # BuildKit matches --exclude against paths inside each source directory:
    # `--exclude=*.md docs` drops docs/a.md, not docs/sub/b.md (that needs **/*.md).
    root = make_tree(tmp_path / "ctx", {"docs/a.md": "a", "docs/sub/b.md": "b", "docs/c.txt": "c", "top.md": "t"})
    context = BuildContext(root)
    (docs,) = context.select(["docs"], exclude=["*.md"])
    assert rels(docs) == ["docs", "docs/c.txt", "docs/sub", "docs/sub/b.md"]
    (deep,) = context.select(["docs"], exclude=["**/*.md"])
    assert rels(deep) == ["docs", "docs/c.txt", "docs/sub"]
    (kept,) = context.select(["docs"], exclude=["**/*.md", "!sub/b.md"])
    assert rels(kept) == ["docs", "docs/c.txt", "docs/sub", "docs/sub/b.md"]
    (whole,) = context.select(["."], exclude=["docs/sub"])
    assert rels(whole) == ["", "docs", "docs/a.md", "docs/c.txt", "top.md"]


def test_exclude_applies_to_wildcard_matches(tmp_path: Path) -> None:
    # Docker's reference: `COPY --exclude=*.txt hom* /mydir/` skips .txt files.
    root = make_tree(tmp_path / "ctx", {"home.txt": "1", "homer.md": "2", "homedir/x.txt": "3", "homedir/y": "4"})
    matches = BuildContext(root).select(["hom*"], exclude=["*.txt"])
    assert [m.rel for m in matches] == ["homedir", "homer.md"]
    assert rels(matches[0]) == ["homedir", "homedir/y"]
    with pytest.raises(ContextError, match=r'"\*.txt": no match in the build context: excluded by --exclude:1'):
        BuildContext(root).select(["*.txt"], exclude=["*.txt"])


def test_exclude_and_ignore_stack(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "ctx", {".dockerignore": "*.log", "a.log": "a", "b.tmp": "b", "c": "c"})
    (match,) = BuildContext.open(root).select(["."], exclude=["*.tmp"])
    assert rels(match) == ["", ".dockerignore", "c"]


def test_parents_keeps_rel_complete(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "ctx", {"x/y/z.txt": "z"})
    (match,) = BuildContext(root).select(["x/*/z.txt"], parents=True)
    assert match.rel == "x/y/z.txt"


# --------------------------------------------------------------------------- special files


def test_a_fifo_does_not_hang_and_is_not_copied(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "ctx", {"d/f": "f"})
    os.mkfifo(root / "d/pipe")
    os.mkfifo(root / "pipe")
    context = BuildContext(root)
    results: dict[str, object] = {}

    def select_all() -> None:
        results["dir"] = context.select(["d"])
        results["wild"] = context.select(["*"])
        try:
            context.select(["pipe"])
        except ContextError as exc:
            results["direct"] = str(exc)

    worker = threading.Thread(target=select_all, daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "select hung on a FIFO"
    (d,) = results["dir"]  # type: ignore[misc]
    assert rels(d) == ["d", "d/f"] and d.skipped == ("d/pipe",)
    assert [m.rel for m in results["wild"]] == ["d"]  # type: ignore[attr-defined]
    assert results["direct"] == '"pipe": a fifo cannot be copied from the build context'


def test_sockets_and_devices_are_skipped(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "ctx", {"f": "f"})
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(root / "sock"))
    try:
        made_device = True
        try:
            os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        except PermissionError:
            made_device = False
        (match,) = BuildContext(root).select(["."])
        assert rels(match) == ["", "f"]
        assert match.skipped == (("null", "sock") if made_device else ("sock",))
        with pytest.raises(ContextError, match='"sock": a socket cannot be copied'):
            BuildContext(root).select(["sock"])
        if made_device:
            with pytest.raises(ContextError, match='"null": a device node cannot be copied'):
                BuildContext(root).select(["null"])
    finally:
        listener.close()


def test_deep_trees_do_not_recurse_but_are_bounded(tmp_path: Path) -> None:
    root = tmp_path / "ctx"
    deep = root.joinpath(*["d"] * 200)
    deep.mkdir(parents=True)
    (deep / "f").write_text("f")
    (match,) = BuildContext(root).select(["d"])
    assert match.entries[-1].rel == "/".join(["d"] * 200 + ["f"])
    root.joinpath(*["d"] * 300).mkdir(parents=True)
    with pytest.raises(ContextError, match="more than 256 directories deep"):
        BuildContext(root).select(["d"])


# --------------------------------------------------------------------------- digests


def test_the_same_content_elsewhere_has_the_same_digest(tmp_path: Path) -> None:
    spec = {"src/a.py": "a", "src/b/c.py": "c", "src/l": Link("a.py"), "README": "r"}
    one = BuildContext(make_tree(tmp_path / "one", spec))
    two = BuildContext(make_tree(tmp_path / "elsewhere/two", spec))
    for sources in (["."], ["src"], ["src/*.py", "README"]):
        assert one.digest(one.select(sources)) == two.digest(two.select(sources))
    assert one.digest(one.select(["src"])).startswith("sha256:")
    assert one.digest(one.select(["src"])) != one.digest(one.select(["."]))


def test_what_changes_the_digest_and_what_does_not(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "ctx", {"src/a.py": "aaaa", "src/l": Link("a.py")})
    (root / "src/a.py").chmod(0o644)

    def digest() -> str:
        context = BuildContext(root)
        return context.digest(context.select(["src"]))

    original = digest()
    os.utime(root / "src/a.py", ns=(1, 1))  # touch: mtime only
    os.utime(root / "src", ns=(2, 2))
    assert digest() == original
    (root / "src/a.py").write_text("aaab")  # one byte
    assert digest() != original
    (root / "src/a.py").write_text("aaaa")
    assert digest() == original
    (root / "src/a.py").chmod(0o755)  # mode
    assert digest() != original
    (root / "src/a.py").chmod(0o644)
    (root / "src/l").unlink()
    (root / "src/l").symlink_to("b.py")  # symlink target
    assert digest() != original
    (root / "src/l").unlink()
    (root / "src/l").symlink_to("a.py")
    assert digest() == original
    (root / "src/new").write_text("")  # a new empty file
    assert digest() != original


def test_the_digest_covers_source_and_kind(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "ctx", {"a": "x", "b": "x"})
    context = BuildContext(root)
    assert context.digest(context.select(["a"])) != context.digest(context.select(["b"]))
    assert context.digest(context.select(["a", "b"])) != context.digest(context.select(["b", "a"]))
    assert context.digest(()) == context.digest([])


# --------------------------------------------------------------------------- the stat cache


def test_unchanged_files_are_not_read_again(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "ctx", {f"f{i}": str(i) for i in range(5)} | {"d/g": "g"})
    cache = tmp_path / "stat-cache.json"
    settle()
    first = BuildContext(root, stat_cache=cache)
    key = first.digest(first.select(["."]))
    assert first.files_hashed == 6
    first.select(["."])
    assert first.files_hashed == 6  # the same instance remembers too
    first.save()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".stat-cache")] == []

    second = BuildContext(root, stat_cache=cache)
    assert second.digest(second.select(["."])) == key
    assert second.files_hashed == 0

    os.utime(root / "f1", ns=(10**18, 10**18))  # touched, same bytes
    settle()
    third = BuildContext(root, stat_cache=cache)
    assert third.digest(third.select(["."])) == key
    assert third.files_hashed == 1
    third.save()

    (root / "f2").write_text("changed")
    settle()
    fourth = BuildContext(root, stat_cache=cache)
    assert fourth.digest(fourth.select(["."])) != key
    assert fourth.files_hashed == 1
    fourth.save()
    fifth = BuildContext(root, stat_cache=cache)
    fifth.select(["."])
    assert fifth.files_hashed == 0


def test_a_file_written_just_now_is_not_trusted_to_the_cache(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "ctx", {"fresh": "1"})
    cache = tmp_path / "cache.json"
    first = BuildContext(root, stat_cache=cache)
    first.select(["fresh"])
    first.save()
    second = BuildContext(root, stat_cache=cache)
    second.select(["fresh"])
    assert second.files_hashed == 1


@pytest.mark.parametrize(
    "garbage",
    [b"", b"{not json", b"[]", b'{"format": "pybuild-stat-cache-v1", "root": 3, "files": []}', b"\xff\xfe", b"null"],
)
def test_a_corrupt_stat_cache_is_ignored(tmp_path: Path, garbage: bytes) -> None:
    root = make_tree(tmp_path / "ctx", {"a": "a", "b": "b"})
    cache = tmp_path / "cache.json"
    cache.write_bytes(garbage)
    settle()
    context = BuildContext(root, stat_cache=cache)
    context.select(["."])
    assert context.files_hashed == 2
    context.save()
    assert json.loads(cache.read_text())["format"] == "pybuild-stat-cache-v1"


def test_a_poisoned_entry_is_not_trusted(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "ctx", {"a": "a"})
    cache = tmp_path / "cache.json"
    settle()
    context = BuildContext(root, stat_cache=cache)
    context.select(["a"])
    context.save()
    document = json.loads(cache.read_text())
    document["files"]["a"][4] = 42  # not a digest
    cache.write_text(json.dumps(document))
    again = BuildContext(root, stat_cache=cache)
    assert again.select(["a"])[0].entries[0].digest == sha(b"a")
    assert again.files_hashed == 1


def test_a_stat_cache_is_never_trusted_across_roots(tmp_path: Path) -> None:
    spec = {"a": "a"}
    one = make_tree(tmp_path / "one", spec)
    two = make_tree(tmp_path / "two", spec)
    cache = tmp_path / "cache.json"
    settle()
    first = BuildContext(one, stat_cache=cache)
    first.select(["."])
    first.save()
    other = BuildContext(two, stat_cache=cache)
    other.select(["."])
    assert other.files_hashed == 1


def test_save_without_a_stat_cache_does_nothing(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "ctx", {"a": "a"})
    context = BuildContext(root)
    context.select(["."])
    context.save()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ctx"]


def test_a_missing_root_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ContextError, match="build context .*: no such file or directory"):
        BuildContext(tmp_path / "absent").select(["."])
