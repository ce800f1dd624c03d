"""The store commands as users run them: output, exit codes, no tracebacks."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO


def pybuild(store: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "builder", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "PYBUILD_STORE": str(store)},
        timeout=120,
    )
    assert "Traceback" not in result.stderr, result.stderr
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def store(tmp_path: Path, busybox_rootfs: Path) -> Path:
    root = tmp_path / "store"
    pybuild(root, "import", str(busybox_rootfs), "busybox")
    return root


def test_images_inspect_history(store: Path) -> None:
    (row,) = json.loads(pybuild(store, "images", "--json").stdout)
    assert row["name"] == "docker.io/library/busybox:latest"
    assert {"name", "digest", "size", "created", "id"} <= set(row)
    table = pybuild(store, "images").stdout.splitlines()
    assert table[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    assert table[1].split()[:3] == ["busybox", "latest", row["id"][7:19]]
    info = json.loads(pybuild(store, "inspect", "--json", "busybox").stdout)
    assert info["digest"] == row["digest"]
    assert info["manifest"]["config"]["digest"] == row["id"]
    (layer,) = info["layers"]
    assert layer["diff_id"] == info["config"]["rootfs"]["diff_ids"][0]
    assert layer["digest"] == info["manifest"]["layers"][0]["digest"]
    assert json.loads(pybuild(store, "inspect", "--json", row["id"][7:13]).stdout)["digest"] == row["digest"]
    assert "pybuild import" in pybuild(store, "history", "busybox").stdout


def test_tag_rmi_prune_and_du(store: Path) -> None:
    pybuild(store, "tag", "busybox", "registry.example:5000/team/box:1.0")
    du = json.loads(pybuild(store, "du", "--json").stdout)
    assert du[0]["names"] == ["busybox:latest", "registry.example:5000/team/box:1.0"]
    assert du[0]["unique"] == du[0]["size"] > 0
    assert "Untagged: docker.io/library/busybox:latest" in pybuild(store, "rmi", "busybox").stdout
    assert "0 blobs" in pybuild(store, "prune").stdout  # still tagged as team/box
    pybuild(store, "rmi", "registry.example:5000/team/box:1.0")
    assert "would free" in pybuild(store, "prune", "--dry-run").stdout
    freed = pybuild(store, "prune").stdout
    assert freed.startswith("3 blobs")
    assert json.loads(pybuild(store, "images", "--json").stdout) == []


def test_save_load_round_trip(store: Path, tmp_path: Path) -> None:
    digest = json.loads(pybuild(store, "images", "--json").stdout)[0]["digest"]
    for fmt in ("oci", "docker"):
        archive = tmp_path / f"busybox-{fmt}.tar"
        pybuild(store, "save", "busybox", "-o", str(archive), "--format", fmt)
        other = tmp_path / f"other-{fmt}"
        assert "Loaded image: docker.io/library/busybox:latest" in pybuild(other, "load", "-i", str(archive)).stdout
        loaded = json.loads(pybuild(other, "images", "--json").stdout)[0]
        if fmt == "oci":
            assert loaded["digest"] == digest  # byte for byte
        assert "every image complete" in pybuild(other, "store", "verify").stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["inspect", "nosuch"], "pybuild: error: image docker.io/library/nosuch:latest: not found"),
        (["inspect", "Bad:Name"], "pybuild: error:"),
        (["tag", "busybox", "x@sha256:" + "0" * 64], "pybuild: error:"),
        (["load", "-i", "/nonexistent.tar"], "pybuild: error: No such file or directory: /nonexistent.tar"),
        (["save", "busybox", "--format", "oci-dir"], "pybuild save: error: --format oci-dir writes a directory"),
        (["save", "busybox", "-o", "/tmp/x.tar", "--format", "zip"], "pybuild save: error: unknown --format 'zip'"),
        (["store", "fix"], "pybuild store: error: unknown store action 'fix'"),
    ],
)
def test_errors_are_one_line(store: Path, args: list[str], message: str) -> None:
    result = pybuild(store, *args, check=False)
    assert result.returncode == 2
    assert any(line.startswith(message) for line in result.stderr.splitlines()), result.stderr


def test_corrupt_blob_is_reported_and_refused(store: Path) -> None:
    info = json.loads(pybuild(store, "inspect", "--json", "busybox").stdout)
    blob = store / "blobs" / "sha256" / info["layers"][0]["digest"][7:]
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 1
    blob.write_bytes(bytes(data))
    blob.chmod(0o444)
    verify = pybuild(store, "store", "verify", check=False)
    assert verify.returncode == 3
    assert info["layers"][0]["digest"] in verify.stdout
    saved = pybuild(store, "save", "busybox", "-o", str(store.parent / "out.tar"), check=False)
    assert saved.returncode == 3
    assert "does not match" in saved.stderr
    assert not (store.parent / "out.tar").exists()


def test_load_refuses_a_bad_archive_and_changes_nothing(store: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"not a tar at all" * 100)
    before = sorted(p.name for p in (store / "blobs" / "sha256").iterdir())
    result = pybuild(store, "load", "-i", str(bad), check=False)
    assert result.returncode == 2 and result.stderr.startswith("pybuild: error: ")
    assert len(result.stderr.splitlines()) == 1
    assert sorted(p.name for p in (store / "blobs" / "sha256").iterdir()) == before


def test_busybox_fixture_imports_itself_as_busybox_latest(tmp_path: Path, busybox_rootfs: Path) -> None:
    bin_dir = Path(sys.executable).parent  # where pip put the `pybuild` script of this environment
    assert (bin_dir / "pybuild").exists(), f"no pybuild script beside {sys.executable}: pip install -e ."
    store = tmp_path / "store"
    subprocess.run(
        [sys.executable, str(REPO / "fixtures" / "busybox-rootfs.py"), "--import", "busybox:latest", "--store", str(store)],
        check=True,
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"},
        timeout=120,
    )
    (row,) = json.loads(pybuild(store, "images", "--json").stdout)
    assert row["name"] == "docker.io/library/busybox:latest"
    layer = json.loads(pybuild(store, "inspect", "--json", "busybox").stdout)["layers"][0]
    assert layer["diff_id"] == "sha256:" + hashlib.sha256(busybox_rootfs.read_bytes()).hexdigest()


def _run(store: Path, *args: str, **options: object) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYBUILD_STORE": str(store)}
    return subprocess.run([sys.executable, "-m", "builder", *args], env=env, timeout=120, **options)  # type: ignore[call-overload,no-any-return]


def test_save_to_standard_output_and_load_from_standard_input(store: Path, tmp_path: Path) -> None:
    saved = _run(store, "save", "busybox", capture_output=True)
    assert saved.returncode == 0 and saved.stderr == b""
    with open(tmp_path / "file.tar", "wb") as f:
        assert _run(store, "save", "busybox", "-o", f.name).returncode == 0
    assert saved.stdout == (tmp_path / "file.tar").read_bytes()  # the same archive, byte for byte
    loaded = _run(tmp_path / "other", "load", input=saved.stdout, capture_output=True)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.decode() == "Loaded image: docker.io/library/busybox:latest\n"


def test_archives_are_not_written_to_or_read_from_a_terminal(store: Path) -> None:
    import pty

    leader, follower = pty.openpty()
    try:
        save = _run(store, "save", "busybox", stdout=follower, stderr=subprocess.PIPE)
        load = _run(store, "load", stdin=follower, capture_output=True)
    finally:
        os.close(leader)
        os.close(follower)
    assert save.returncode == 2 and b"refusing to write an archive to a terminal" in save.stderr
    assert load.returncode == 2 and b"no archive: use -i FILE or pipe one" in load.stderr
