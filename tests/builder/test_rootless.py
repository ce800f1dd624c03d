"""The store and NamespaceSandbox as an unprivileged user that these tests create.

A module fixture adds a system user (`useradd --system`, removed with
`userdel -r` at the end), has that user import busybox into a store of its
own (fixtures/busybox-rootfs.py --import, as the user) and runs every Python
snippet below AS that user (`setpriv --reuid --regid --init-groups
--reset-env`: no capabilities, HOME from passwd, no XDG_RUNTIME_DIR, so the
sandbox keeps its state in /tmp/pybuild-<uid>/sandbox). The code under test
is this checkout (PYTHONPATH: the repository root, plus the site-packages of
the interpreter running pytest for zstandard).

What is checked as that user: overlays described with `userxattr`, a layer
with a whiteout and an opaque directory unpacked with user.overlay.* markers
and mounted (the deleted files are hidden), the single-id mapping and its
warning, a memory limit without a delegated cgroup (a warning, not an error),
and containers: root inside (`0 <uid> 1` in uid_map), PID 1, the hostname,
only `lo`, writes landing in the upper directory owned by the user, two-line
maps through newuidmap/newgidmap once /etc/subuid and /etc/subgid name the
user (restored after), `-u 1000`, and `python -m builder run`.

Needs root to create the user; skips otherwise. Skips when useradd, userdel
or setpriv (newuidmap/newgidmap for the subordinate-id test) are missing,
except under CI=true, where that fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import site
import stat
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("builder", "store", "grammar", "fixtures")
SUBORDINATE = (200000, 65536)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the tests create an unprivileged user")


class SandboxSetupFailed(Exception):
    """The sandbox, run as the user, could not set the container up (SandboxError)."""


class SubordinateRangeIgnored(Exception):
    """/etc/subuid and /etc/subgid name the user, yet the sandbox does not use the ranges."""


def _tool_or_skip(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        reason = f"{', '.join(missing)} not found (apt-get install passwd util-linux uidmap)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (required under CI=true)")
        pytest.skip(reason)


# --------------------------------------------------------------------------- the user


@dataclass
class User:
    name: str
    uid: int
    gid: int
    home: Path
    store: Path
    python: str
    pythonpath: str
    bin: Path

    def run(self, argv: list[str], *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """`argv` as this user: no capabilities, a fresh environment, cwd = home."""
        env = [f"PATH={self.bin}:/usr/local/bin:/usr/bin:/bin", f"PYTHONPATH={self.pythonpath}"]
        return subprocess.run(
            ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups", "--reset-env", "env", *env, *argv],
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def python_json(self, script: str, *args: str) -> dict:
        """Run a Python snippet as this user; its last line of output is a JSON object."""
        done = self.run([self.python, "-c", textwrap.dedent(script), *args])
        assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
        return json.loads(done.stdout.strip().splitlines()[-1])


def _as_user(uid: int, gid: int, argv: list[str], env: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--init-groups", "--reset-env", "env", *env, *argv],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _site_dirs() -> list[str]:
    dirs = [*site.getsitepackages(), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    return list(dict.fromkeys(d for d in dirs if os.path.isdir(d)))


def _python_for(uid: int, gid: int, scratch: Path) -> tuple[str, str]:
    """An interpreter and PYTHONPATH with which the user imports this checkout (and zstandard).

    The interpreter running pytest may live where the user cannot reach it
    (pyenv under /root), and the checkout too: then the system python3 of the
    same version, and a world-readable copy of the packages.
    """
    candidates = [sys.executable, *(p for p in ("/usr/bin/python3", shutil.which("python3")) if p)]
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    probe = ["-c", "import builder.namespace_sandbox, store.images, store.checkout, zstandard"]
    tried = []
    for layout in ("checkout", "copy"):
        if layout == "checkout":
            path = [str(REPO), *_site_dirs()]
        else:
            copy = scratch / "src"
            if not copy.exists():
                copy.mkdir(mode=0o755)
                for package in PACKAGES:
                    shutil.copytree(REPO / package, copy / package, ignore=shutil.ignore_patterns("__pycache__"))
                import zstandard

                shutil.copytree(Path(zstandard.__file__).parent, copy / "zstandard")
                for dirpath, dirnames, filenames in os.walk(copy):
                    for name in dirnames + filenames:
                        os.chmod(os.path.join(dirpath, name), 0o755 if name in dirnames else 0o644)
            path = [str(copy)]
        for python in dict.fromkeys(candidates):
            done = _as_user(uid, gid, [python, "-c", f"import sys; assert sys.version.startswith('{version}.')"], [])
            if done.returncode != 0:
                tried.append(f"{python}: {done.stderr.strip()[-200:]}")
                continue
            done = _as_user(uid, gid, [python, *probe], [f"PYTHONPATH={':'.join(path)}"])
            if done.returncode == 0:
                return python, ":".join(path)
            tried.append(f"{python} with {layout}: {done.stderr.strip()[-300:]}")
    pytest.fail("the unprivileged user cannot import pybuild with any interpreter:\n" + "\n".join(tried))


def _kill_processes_of(uid: int) -> None:
    """SIGKILL what is left running as `uid`: only processes these tests started can be (a fresh user)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                uids = next(line for line in f if line.startswith("Uid:")).split()[1:]
        except (OSError, StopIteration):
            continue
        if str(uid) in uids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry), signal.SIGKILL)


@pytest.fixture(scope="module")
def user(busybox_rootfs: Path) -> User:
    """A fresh system user with busybox imported into its own store (see the module docstring)."""
    _tool_or_skip("useradd", "userdel", "setpriv")
    name = f"pybuild-test-{secrets.token_hex(4)}"
    subprocess.run(["useradd", "--system", "--create-home", "--shell", "/bin/sh", name], check=True, timeout=60)
    scratch = Path(tempfile.mkdtemp(prefix="pybuild-test-rootless-"))
    uid = -1
    try:
        entry = pwd.getpwnam(name)
        uid, gid, home = entry.pw_uid, entry.pw_gid, Path(entry.pw_dir)
        os.chmod(scratch, 0o755)
        python, pythonpath = _python_for(uid, gid, scratch)
        bin_dir = scratch / "bin"  # `pybuild` for fixtures/busybox-rootfs.py --import
        bin_dir.mkdir(mode=0o755)
        (bin_dir / "pybuild").write_text(f'#!/bin/sh\nexec {python} -m builder "$@"\n')
        os.chmod(bin_dir / "pybuild", 0o755)
        fixtures = Path(pythonpath.split(":")[0]) / "fixtures"
        who = User(name, uid, gid, home, home / "store", python, pythonpath, bin_dir)
        done = who.run([python, str(fixtures / "busybox-rootfs.py"), "--import", "busybox", "--store", str(who.store)])
        assert done.returncode == 0, f"busybox import as {name}: {done.stdout}{done.stderr}"
        yield who
    finally:
        if uid >= 0:
            _kill_processes_of(uid)
            shutil.rmtree(f"/tmp/pybuild-{uid}", ignore_errors=True)
        subprocess.run(["userdel", "-r", name], capture_output=True, timeout=60, check=False)
        shutil.rmtree(scratch, ignore_errors=True)
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            pytest.fail(f"userdel -r {name} left the user behind")


@pytest.fixture
def subordinate_ranges(user: User) -> tuple[int, int]:
    """/etc/subuid and /etc/subgid give the user 200000:65536; both files are restored after."""
    _tool_or_skip("newuidmap", "newgidmap")
    saved, modes = {}, {}
    for path in ("/etc/subuid", "/etc/subgid"):
        saved[path] = Path(path).read_bytes() if os.path.exists(path) else None
        modes[path] = stat.S_IMODE(os.stat(path).st_mode) if os.path.exists(path) else 0o644
    try:
        for path, data in saved.items():
            with open(path, "a") as f:
                separator = "\n" if data and not data.endswith(b"\n") else ""
                f.write(f"{separator}{user.name}:{SUBORDINATE[0]}:{SUBORDINATE[1]}\n")
        yield SUBORDINATE
    finally:
        for path, data in saved.items():
            if data is None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            else:
                Path(path).write_bytes(data)
                os.chmod(path, modes[path])


# --------------------------------------------------------------------------- running containers as the user

RUN = """
    import json, os, stat, sys
    from builder.errors import SandboxError
    from builder.namespace_sandbox import NamespaceSandbox, subordinate_ids_available
    from builder.sandbox import ExecRequest
    from store.images import Store

    spec = json.loads(sys.argv[1])
    store = Store(spec["store"])
    out = {"available": subordinate_ids_available()}
    rootfs = store.checkout(spec.get("image", "busybox"))
    out["mounts"] = [[m.type, m.source, list(m.options)] for m in rootfs.mounts]
    out["runs"] = []
    try:
        with NamespaceSandbox() as sandbox:
            out["state_root"] = str(sandbox.state_root)
            out["sandbox_warnings"] = list(sandbox.warnings)
            for run in spec["runs"]:
                limits = None
                if run.get("memory"):
                    from builder.cgroups import Limits
                    limits = Limits(memory=run["memory"])
                chunks = {1: [], 2: []}
                result = sandbox.run(
                    ExecRequest(argv=tuple(run["argv"]), rootfs=rootfs.mounts, user=run.get("user", ""),
                                hostname=run.get("hostname", "pybuild"), limits=limits),
                    on_output=lambda fd, data: chunks[fd].append(data),
                )
                out["runs"].append({
                    "status": result.status, "error": result.error, "warnings": list(result.warnings),
                    "stdout": b"".join(chunks[1]).decode(), "stderr": b"".join(chunks[2]).decode(),
                })
    except SandboxError as exc:
        out["sandbox_error"] = str(exc)
    upper = rootfs.upper_dir
    out["upper"] = {
        os.path.relpath(os.path.join(d, n), upper): [os.lstat(os.path.join(d, n)).st_uid,
                                                    stat.S_IFMT(os.lstat(os.path.join(d, n)).st_mode)]
        for d, dirs, files in os.walk(upper) for n in dirs + files
    }
    rootfs.remove()
    print(json.dumps(out))
"""


def sandbox_runs(user: User, *runs: dict, image: str = "busybox") -> dict:
    """Check `image` out as the user and run each of `runs` (argv, user, hostname, memory) in one sandbox."""
    out = user.python_json(RUN, json.dumps({"store": str(user.store), "image": image, "runs": list(runs)}))
    if "sandbox_error" in out:
        raise SandboxSetupFailed(out["sandbox_error"])
    return out


def lines(text: str) -> list[list[str]]:
    return [line.split() for line in text.strip().splitlines()]


# --------------------------------------------------------------------------- the store as the user


def test_the_user_imports_busybox_into_a_store_of_its_own(user: User) -> None:
    st = user.store.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (user.uid, user.gid, 0o700)
    index = json.loads((user.store / "index.json").read_text())
    names = [m.get("annotations", {}).get("io.containerd.image.name") for m in index["manifests"]]
    names += [m.get("annotations", {}).get("org.opencontainers.image.ref.name") for m in index["manifests"]]
    assert "docker.io/library/busybox:latest" in names, index
    blobs = list((user.store / "blobs" / "sha256").iterdir())
    assert len(blobs) == 3  # layer, config, manifest
    assert {b.stat().st_uid for b in blobs} == {user.uid}


def test_checkout_as_the_user_describes_userxattr_overlays(user: User) -> None:
    out = user.python_json(
        """
        import json, os, sys
        from store.image import chain_id
        from store.images import Store
        store = Store(sys.argv[1])
        image = store.image("busybox")
        co = store.checkout(image)
        chain = str(chain_id(list(image.config.diff_ids)))
        committed = store.snapshots.upper_dir(chain)
        print(json.dumps({
            "options": list(co.mounts[0].options), "type": co.mounts[0].type, "parent": co.parent, "chain": chain,
            "committed_uid": os.stat(committed).st_uid, "busybox": os.path.isfile(committed / "bin" / "busybox"),
            "upper_uid": os.stat(co.upper_dir).st_uid,
        }))
        co.remove()
        """,
        str(user.store),
    )
    assert out["type"] == "overlay" and out["parent"] == out["chain"]
    assert "userxattr" in out["options"]
    assert {"metacopy=off", "index=off"} <= set(out["options"])
    assert "redirect_dir=off" not in out["options"]  # the kernel refuses it beside userxattr
    assert out["busybox"] and out["committed_uid"] == out["upper_uid"] == user.uid


def test_single_id_mapping_comes_with_a_warning(user: User) -> None:
    out = user.python_json(
        """
        import json
        from builder.namespace_sandbox import NamespaceSandbox, subordinate_ids_available
        with NamespaceSandbox() as sandbox:
            print(json.dumps({"available": subordinate_ids_available(), "warnings": list(sandbox.warnings),
                              "state_root": str(sandbox.state_root), "rootless": sandbox.rootless}))
        """
    )
    assert out["rootless"] is True and out["available"] is False
    assert out["state_root"] == f"/tmp/pybuild-{user.uid}/sandbox"
    assert len(out["warnings"]) == 1
    assert "/etc/subuid" in out["warnings"][0] and "single id" in out["warnings"][0]


def test_a_memory_limit_without_a_delegated_cgroup_is_a_warning(user: User) -> None:
    out = user.python_json(
        """
        import json
        from builder.cgroups import Cgroup, Limits
        cgroup = Cgroup.create("pybuild-rootless-test", Limits(memory=64 << 20))
        try:
            print(json.dumps({"warnings": list(cgroup.warnings), "paths": [str(p) for p in cgroup.paths.values()]}))
        finally:
            cgroup.destroy()
        """
    )
    assert out["paths"] == []
    assert any(w.startswith("memory limit not applied:") and "running without it" in w for w in out["warnings"])


# --------------------------------------------------------------------------- whiteouts, unprivileged


@pytest.fixture(scope="module")
def whiteout_image(user: User, busybox_rootfs: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """`whiteouts`: busybox, then data/{keep,gone} and opaque/{old1,old2}, then a layer deleting data/gone
    and making opaque/ opaque with opaque/new. Built as root with the store API; the store is chowned back."""
    from store.content import write_blob
    from store.descriptor import MediaType
    from store.image import (
        HistoryEntry,
        ImageConfig,
        Manifest,
        canonical_json,
        host_platform,
    )
    from store.images import Store
    from store.layer import write_layer

    scratch = tmp_path_factory.mktemp("whiteout-layers")
    first, second = scratch / "first", scratch / "second"
    for rel, text in {"data/keep": "keep\n", "data/gone": "gone\n", "opaque/old1": "1\n", "opaque/old2": "2\n"}.items():
        (first / rel).parent.mkdir(parents=True, exist_ok=True)
        (first / rel).write_text(text)
    (second / "data").mkdir(parents=True)
    os.mknod(second / "data" / "gone", stat.S_IFCHR | 0o600, os.makedev(0, 0))  # an upper-dir whiteout
    (second / "opaque").mkdir()
    os.setxattr(second / "opaque", "trusted.overlay.opaque", b"y")
    (second / "opaque" / "new").write_text("new\n")

    store = Store(user.store)
    base = store.image("busybox")
    layers = [write_layer(first, store.content, source_date_epoch=0),
              write_layer(second, store.content, source_date_epoch=0, overlay_upper=True)]  # fmt: skip
    architecture, variant = host_platform()
    config = ImageConfig(
        architecture=architecture,
        variant=variant,
        os="linux",
        diff_ids=(*base.config.diff_ids, *(layer.diff_id for layer in layers)),
        created="1970-01-01T00:00:00Z",
        history=(HistoryEntry(created_by="import"), HistoryEntry(created_by="files"), HistoryEntry(created_by="rm")),
    )
    config_blob = write_blob(store.content, canonical_json(config), MediaType.CONFIG)
    manifest = Manifest(config=config_blob, layers=(*base.manifest.layers, *(layer.descriptor for layer in layers)))
    store.tags.set("whiteouts", write_blob(store.content, canonical_json(manifest), MediaType.MANIFEST))
    for dirpath, dirnames, filenames in os.walk(user.store):
        for entry in (dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)):
            os.lchown(entry, user.uid, user.gid)
    return "whiteouts"


CHECKOUT_AND_LOOK = """
    import json, os, stat, sys
    from store.images import Store
    store = Store(sys.argv[1])
    image = store.image(sys.argv[2])
    co = store.checkout(image)
    top = store.snapshots.upper_dir(co.parent)
    below = store.snapshots.upper_dir(store.snapshots.stat(co.parent).parent)
    gone = os.lstat(top / "data" / "gone")
    print(json.dumps({
        "gone_is_whiteout": stat.S_ISCHR(gone.st_mode) and gone.st_rdev == 0,
        "opaque_xattrs": {n: os.getxattr(top / "opaque", n).decode() for n in os.listxattr(top / "opaque")},
        "top": sorted(os.path.relpath(os.path.join(d, n), top) for d, ds, fs in os.walk(top) for n in ds + fs),
        "below_gone": (below / "data" / "gone").read_text(),
        "key": co.key, "mounts": [[m.type, m.source, list(m.options)] for m in co.mounts],
    }))
"""


def test_a_whiteout_layer_unpacks_unprivileged_and_hides_in_the_merged_view(user: User, whiteout_image: str) -> None:
    out = user.python_json(CHECKOUT_AND_LOOK, str(user.store), whiteout_image)
    assert out["gone_is_whiteout"]
    assert out["opaque_xattrs"] == {"user.overlay.opaque": "y"}  # user.*: what userxattr mounts read
    assert out["top"] == ["data", "data/gone", "opaque", "opaque/new"]
    assert out["below_gone"] == "gone\n"  # the layer below keeps its file; the mount hides it
    [[kind, source, options]] = out["mounts"]
    assert kind == "overlay" and "userxattr" in options
    target = user.home / "merged"
    target.mkdir(exist_ok=True)
    os.chown(target, user.uid, user.gid)
    script = (
        f"mount -t {kind} -o {','.join(options)} {source} {target} && cd {target} && "
        "ls -A data opaque && echo new > data/added && rm opaque/new"
    )
    try:
        done = user.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-ec", script])
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["data:", "keep", "opaque:", "new"]
        upper = user.store / "snapshots"
        writes = [p for p in upper.glob("*/fs/data/added")]
        assert len(writes) == 1 and writes[0].stat().st_uid == user.uid
        removed = writes[0].parent.parent / "opaque" / "new"
        assert stat.S_ISCHR(os.lstat(removed).st_mode)  # an unprivileged overlay's whiteout: 0:0 too
    finally:
        user.python_json(
            """
            import json, sys
            from store.images import Store
            Store(sys.argv[1]).snapshots.remove(sys.argv[2])
            print("{}")
            """,
            str(user.store),
            out["key"],
        )
        target.rmdir()


def test_the_merged_view_in_a_rootless_sandbox_hides_deleted_files(user: User, whiteout_image: str) -> None:
    out = sandbox_runs(user, {"argv": ["ls", "-A", "/data", "/opaque"]}, image=whiteout_image)
    [run] = out["runs"]
    assert run["status"] == 0, run
    assert run["stdout"].split() == ["/data:", "keep", "/opaque:", "new"]


# --------------------------------------------------------------------------- containers as the user


def test_root_inside_is_the_user_outside_with_a_single_id(user: User) -> None:
    out = sandbox_runs(user, {"argv": ["sh", "-c", "id -u; id -g; cat /proc/self/uid_map /proc/self/gid_map"]})
    [run] = out["runs"]
    assert run["status"] == 0, run
    assert lines(run["stdout"]) == [["0"], ["0"], ["0", str(user.uid), "1"], ["0", str(user.gid), "1"]]
    assert any("/etc/subuid" in w for w in run["warnings"]), run["warnings"]


def test_pid_1_hostname_and_only_loopback(user: User) -> None:
    script = "ps -o pid,args; echo --; hostname; echo --; tail -n +3 /proc/net/dev | cut -d: -f1"
    out = sandbox_runs(user, {"argv": ["sh", "-c", script], "hostname": "rootless-box"})
    [run] = out["runs"]
    assert run["status"] == 0, run
    ps, hostname, interfaces = run["stdout"].split("--\n")
    processes = lines(ps)[1:]
    assert processes[0][:2] == ["1", "sh"], ps
    assert all(p[0] != "1" for p in processes[1:])
    assert hostname.strip() == "rootless-box"
    assert interfaces.split() == ["lo"]


def test_writes_land_in_the_upper_directory_owned_by_the_user(user: User) -> None:
    out = sandbox_runs(user, {"argv": ["sh", "-c", "echo hi > /written; mkdir -p /made/deep; rm /bin/true"]})
    [run] = out["runs"]
    assert run["status"] == 0, run
    upper = out["upper"]
    assert upper["written"] == [user.uid, stat.S_IFREG]
    assert upper["made/deep"] == [user.uid, stat.S_IFDIR]
    assert upper["bin/true"][1] == stat.S_IFCHR  # the whiteout of a deleted lower file
    assert not {"proc", "dev", "sys", "etc/hosts"} & set(upper)  # mount stubs never reach the layer


def test_memory_limit_as_the_user_runs_with_a_warning(user: User) -> None:
    out = sandbox_runs(user, {"argv": ["true"], "memory": 64 << 20})
    [run] = out["runs"]
    assert run["status"] == 0, run
    assert any(w.startswith("memory limit not applied:") for w in run["warnings"]), run["warnings"]


def test_subordinate_ranges_are_found_for_the_user(
    user: User, subordinate_ranges: tuple[int, int], request: pytest.FixtureRequest
) -> None:
    out = user.python_json(
        """
        import json
        from builder.namespace_sandbox import NamespaceSandbox, subordinate_ids_available
        with NamespaceSandbox() as sandbox:
            print(json.dumps({"available": subordinate_ids_available(), "warnings": list(sandbox.warnings)}))
        """
    )
    assert out == {"available": True, "warnings": []}


def test_subordinate_ranges_map_through_newuidmap(user: User, subordinate_ranges: tuple[int, int]) -> None:
    start, count = subordinate_ranges
    out = user.python_json(RUN, json.dumps({"store": str(user.store), "runs": [
        {"argv": ["sh", "-c", "id -u; cat /proc/self/uid_map /proc/self/gid_map"]},
        {"argv": ["sh", "-c", "id -u; id -g; touch /tmp/by-1000"], "user": "1000"},
    ]}))  # fmt: skip
    if not out["available"]:
        raise SubordinateRangeIgnored(f"uid {user.uid}, gid {user.gid}: {out.get('sandbox_warnings')}")
    if "sandbox_error" in out:
        raise SandboxSetupFailed(out["sandbox_error"])
    first, second = out["runs"]
    assert first["status"] == 0 and second["status"] == 0, out["runs"]
    assert lines(first["stdout"]) == [
        ["0"],
        ["0", str(user.uid), "1"],
        ["1", str(start), str(count)],
        ["0", str(user.gid), "1"],
        ["1", str(start), str(count)],
    ]
    assert lines(second["stdout"]) == [["1000"], ["0"]]  # no passwd entry: group 0, as docker has it
    assert first["warnings"] == []


def test_pybuild_run_as_the_user(user: User) -> None:
    done = user.run([user.python, "-m", "builder", "run", "--store", str(user.store), "busybox", "id", "-u"])
    if done.returncode != 0 and "pybuild: error:" in done.stderr:
        raise SandboxSetupFailed(done.stderr.strip())
    assert done.returncode == 0, done.stderr
    assert done.stdout == "0\n"
    assert "/etc/subuid" in done.stderr  # the single-id warning reaches the user


# --------------------------------------------------------------------------- building as the user


def test_the_user_builds_and_runs_an_image(user: User) -> None:
    context = user.home / "context"
    done = user.run(["sh", "-c", (
        f"mkdir -p {context}/src && echo payload > {context}/src/data.txt && printf '%s\\n' "
        "'FROM busybox' 'WORKDIR /app' 'COPY src/ ./' 'RUN cat data.txt > copied && id -u > uid' "
        f"> {context}/Recipefile"
    )])
    assert done.returncode == 0, done.stderr
    built = user.run(["pybuild", "--store", str(user.store), "-f", str(context / "Recipefile"), "-t", "mine",
                      "--progress", "plain", str(context)])
    assert built.returncode == 0, built.stdout + built.stderr
    ran = user.run(["pybuild", "--store", str(user.store), "run", "mine", "sh", "-c", "cat /app/copied /app/uid; pwd"])
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "payload\n0\n/app\n"
