"""What `pybuild build` writes besides the store: -o outputs, --iidfile, -q, --progress, --label; and podman interop.

The outputs are read back with independent readers (tarfile, json, podman),
never with pybuild's own loader, and the image trees are compared with
`flatten`, the image's layers applied in order.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import textwrap
from pathlib import Path

import pytest

from builder.api import build
from builder.outputs import Output
from tests.build.conftest import describe_tree, flatten, pybuild, write_tree
from tests.support import FIXTURES, external_tool

RECIPE = """
    FROM busybox
    COPY app/ /app/
    RUN echo hello-from-run && echo to-stderr >&2 && ln -s /app/tool /usr/bin/tool && rm /bin/true
    CMD ["/app/tool"]
"""
FILES = {"app/tool": "#!/bin/sh\necho tool ran\n", "app/data/a.txt": "a\n"}


def describe_tar(path: Path) -> dict[str, tuple[object, ...]]:
    """The same description of a filesystem tar's members, read with tarfile."""
    tree: dict[str, tuple[object, ...]] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            name = member.name.removeprefix("./").rstrip("/")
            if name in ("", "."):
                continue
            if member.issym():
                what: tuple[object, ...] = ("symlink", member.linkname)
            elif member.isfile():
                what = ("file", hashlib.sha256(tar.extractfile(member).read()).hexdigest())  # type: ignore[union-attr]
            elif member.isdir():
                what = ("dir",)
            else:
                what = ("other", member.type)
            tree[name] = (what, member.mode & 0o7777, member.uid, member.gid)
    return tree


@pytest.fixture
def app_context(context_dir: Path) -> Path:
    write_tree(context_dir, {"Recipefile": textwrap.dedent(RECIPE).lstrip(), **FILES})
    os.chmod(context_dir / "app" / "tool", 0o755)
    return context_dir


# --------------------------------------------------------------------------- -o


def test_every_output_type_from_one_build(fresh_store, app_context: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    pybuild(
        "build", "--progress", "quiet", "-t", "outputs:1", "--iidfile", str(out / "iid"),
        "-o", f"type=oci,dest={out / 'oci.tar'}",
        "-o", f"type=docker,dest={out / 'docker.tar'}",
        "-o", f"type=local,dest={out / 'local'}",
        "-o", f"type=tar,dest={out / 'rootfs.tar'}",
        str(app_context), store=fresh_store,
    )  # fmt: skip
    result = build(app_context, store=fresh_store, tags=["outputs:1"])  # all cached: the same image
    assert result.up_to_date
    image_id = (out / "iid").read_text()
    assert image_id == result.image_id and re.fullmatch(r"sha256:[0-9a-f]{64}", image_id)
    expected = describe_tree(flatten(fresh_store, result, tmp_path / "flat"))
    assert "usr/bin/tool" in expected and "bin/true" not in expected

    # type=oci: an OCI image layout whose index names the tagged manifest
    with tarfile.open(out / "oci.tar") as tar:
        names = set(tar.getnames())
        assert {"oci-layout", "index.json"} <= names
        assert json.load(tar.extractfile("oci-layout")) == {"imageLayoutVersion": "1.0.0"}  # type: ignore[arg-type]
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        (entry,) = index["manifests"]
        assert entry["digest"] == str(result.digest)
        assert entry["annotations"]["org.opencontainers.image.ref.name"].endswith("outputs:1")
        manifest = json.load(tar.extractfile(f"blobs/sha256/{entry['digest'][7:]}"))  # type: ignore[arg-type]
        assert manifest["config"]["digest"] == image_id
        for blob in [manifest["config"], *manifest["layers"]]:
            data = tar.extractfile(f"blobs/sha256/{blob['digest'][7:]}").read()  # type: ignore[union-attr]
            assert "sha256:" + hashlib.sha256(data).hexdigest() == blob["digest"] and len(data) == blob["size"]

    # type=docker: `docker load`'s manifest.json, the config named by the image id
    with tarfile.open(out / "docker.tar") as tar:
        (entry,) = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        assert entry["Config"].removeprefix("blobs/sha256/").removesuffix(".json") == image_id[7:]
        assert entry["RepoTags"] in (["outputs:1"], ["docker.io/library/outputs:1"])
        assert len(entry["Layers"]) == len(result.config.diff_ids) == 3
        for layer, diff_id in zip(entry["Layers"], result.config.diff_ids, strict=True):
            data = tar.extractfile(layer).read()  # type: ignore[union-attr]
            assert "sha256:" + hashlib.sha256(data).hexdigest() == str(diff_id)  # uncompressed, as docker save has them

    # type=local and type=tar: the final filesystem
    assert describe_tree(out / "local") == expected
    assert describe_tar(out / "rootfs.tar") == expected


def test_output_through_the_api(fresh_store, app_context: Path, tmp_path: Path) -> None:
    dest = tmp_path / "empty-dir"
    dest.mkdir()  # an existing empty directory is fine
    result = build(app_context, store=fresh_store, outputs=[Output("local", str(dest)), Output("tar", str(tmp_path / "fs.tar"))])
    expected = describe_tree(flatten(fresh_store, result, tmp_path / "flat"))
    assert describe_tree(dest) == expected
    assert describe_tar(tmp_path / "fs.tar") == expected


def test_a_bare_output_is_a_local_directory_and_a_full_one_is_refused(fresh_store, app_context: Path, tmp_path: Path) -> None:
    pybuild("build", "--progress", "quiet", "-o", str(tmp_path / "bare"), str(app_context), store=fresh_store)
    assert (tmp_path / "bare" / "app" / "tool").read_text() == FILES["app/tool"]
    out = pybuild("build", "--progress", "quiet", "-o", f"type=local,dest={tmp_path / 'bare'}", str(app_context), store=fresh_store, check=False)
    assert out.returncode == 1
    assert f"--output type=local,dest={tmp_path / 'bare'}: exists and is not an empty directory" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_local_output_directory_is_made_with_its_parents(fresh_store, app_context: Path, tmp_path: Path) -> None:
    # BuildKit's local exporter makes the destination (MkdirAll), as `docker build -o` users rely on.
    dest = tmp_path / "new" / "nested" / "dir"
    out = pybuild("build", "--progress", "quiet", "-o", f"type=local,dest={dest}", str(app_context), store=fresh_store, check=False)
    assert out.returncode == 0, out.stderr
    assert (dest / "app" / "tool").read_text() == FILES["app/tool"]


def test_an_unwritable_output_names_the_destination(fresh_store, app_context: Path, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory\n")
    for kind in ("tar", "oci", "local"):
        dest = tmp_path / "a-file" / f"out-{kind}"
        out = pybuild("build", "--progress", "quiet", "-o", f"type={kind},dest={dest}", str(app_context), store=fresh_store, check=False)
        assert out.returncode != 0, kind
        assert str(dest) in out.stderr, out.stderr  # the path the user gave, not a temporary file beside it
        assert ".pybuild-" not in out.stderr and ".tmp" not in out.stderr, out.stderr
        assert "Traceback" not in out.stderr


def test_malformed_outputs_are_refused(fresh_store, app_context: Path, tmp_path: Path) -> None:
    cases = {
        "type=zip,dest=x": "type 'zip' is not one of oci, docker, local, tar",
        "type=oci": "dest=PATH is required",
        "type=oci,dest=x,compression=zstd": "unknown field 'compression'",
    }
    for value, message in cases.items():
        out = pybuild("build", "-o", value, str(app_context), store=fresh_store, check=False)
        assert out.returncode != 0, value
        assert message in out.stderr, (value, out.stderr)
        assert "Traceback" not in out.stderr


# --------------------------------------------------------------------------- what the command prints


def test_quiet_prints_only_the_image_id(fresh_store, app_context: Path, tmp_path: Path) -> None:
    out = pybuild("build", "-q", "--iidfile", str(tmp_path / "iid"), str(app_context), store=fresh_store)
    assert out.stdout == (tmp_path / "iid").read_text() + "\n"
    assert re.fullmatch(r"sha256:[0-9a-f]{64}\n", out.stdout)
    assert "hello-from-run" not in out.stdout + out.stderr
    again = pybuild("build", "-q", str(app_context), store=fresh_store)
    assert again.stdout == out.stdout
    (app_context / "Recipefile").write_text("FROM busybox\nRUN exit 7\n")
    failed = pybuild("build", "-q", str(app_context), store=fresh_store, check=False)
    assert failed.returncode == 1 and failed.stdout == ""
    assert f"{app_context}/Recipefile:2:1: error: RUN failed: exit status 7" in failed.stderr


def test_progress_json_is_one_event_per_line(fresh_store, app_context: Path, tmp_path: Path) -> None:
    out = pybuild("build", "--progress", "json", "--iidfile", str(tmp_path / "iid"), str(app_context), store=fresh_store)
    assert out.stdout == ""
    events = [json.loads(line) for line in out.stderr.splitlines()]  # every line is JSON
    kinds = [e["event"] for e in events]
    assert kinds[0] == "build_started" and kinds[-1] == "build_finished"
    assert {"step_started", "step_finished", "step_output"} <= set(kinds)
    run_text = next(e["text"] for e in events if e["event"] == "step_started" and e["text"].startswith("RUN"))
    output = {e["stream"]: e["data"] for e in events if e["event"] == "step_output" and e["text"] == run_text}
    assert "hello-from-run" in output["stdout"] and "to-stderr" in output["stderr"]
    finished = [e for e in events if e["event"] == "step_finished"]
    run = next(e for e in finished if e["text"] == run_text)
    assert run["layer_step"] and not run["cached"] and run["cpu_time"] is not None and run["max_rss"] > 0
    assert run["layer"].startswith("sha256:") and run["size"] > 0
    assert events[-1]["image_id"] == (tmp_path / "iid").read_text() and events[-1]["up_to_date"] is False
    again = pybuild("build", "--progress", "json", str(app_context), store=fresh_store)
    events = [json.loads(line) for line in again.stderr.splitlines()]
    assert "step_started" not in [e["event"] for e in events]
    assert all(e["cached"] for e in events if e["event"] == "step_finished" and e["layer_step"])
    assert events[-1]["up_to_date"] is True


def test_progress_plain_names_steps_marks_cached_ones_and_costs(fresh_store, app_context: Path) -> None:
    out = pybuild("build", "--progress", "plain", str(app_context), store=fresh_store)
    lines = out.stderr.splitlines()
    assert lines[0].startswith("building 4 steps in 1 stage(s)")
    assert "#2 [0 2/4] COPY app/ /app/" in lines
    assert "#3 [0 3/4] RUN echo hello-from-run && echo to-stderr >&2 && ln -s /app/tool /usr/bin/tool && rm /bin/true" in lines
    assert "#3 hello-from-run" in lines and "#3 to-stderr" in lines
    done = next(line for line in lines if line.startswith("#3 DONE "))
    assert re.fullmatch(r"#3 DONE \d+\.\ds \(cpu \d+\.\d\ds, peak memory [\d.]+ (B|KiB|MiB|GiB), layer [0-9a-f]{12} .+\)", done), done
    assert re.fullmatch(r"image sha256:[0-9a-f]{64} \(id sha256:[0-9a-f]{64}\): built in \d+\.\ds", lines[-1])
    again = pybuild("build", "--progress", "plain", str(app_context), store=fresh_store).stderr.splitlines()
    assert "#2 CACHED" in again and "#3 CACHED" in again
    assert not any(" DONE " in line for line in again) and "#3 hello-from-run" not in again
    assert again[-1].endswith(": up to date")


def test_labels_from_the_command_line_win_over_the_recipe(fresh_store, context_dir: Path) -> None:
    (context_dir / "Recipefile").write_text('FROM busybox\nLABEL a=recipe b="from recipe"\n')
    pybuild("build", "-q", "-t", "labelled", "--label", "a=cli", "--label", "c=with spaces=and equals", str(context_dir), store=fresh_store)
    labels = json.loads(pybuild("inspect", "--json", "labelled", store=fresh_store).stdout)["config"]["config"]["Labels"]
    assert labels == {"a": "cli", "b": "from recipe", "c": "with spaces=and equals"}
    bad = pybuild("build", "--label", "novalue", str(context_dir), store=fresh_store, check=False)
    assert bad.returncode == 2 and "--label novalue: expected KEY=VALUE" in bad.stderr


# --------------------------------------------------------------------------- interoperability


def test_podman_runs_the_saved_image_as_pybuild_does(fresh_store, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    podman = external_tool("podman")
    external_tool("runc")
    context = tmp_path / "demo"
    shutil.copytree(FIXTURES / "demo", context)
    pybuild("build", "-q", "-t", "demo:interop", str(context), store=fresh_store)
    ours = pybuild("run", "demo:interop", store=fresh_store)
    assert ours.stdout.startswith("Hello, world!")
    archive = tmp_path / "demo.tar"
    pybuild("save", "demo:interop", "-o", str(archive), "--format", "docker", store=fresh_store)
    image_id = json.loads(pybuild("inspect", "--json", "demo:interop", store=fresh_store).stdout)["id"]
    # A private podman: its own storage, run and temporary directories, nothing of the host's.
    # Its run root must be a short path (podman refuses one over 50 characters).
    runroot = Path(tempfile.mkdtemp(prefix="pybuild-podman-", dir="/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(runroot, ignore_errors=True))
    private = [
        podman,
        "--root", str(tmp_path / "podman-root"),
        "--runroot", str(runroot),
        "--tmpdir", str(tmp_path / "podman-tmp"),
        "--storage-driver", "vfs",
        "--events-backend", "file",
        "--cgroup-manager", "cgroupfs",
    ]  # fmt: skip

    def run_podman(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*private, *args], capture_output=True, text=True, check=False, timeout=120)
        assert done.returncode == 0, done.stderr
        return done

    loaded = run_podman("load", "-i", str(archive))
    assert "demo:interop" in loaded.stdout
    assert run_podman("image", "inspect", "--format", "{{.Id}}", "demo:interop").stdout.strip() == image_id[7:]
    theirs = run_podman(
        "run", "--rm", "--runtime", "runc", "--network", "none",
        "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", "demo:interop",
    )  # fmt: skip
    assert theirs.stdout == ours.stdout
