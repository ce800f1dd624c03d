"""The fixture recipes under fixtures/builds/ built end to end: config, filesystem (by the store and by umoci), `pybuild run`.

fixtures/builds/everything uses every instruction and the RUN, COPY and ADD
flags in one multi-stage build with a skipped stage, read in place from its
context directory (with a .dockerignore).
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from builder.api import build
from store.image import Healthcheck
from store.images import Store
from store.reference import parse_reference
from store.rootfs import import_rootfs
from tests.build.conftest import describe_tree, flatten, pybuild, umoci_tree
from tests.support import FIXTURES

EVERYTHING = FIXTURES / "builds" / "everything"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, busybox_rootfs: Path):
    store = Store(tmp_path_factory.mktemp("everything") / "store")
    import_rootfs(store.content, busybox_rootfs, parse_reference("busybox"))
    result = build(EVERYTHING / "context", recipe=EVERYTHING / "Recipefile", store=store, tags=["everything:test"])
    yield store, result
    store.metadata.close()


@pytest.fixture
def everything(built):
    return built[1]


@pytest.fixture
def everything_store(built):
    return built[0]


def test_the_config_records_every_instruction(everything) -> None:
    config = everything.config.config
    assert everything.config.author == "pybuild tests <tests@example.invalid>"
    assert dict(config.labels) == {"org.opencontainers.image.title": "everything", "com.example.kind": "fixture"}
    assert config.env == ("APP=/srv/app", "GREETING=hello fixtures")
    assert (config.working_dir, config.user, config.stop_signal) == ("/srv/app", "65534:65534", "SIGTERM")
    assert config.exposed_ports == ("8080/tcp", "53/udp") and config.volumes == ("/data",)
    assert config.shell == ("/bin/sh", "-ec")
    assert config.healthcheck == Healthcheck(
        test=("CMD-SHELL", "test -e /srv/app/ran.txt"), interval=30 * 10**9, timeout=5 * 10**9, retries=3
    )
    assert config.on_build == ("RUN echo child build",)
    assert (config.entrypoint, config.cmd) == (("/bin/sh", "-c"), ("cat /etc/motd /srv/app/ran.txt",))
    assert {s.stage for s in everything.steps} == {"tools", "2"}  # `unused` (RUN exit 1) is skipped
    final_steps = [s for s in everything.steps if s.stage == "2" and not s.text.startswith("FROM")]
    assert len(everything.config.history) == 1 + len(final_steps)  # busybox's, then one per instruction


def test_the_filesystem_has_what_each_step_made(everything, everything_store, tmp_path: Path) -> None:
    root = flatten(everything_store, everything, tmp_path / "tree")
    app = root / "srv" / "app"

    def text(path: Path) -> str:
        return path.read_text()

    assert text(app / "hello.txt") == "hello from the context\n"
    assert sorted(p.name for p in (app / "sub").iterdir()) == ["one.txt", "three.skip", "two.txt"]
    owned = (app / "owned.txt").lstat()
    assert (owned.st_uid, owned.st_gid, stat.S_IMODE(owned.st_mode)) == (65534, 65534, 0o640)
    assert text(app / "tools" / "tool.txt") == "tool 1.0\n"
    assert text(app / "tools" / "from-bind.txt") == "hello from the context\n"
    assert text(app / "tools" / "tmpfs.txt") == "0 entries\n"
    assert (root / "opt" / "busybox-copy").read_bytes() == (root / "bin" / "busybox").read_bytes()
    assert sorted(p.name for p in (root / "parents" / "src" / "sub").iterdir()) == ["one.txt", "two.txt"]
    assert sorted(p.name for p in (root / "excluded").iterdir()) == ["one.txt", "two.txt"]
    assert text(root / "linked" / "hello.txt") == "hello from the context\n"
    assert text(root / "etc" / "motd") == "hello fixtures from a heredoc\n"
    assert text(root / "unpacked" / "inner" / "file.txt") == "from the archive\n"
    assert text(root / "added.txt") == "hello from the context\n"
    assert text(app / "ran.txt") == "ran in /srv/app as 0\n" and (app / "ran-link").readlink() == Path("ran.txt")
    assert not (root / "bin" / "true").exists()
    assert text(app / "nets.txt") == "lo\n"
    assert text(root / "tmp" / "uid.txt") == "65534\n"
    assert not (root / "var" / "cache" / "tools").exists() or not any((root / "var" / "cache" / "tools").iterdir())
    assert not list(root.rglob("secret.txt")) and not list(root.rglob("build.log"))  # .dockerignore'd


def test_umoci_unpacks_the_same_tree(everything, everything_store, tmp_path: Path) -> None:
    expected = describe_tree(flatten(everything_store, everything, tmp_path / "flat"))
    assert umoci_tree(everything_store, "everything:test", tmp_path) == expected


def test_pybuild_run_of_the_result(everything_store) -> None:
    ran = pybuild("run", "everything:test", store=everything_store)
    assert ran.stdout == "hello fixtures from a heredoc\nran in /srv/app as 0\n"
    child = pybuild("run", "everything:test", "id -u; pwd", store=everything_store)
    assert child.stdout == "65534\n/srv/app\n"


def test_the_demo_builds_and_runs(fresh_store, tmp_path: Path) -> None:
    built = pybuild("-f", str(FIXTURES / "demo" / "Recipefile"), "-t", "demo", str(FIXTURES / "demo"), store=fresh_store)
    assert "error" not in built.stderr
    ran = pybuild("run", "demo", store=fresh_store)
    assert ran.stdout == "Hello, world! built by pybuild in a namespace sandbox (3 words counted at build time)\n"
    again = pybuild("-f", str(FIXTURES / "demo" / "Recipefile"), "-t", "demo", "--progress", "plain", str(FIXTURES / "demo"),
                    store=fresh_store)  # fmt: skip
    assert ": up to date" in again.stderr
