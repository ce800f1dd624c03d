"""The engine as a whole: parallel stages, Ctrl-C, and what a build leaves behind."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.build.conftest import PYBUILD, flatten
from tests.builder.conftest import processes_with
from tests.support import REPO

# Each stage waits for the other's marker in a shared cache mount: built one after the
# other, the first would wait in vain and fail; built in parallel, both go through.
PARALLEL = """
    FROM busybox AS left
    RUN --mount=type=cache,target=/meet,sharing=shared \\
        touch /meet/left && i=0; while [ ! -e /meet/right ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; \\
        test -e /meet/right && echo left > /left
    FROM busybox AS right
    RUN --mount=type=cache,target=/meet,sharing=shared \\
        touch /meet/right && i=0; while [ ! -e /meet/left ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; \\
        test -e /meet/left && echo right > /right
    FROM busybox
    COPY --from=left /left /left
    COPY --from=right /right /right
    """


def test_independent_stages_build_in_parallel(make_build, fresh_store, tmp_path: Path) -> None:
    result = make_build(PARALLEL)
    tree = flatten(fresh_store, result, tmp_path / "tree")
    assert (tree / "left").read_text() == "left\n" and (tree / "right").read_text() == "right\n"


def test_ctrl_c_stops_the_build_and_leaves_nothing(fresh_store, context_dir: Path) -> None:
    (context_dir / "Recipefile").write_text("FROM busybox\nRUN echo started && sleep 67\n")
    process = subprocess.Popen(
        [*PYBUILD, "--store", str(fresh_store.root), "build", "--progress", "plain", str(context_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        start_new_session=True,  # a terminal's Ctrl-C: SIGINT to the whole foreground group
    )
    try:
        deadline = time.monotonic() + 30
        seen = ""
        while "#2 started" not in seen and time.monotonic() < deadline:
            line = process.stderr.readline()  # type: ignore[union-attr]
            if not line:
                break
            seen += line
        assert "#2 started" in seen
        os.killpg(process.pid, signal.SIGINT)
        started = time.monotonic()
        _, err = process.communicate(timeout=20)
        assert time.monotonic() - started < 10
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    assert processes_with(b"sleep\x0067") == []  # the container was killed, not left to sleep
    from store.images import Store

    records = Store(fresh_store.root).metadata.snapshots()
    assert [r.key for r in records if r.kind != "committed"] == []  # the RUN's writable snapshot is gone


def test_a_failing_run_on_the_command_line(fresh_store, context_dir: Path) -> None:
    (context_dir / "Recipefile").write_text("FROM busybox\nRUN echo first line && echo the error >&2 && exit 42\n")
    done = subprocess.run(
        [*PYBUILD, "--store", str(fresh_store.root), "build", "--progress", "plain", str(context_dir)],
        capture_output=True, text=True, cwd=REPO, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    failure = next(i for i, line in enumerate(lines) if "error:" in line)
    assert lines[failure] == f"{context_dir}/Recipefile:2:1: error: RUN failed: exit status 42 (step #2 [0 2/2])"
    assert lines[failure + 1 : failure + 4] == ["  output (last 2 lines):", "    first line", "    the error"]
    assert lines[failure + 4].startswith("  full log: ")


def test_memory_limit_of_run_steps(make_build) -> None:
    from builder.errors import StepFailed

    with pytest.raises(StepFailed, match="killed: memory limit 64 MiB exceeded"):
        make_build("FROM busybox\nRUN tail /dev/zero\n", memory=64 << 20)


def test_git_sources_fail_loudly(make_build) -> None:
    from builder.errors import BuildError

    with pytest.raises(BuildError, match="ADD of a git repository: not supported yet"):
        make_build("FROM busybox\nADD https://example.invalid/repo.git /src\n")


def test_an_untagged_build_runs_by_its_id_and_lists_as_none(fresh_store, context_dir: Path) -> None:
    (context_dir / "Recipefile").write_text("FROM busybox\nRUN echo dangling > /d\nCMD [\"cat\", \"/d\"]\n")
    image_id = subprocess.run(
        [*PYBUILD, "--store", str(fresh_store.root), "build", "-q", str(context_dir)],
        capture_output=True, text=True, cwd=REPO, timeout=120, check=True,
    ).stdout.strip()  # fmt: skip
    assert image_id.startswith("sha256:")
    ran = subprocess.run([*PYBUILD, "--store", str(fresh_store.root), "run", image_id], capture_output=True, text=True,
                         cwd=REPO, timeout=120, check=True)  # fmt: skip
    assert ran.stdout == "dangling\n"
    listed = subprocess.run([*PYBUILD, "--store", str(fresh_store.root), "images"], capture_output=True, text=True,
                            cwd=REPO, timeout=60, check=True).stdout  # fmt: skip
    assert any(line.split()[:3] == ["<none>", "<none>", image_id[7:19]] for line in listed.splitlines())


def test_build_options_without_the_command_word(fresh_store, context_dir: Path) -> None:
    (context_dir / "Recipefile").write_text("FROM busybox\nRUN echo hi > /hi\n")
    for argv in (["-f", str(context_dir / "Recipefile"), "-q"], ["--no-cache", "-q"], ["--build-arg=X=1", "-q"]):
        done = subprocess.run([*PYBUILD, "--store", str(fresh_store.root), *argv, str(context_dir)], capture_output=True,
                              text=True, cwd=REPO, timeout=120, check=False)  # fmt: skip
        assert done.returncode == 0 and done.stdout.startswith("sha256:"), (argv, done.stderr)
