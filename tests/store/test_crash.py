"""Crash safety: a writer SIGKILLed at random moments never leaves a bad blob at a final path.

A child process ingests blobs under a lease. It is SIGKILLed a random moment
after it begins an ingest, or kills itself at a fault point (PYBUILD_TEST_FAULT,
read only by the child script below: the store code has no fault hooks). After
each kill the blobs verify, only ingest leftovers remain, one GC removes them,
and fsck is clean.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

from store.descriptor import Descriptor, MediaType
from store.digest import Digest
from store.fsck import verify
from store.gc import collect
from store.local import LocalContentStore
from store.metadata import Metadata
from tests.support import REPO

if TYPE_CHECKING:
    from pathlib import Path

FAULT_ENV = "PYBUILD_TEST_FAULT"  # "<before|after>:<os function>:<nth call>"
FAULT_POINTS = [
    f"{when}:{call}" for when in ("before", "after") for call in ("write", "fchmod", "fsync", "link", "unlink")
]
RANDOM_TRIALS = 30
TIMEOUT = 30

CHILD = r"""
import os, random, signal, sys

fault = os.environ.get("PYBUILD_TEST_FAULT")
if fault:
    when, name, nth = fault.split(":")
    real, calls = getattr(os, name), [0]

    def faulty(*args, **kwargs):
        calls[0] += 1
        hit = calls[0] == int(nth)
        if hit and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        result = real(*args, **kwargs)
        if hit and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(os, name, faulty)

from store.errors import SizeMismatch
from store.local import LocalContentStore
from store.metadata import Metadata

root, seed = sys.argv[1], int(sys.argv[2])
rng = random.Random(seed)
content, metadata = LocalContentStore(root), Metadata(root)
lease = metadata.lease(ttl=3600)
print("ready", flush=True)
for _ in range(rng.randint(3, 6)):
    index = rng.randrange(POOL + 4)
    if index < POOL:  # shared across runs: often already in the store
        data = random.Random(index).randbytes(SIZES[index])
    else:  # new: its commit links a new final path
        data = rng.randbytes(rng.choice((10, 5000, 1 << 20, 5 << 20)))
    chunk = rng.choice((4096, 65536))
    print("begin", flush=True)
    with content.writer() as w:
        for start in range(0, len(data), chunk):
            w.write(data[start : start + chunk])
        action = rng.random()
        if action < 0.1:
            continue  # leaving the block aborts
        if action < 0.15:
            try:
                w.commit(size=len(data) + 1)
            except SizeMismatch:
                continue
        info = lease.commit(w, size=len(data))
    print("committed", info.digest, info.size, flush=True)
lease.release()
print("done", flush=True)
"""

# Three blobs big enough that a kill lands mid-write, and small ones (empty included).
SIZES = [6 << 20, 4 << 20, 3 << 20, 0, 1, 100, 4095, 4096, 65537, 200_000, 512, 30_000]
CHILD = f"POOL = {len(SIZES)}\nSIZES = {SIZES!r}\n" + CHILD


def _run_child(
    root: Path, seed: int, *, fault: str | None = None, kill_at: tuple[int, float] | None = None
) -> tuple[int, str]:
    """Run one writer; `kill_at=(k, delay)` SIGKILLs it `delay` seconds after it begins its k-th ingest."""
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    env["PYTHONPATH"] = str(REPO)
    if fault:
        env[FAULT_ENV] = fault
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(root), str(seed)], env=env, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    lines = []
    if kill_at is not None:
        begun = 0
        while begun < kill_at[0] and (line := child.stdout.readline()):
            lines.append(line)
            begun += line.startswith("begin")
        time.sleep(kill_at[1])
        child.send_signal(signal.SIGKILL)
    rest, _ = child.communicate(timeout=TIMEOUT)
    return child.returncode, "".join(lines) + rest


def _committed(output: str) -> set[Descriptor]:
    found = set()
    # Only whole lines: SIGKILL can land while the child writes one (seen once: "committed sha256:...").
    for line in output.splitlines(keepends=True):
        if line.startswith("committed ") and line.endswith("\n"):
            _, digest, size = line.split()
            found.add(Descriptor(MediaType.LAYER, Digest.parse(digest), int(size)))
    return found


def _assert_blobs_whole(root: Path) -> None:
    """An oracle independent of the store code: every final path holds exactly its digest's bytes."""
    for name in os.listdir(root / "blobs" / "sha256"):
        path = root / "blobs" / "sha256" / name
        assert path.is_file() and not path.is_symlink(), path
        assert hashlib.sha256(path.read_bytes()).hexdigest() == name, f"partial or corrupt blob at {path}"
        assert os.stat(path).st_mode & 0o777 == 0o444, path


def _assert_only_leftovers(root: Path) -> None:
    assert all(n.endswith(".partial") for n in os.listdir(root / "ingest")), os.listdir(root / "ingest")
    assert all(n.endswith((".lock", ".new")) for n in os.listdir(root / "leases"))
    allowed = {
        "blobs",
        "ingest",
        "leases",
        "gc.lock",
        "pybuild.db",
        "pybuild.db-wal",
        "pybuild.db-shm",
        "pybuild.db.lock",
    }
    assert set(os.listdir(root)) <= allowed, set(os.listdir(root)) - allowed


def _check_after_kill(root: Path, kept: set[Descriptor]) -> None:
    _assert_blobs_whole(root)
    _assert_only_leftovers(root)
    content = LocalContentStore(root)
    with Metadata(root) as metadata:
        report = collect(content, metadata, roots=kept, children=lambda d: ())
        assert os.listdir(root / "ingest") == [], "gc left ingest files behind"
        assert metadata.leases() == [] and os.listdir(root / "leases") == []
        assert not report.missing, f"acknowledged commits lost: {report.missing}"
    assert verify(content, roots=kept, children=lambda d: ()) == []
    assert {i.digest for i in content.walk()} == {d.digest for d in kept}


def test_sigkill_at_random_moments_and_fault_points(tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.mkdir(mode=0o700)
    rng = random.Random(20240601)
    status, output = _run_child(root, seed=0)  # a control run, never killed
    assert status == 0 and output.rstrip().endswith("done"), output
    kept = _committed(output)  # acknowledged commits: tagged, as far as this test is concerned
    _check_after_kill(root, kept)

    trials = [{"kill_at": (rng.randint(1, 3), rng.uniform(0, 0.015))} for _ in range(RANDOM_TRIALS)]
    trials += [{"fault": f"{point}:{rng.randint(1, 3)}"} for point in FAULT_POINTS]
    trials += [{"fault": f"{point}:1"} for point in FAULT_POINTS]
    killed = 0
    for seed, trial in enumerate(trials, start=1):
        status, output = _run_child(root, seed, **trial)  # type: ignore[arg-type]
        killed += status == -signal.SIGKILL
        assert status in (0, -signal.SIGKILL), (trial, status, output)
        kept |= _committed(output)
        try:
            _check_after_kill(root, kept)
        except AssertionError as exc:
            raise AssertionError(f"after trial {seed} {trial} (exit {status}): {exc}") from None
    assert len(trials) >= 50
    assert killed >= 0.7 * len(trials), f"only {killed} of {len(trials)} trials were killed mid-run"
