"""Build-cache behaviour: what a rebuild reuses, what it runs again, and why it says it missed."""

from __future__ import annotations

import os
import shutil
import textwrap
from pathlib import Path

import pytest

from builder.api import build
from builder.progress import StepStarted
from tests.build.conftest import pybuild

RECIPE = """
    FROM busybox
    RUN --mount=type=cache,target=/runs echo before-arg >> /runs/log
    COPY a.txt /a.txt
    RUN --mount=type=cache,target=/runs echo after-a >> /runs/log
    ARG V=1
    COPY b.txt /b.txt
    RUN --mount=type=cache,target=/runs echo "after-b $V" >> /runs/log
    CMD ["cat", "/b.txt"]
"""
FILES = {"a.txt": "a\n", "b.txt": "b\n"}


def started(events: list[object]) -> list[str]:
    return [e.step.text for e in events if isinstance(e, StepStarted)]


def rebuilt(result) -> list[str]:
    return [s.text for s in result.steps if s.layer_step and not s.cached]


def reasons(result, text: str) -> list[str]:
    return next(list(s.reasons) for s in result.steps if s.text == text)


def test_second_build_is_fully_cached_and_runs_nothing(make_build, fresh_store) -> None:
    first = make_build(RECIPE, FILES, tags=["app"])
    events: list[object] = []
    second = make_build(RECIPE, FILES, tags=["app"], progress=events.append)
    assert first.built_steps == 5 and second.built_steps == 0 and second.cached_steps == 5
    assert started(events) == []
    assert second.up_to_date and second.digest == first.digest
    log = [p for p in (fresh_store.root / "builder" / "cache-mounts").rglob("log")]
    assert log[0].read_text().count("before-arg") == 1  # the RUN did not run again


def test_touching_mtime_keeps_the_cache(make_build, context_dir: Path) -> None:
    make_build(RECIPE, FILES)
    os.utime(context_dir / "a.txt", (1, 1))
    assert make_build(RECIPE).built_steps == 0


def test_one_changed_file_rebuilds_from_the_first_copy_that_includes_it(make_build) -> None:
    make_build(RECIPE, FILES)
    result = make_build(RECIPE, {"b.txt": "changed\n"})
    assert rebuilt(result) == ["COPY b.txt /b.txt", 'RUN --mount=type=cache,target=/runs echo "after-b $V" >> /runs/log']
    assert reasons(result, "COPY b.txt /b.txt") == ["file changed: b.txt"]
    assert reasons(result, rebuilt(result)[1])[0].startswith("it builds on step #6 (COPY b.txt /b.txt), which was rebuilt")


def test_a_build_arg_rebuilds_only_what_sees_it(make_build) -> None:
    make_build(RECIPE, FILES)
    result = make_build(RECIPE, build_args={"V": "2"})
    # COPY b.txt does not expand V and comes before any RUN that sees it: only the last RUN.
    assert rebuilt(result) == ['RUN --mount=type=cache,target=/runs echo "after-b $V" >> /runs/log']
    assert reasons(result, rebuilt(result)[0]) == ["env V: 1 -> 2"]


def test_a_build_arg_reaches_every_run_after_its_declaration(make_build) -> None:
    recipe = """
        FROM busybox
        RUN echo one > /one
        ARG V=1
        RUN echo two > /two
        RUN echo three > /three
        """
    make_build(recipe)
    result = make_build(recipe, build_args={"V": "2"})
    assert rebuilt(result) == ["RUN echo two > /two", "RUN echo three > /three"]
    assert reasons(result, "RUN echo two > /two") == ["env V: 1 -> 2"]


def test_moving_an_instruction_keeps_its_cache(make_build) -> None:
    make_build(RECIPE, FILES)
    moved = "# a comment and blank lines move every instruction down\n\n\n" + textwrap.dedent(RECIPE)
    assert make_build(moved).built_steps == 0


def test_changed_command_text_is_named(make_build) -> None:
    make_build(RECIPE, FILES)
    result = make_build(RECIPE.replace("echo after-a", "echo AFTER-A"))
    assert reasons(result, "RUN --mount=type=cache,target=/runs echo AFTER-A >> /runs/log") == [
        'argv: ["/bin/sh","-c","echo after-a >> /runs/log"] -> ["/bin/sh","-c","echo AFTER-A >> /runs/log"]'
    ]


def test_no_cache_and_no_cache_filter(make_build) -> None:
    recipe = """
        FROM busybox AS one
        RUN echo one > /one
        FROM one AS two
        RUN echo two > /two
        """
    make_build(recipe)
    assert make_build(recipe, no_cache=True).built_steps == 2
    result = make_build(recipe, no_cache_filter=["two"])
    assert rebuilt(result) == ["RUN echo two > /two"]
    assert reasons(result, "RUN echo two > /two") == ["--no-cache"]


def test_explain_cache_on_the_command_line(make_build, fresh_store, context_dir: Path) -> None:
    make_build(RECIPE, FILES)
    (context_dir / "a.txt").write_text("new a\n")
    out = pybuild("build", "--explain-cache", "--progress", "plain", str(context_dir), store=fresh_store)
    assert "#3 cache miss: file changed: a.txt" in out.stderr
    assert "cache: 4 step(s) rebuilt:" in out.stderr and "      file changed: a.txt" in out.stderr
    again = pybuild("build", "--explain-cache", "--progress", "plain", str(context_dir), store=fresh_store)
    assert "cache: every step was cached" in again.stderr and ": up to date" in again.stderr


def test_reproducible_with_source_date_epoch(tmp_path: Path, busybox_rootfs: Path) -> None:
    from store.images import Store
    from store.reference import parse_reference
    from store.rootfs import import_rootfs
    from tests.support import FIXTURES

    digests = []
    for name in ("one", "two"):
        store = Store(tmp_path / name)
        import datetime

        import_rootfs(store.content, busybox_rootfs, parse_reference("busybox"), created=datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC))
        context = tmp_path / f"context-{name}"
        shutil.copytree(FIXTURES / "demo", context)
        digests.append(build(context, store=store, build_args={"SOURCE_DATE_EPOCH": "1700000000"}).digest)
        store.metadata.close()
    assert digests[0] == digests[1]


@pytest.fixture(autouse=True)
def _quiet_tmp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
