"""Build benchmark: `pybuild build` against BuildKit (dockerd) and buildah on the reference workloads.

Run `python bench/build_bench.py [--runs 3] [--workloads w1,w2,w3] [--json FILE]`
as root, with the project's interpreter (`zstandard` for the W3 floor). It
writes the reference workloads of ../shared/bench/ (make-workloads.sh: the
busybox rootfs tarball and the W1 "app", W2 "steps" and W3 "big" contexts)
into a temporary directory and builds each, in one run, with:
  - pybuild: `pybuild --store DIR build --network none ...`, the base imported
    into a store of its own with `pybuild import`;
  - BuildKit: Debian's docker.io, `DOCKER_BUILDKIT=1 docker build --network none`
    against a dockerd this bench starts on a unix socket of its own, with its
    own data and exec roots, and stops by its PID (also on Ctrl-C);
  - buildah: `buildah build --layers --runtime runc --network none` on a
    storage (--root/--runroot) of its own.
Every tool's base is the same tarball, imported as localhost/busybox:latest.
Cases: cold build (a fresh store, data root cache or storage holding only the
base), no-op rebuild (the same build again) and, for workloads whose recipe
COPYs context files, a rebuild after one of those files changed (new bytes
each round). For W3 it also times its floor: the RUN payload alone on the host
(the busybox of the rootfs, writing into a plain directory) plus zstandard
at pybuild's layer level with two threads over the 1 GiB it wrote. Each timed build is the
wall time of the whole command (client included), after an untimed
`sync`; the cold build's reset is untimed too. When the directory is on an
ext4 without a journal (this machine's root), everything runs on a journaled
ext4 on a loop device the bench makes (see ScratchFilesystem). Every round runs each case
for every tool in a fresh (seeded) random order, after one untimed warm-up
round of W2; it reports medians, the ratios pybuild / BuildKit and pybuild /
buildah, and pybuild's peak memory (the largest resident set of any one
process of the build command, GNU time's %M). A missing peer is skipped and said so
loudly. It reports and never asserts: it exits 0 unless the bench breaks.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# Shared with the sandbox bench beside this file (its directory is sys.path[0] when run as a script).
from sandbox_bench import (
    last_first_line,
    machine,
    publish,
    remove_containers_cache,
    remove_empty_dirs,
    remove_work,
    script_interpreter,
    unmount_under,
)

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "bench"
SEED = 20240601
BASE = "localhost/busybox:latest"  # the name the reference Dockerfiles' FROM lines use
WORKLOADS = ("w1", "w2", "w3")
TITLES = {"w1": "W1 app", "w2": "W2 20 RUN", "w3": "W3 1 GiB"}
# The context file each workload's "one file changed" case rewrites: a file of W1's COPY of
# files/ that no later step deletes (the recipe removes files/d00/f0000.bin).
CHANGED_FILE = {"w1": "files/d10/f1000.bin"}
CASES = ("cold", "noop", "changed")
CASE_LABELS = {"cold": "cold build", "noop": "no-op rebuild", "changed": "one context file changed"}
TOOLS = ("pybuild", "buildkit", "buildah")
TOOL_LABELS = {"pybuild": "pybuild", "buildkit": "BuildKit", "buildah": "buildah"}
TARGET_BUILDKIT = 1.0  # pybuild / BuildKit, at most, in every row
TARGET_FLOOR = 1.3  # pybuild W3 cold / (W3 payload on the host + zstd), at most
CHUNK = 1 << 20
TIME_BIN = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None  # GNU time (apt-get install time)
PEERS_HERE = (
    "W1 cold 1.79 / 4.18 s, no-op 0.146 / 1.30 s, one file 1.64 / 4.02 s; W2 cold 1.42 / 5.42 s, "
    "no-op 0.096 / 0.31 s; W3 cold 11.8 / 24.0 s (BuildKit / buildah, ../shared/bench/README.md)"
)


class Unavailable(Exception):
    """A tool or a build that cannot run here; its message says why."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each measure (default 3)")
    parser.add_argument(
        "--workloads", default="w1,w2,w3", help="comma-separated, of w1,w2,w3 (default all; W3 takes ~2 min a run)"
    )
    parser.add_argument("--json", metavar="FILE", type=Path, help="also write the figures to FILE as JSON")
    parser.add_argument("--dir", type=Path, help="where the temporary directory goes (default: TMPDIR); ~8 GiB with W3")
    parser.add_argument("--keep", action="store_true", help="keep the workloads, stores and the dockerd data root")
    parser.add_argument(
        "--host-fs",
        action="store_true",
        help="build on --dir's filesystem even when it is an ext4 without a journal (see ScratchFilesystem)",
    )
    parser.add_argument(
        "--pybuild", type=Path, help="the pybuild to time (default: this interpreter's, else the one on PATH)"
    )
    parser.add_argument(
        "--docker", type=Path, help="the docker client (default: /usr/bin/docker, Debian's, matching its dockerd)"
    )
    parser.add_argument("--shared", type=Path, default=SHARED, help=f"the reference workloads (default {SHARED})")
    args = parser.parse_args()
    chosen = [w.strip().lower() for w in args.workloads.split(",") if w.strip()]
    if not chosen or any(w not in WORKLOADS for w in chosen):
        parser.error(f"--workloads: a comma-separated list of {', '.join(WORKLOADS)}")
    workloads = [w for w in WORKLOADS if w in chosen]
    # Ctrl-C raises KeyboardInterrupt; make SIGTERM and SIGHUP do the same, so `finally` stops dockerd.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    work = Path(tempfile.mkdtemp(prefix="pybuild-build-bench-", dir=args.dir))
    reason = lingering_deletes(work)
    scratch = ScratchFilesystem(work, reason) if reason and not args.host_fs else None
    bench: Bench | None = None
    try:
        if scratch is not None:
            bench_dir, filesystem = scratch.make(), scratch.describe()
        else:
            bench_dir = work
            filesystem = f"the filesystem of {work}"
            if reason:
                filesystem = f"{reason} (--host-fs): a reset's deletes slow the creates of the builds after it"
        bench = Bench(bench_dir, args.shared, pybuild_path(args.pybuild), args.docker, filesystem)
        return bench.run(workloads, max(1, args.runs), args.json)
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130
    except Unavailable as error:
        print(f"bench: {error}", file=sys.stderr)
        return 1
    finally:
        if bench is not None:
            bench.close()
        if scratch is not None:
            scratch.release(keep=args.keep)
        remove_work(work, keep=args.keep)


def lingering_deletes(path: Path) -> str | None:
    """Why files deleted under `path` slow down the next creates for minutes, or None if they do not.

    An ext4 without a journal keeps every freed inode out of use for 60 s after its delete, and
    for 360 s while its inode-table block is dirty, and every new inode scans past all of them
    from the start of its block group (fs/ext4/ialloc.c, recently_deleted()): creating n files
    after deleting m costs n x m. A cold build's reset deletes a whole store, so the next
    thousands of creates on that part of the disk, by whichever tool comes next, pay for it:
    W1's RUN of 5,000 files took 0.3 s on a quiet disk and 2.3 s after the reset.
    """
    device = os.stat(path).st_dev
    block = Path(f"/sys/dev/block/{os.major(device)}:{os.minor(device)}")
    journal = Path("/sys/fs/ext4") / block.resolve().name / "journal_task"
    try:
        if journal.read_text().strip() != "<none>":
            return None
    except OSError:
        return None  # not ext4, or not a block device (tmpfs, overlay): no such delay
    return f"{path} is on an ext4 without a journal ({block.resolve().name})"


class ScratchFilesystem:
    """A journaled ext4 on a loop device of its own, holding every tool's storage, workloads and logs.

    Made when the bench's directory is on an ext4 without a journal (see `lingering_deletes`):
    there the resets' deletes, not the tools, would decide which build is slow. A journaled
    ext4 is what Debian installs and has no such delay. Every tool builds on it, the same way.
    The image is sparse and removed at the end (kept, still mounted, with --keep).
    """

    SIZE = 64 << 30  # sparse: only what the run writes takes space

    def __init__(self, parent: Path, reason: str) -> None:
        self.reason = reason
        self.image = parent / "scratch.ext4"
        self.mount_point = parent / "fs"
        self.device = ""

    def make(self) -> Path:
        with open(self.image, "wb") as f:
            f.truncate(self.SIZE)
        # Direct I/O: the image's pages are not cached twice, once for each filesystem.
        self.device = quiet(["losetup", "--find", "--show", "--direct-io=on", str(self.image)]).strip()
        quiet(["mkfs.ext4", "-q", "-F", "-L", "pybuild-bench", self.device])
        self.mount_point.mkdir()
        # noinit_itable: no background zeroing of inode tables while the builds are timed.
        quiet(["mount", "-o", "noinit_itable", self.device, str(self.mount_point)])
        return self.mount_point

    def describe(self) -> str:
        return f"a journaled ext4 on {self.device} (a sparse image in {self.image.parent}), because {self.reason}"

    def release(self, *, keep: bool) -> None:
        if keep:
            print(f"kept {self.mount_point} mounted: umount {self.mount_point}; losetup -d {self.device}")
            return
        unmount_under(self.mount_point)
        subprocess.run(["umount", "-l", str(self.mount_point)], check=False, stderr=subprocess.DEVNULL)
        if self.device:
            subprocess.run(["losetup", "-d", self.device], check=False, stderr=subprocess.DEVNULL)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def pybuild_path(given: Path | None) -> Path | None:
    if given is not None:
        return given
    beside = Path(sys.prefix) / "bin" / "pybuild"
    if beside.exists():
        return beside
    found = shutil.which("pybuild")
    return Path(found) if found else None


# ---- running commands -------------------------------------------------------------------


class Result:
    def __init__(self, seconds: float, maxrss_kib: int | None, cpu: float) -> None:
        self.seconds, self.maxrss_kib, self.cpu = seconds, maxrss_kib, cpu


def timed(argv: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> Result:
    """Wall time, peak RSS and CPU of one command, its output to `log`; Unavailable if it fails.

    The peak RSS is GNU time's %M: the largest ru_maxrss of the command's process tree. It cannot
    come from this process's own wait4, because a child's ru_maxrss starts at the resident size of
    the process it was forked from (the kernel keeps the high-water mark across exec), and this
    one holds 80 MiB once zstd has run; /usr/bin/time is 2 MiB. The command gets a process group
    of its own (GNU time ignores SIGINT while it waits), which stop() signals as a whole.
    """
    rss_file = log.with_suffix(".rss")
    wrapped = [TIME_BIN, "-f", "%M", "-o", str(rss_file), *argv] if TIME_BIN else argv
    with open(log, "wb") as out:
        start = time.perf_counter()
        process = subprocess.Popen(
            wrapped, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, process_group=0
        )
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:  # Ctrl-C or SIGTERM of the bench: stop the build too, as Ctrl-C in a terminal does
            stop(process)
            raise
        elapsed = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise Unavailable(f"`{' '.join(command_name(argv))}` exited with {process.returncode}: {message(log)}")
    try:
        maxrss: int | None = int(rss_file.read_text().split()[-1])
    except (OSError, ValueError, IndexError):
        maxrss = None
    return Result(elapsed, maxrss, usage.ru_utime + usage.ru_stime)


def stop(process: subprocess.Popen[bytes]) -> None:
    """Interrupt a build's process group (SIGINT, so it cleans up as after Ctrl-C); kill it after 20 s."""
    if process.returncode is None:
        try:
            os.killpg(process.pid, signal.SIGINT)
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        except ProcessLookupError:
            pass


def quiet(argv: list[str], env: dict[str, str] | None = None, check: bool = True) -> str:
    """Run an untimed command; its output, or Unavailable if it fails and `check`."""
    done = subprocess.run(argv, check=False, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env)
    if check and done.returncode != 0:
        raise Unavailable(
            f"`{' '.join(command_name(argv))}` exited with {done.returncode}: {message(done.stderr or done.stdout)}"
        )
    return done.stdout


def command_name(argv: list[str]) -> list[str]:
    """The command and its subcommand, for messages: `pybuild build`, `docker build`."""
    words = [Path(argv[0]).name]
    for word in argv[1:]:
        if not word.startswith("-") and "/" not in word and "=" not in word and word.isalpha():
            words.append(word)
            break
    return words


def message(source: Path | str) -> str:
    """The line of a command's output that says what went wrong: the first naming an error, else the last."""
    text = source.read_text(errors="replace") if isinstance(source, Path) else source
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    named = [line for line in lines if "error" in line.lower()]
    line = named[0] if named else (lines[-1] if lines else "(no output)")
    return line if len(line) <= 300 else line[:297] + "..."


# ---- the tools ---------------------------------------------------------------------------


class Tool:
    key = ""
    problem = ""  # why it cannot run here ("" while it can)

    def reset(self, workload: str) -> None:
        """Untimed: a cold state for `workload`, holding only the base image."""

    def build(self, workload: str, log: Path) -> Result:
        raise NotImplementedError

    def close(self) -> None:
        pass


class Pybuild(Tool):
    key = "pybuild"

    def __init__(self, bench: Bench, binary: Path | None) -> None:
        self.bench = bench
        self.binary = binary
        self.stores = bench.work / "pybuild-stores"
        # With PYTHONDONTWRITEBYTECODE set (as in this dev environment) every start of an editable
        # pybuild compiles its ~50 modules again (~80 ms here), which no installed pybuild does: cache
        # the bytecode under the bench's own directory instead, never beside the checkout's sources.
        self.env = dict(os.environ)
        self.pycache_note = ""
        if self.env.pop("PYTHONDONTWRITEBYTECODE", None) is not None:
            self.env["PYTHONPYCACHEPREFIX"] = str(bench.work / "pycache")
            self.pycache_note = (
                "PYTHONDONTWRITEBYTECODE is set here: pybuild ran with its bytecode cached under the bench's "
                "directory (PYTHONPYCACHEPREFIX), as an installed pybuild would"
            )
        if binary is None or not binary.exists():
            self.problem = "pybuild not found (give --pybuild, or run with the project's interpreter)"
            return
        self.stores.mkdir()

    def warm(self) -> None:
        """Compile pybuild's packages into the bytecode cache, so that no timed run compiles them."""
        interpreter = script_interpreter(self.binary) if self.binary else None
        if not interpreter or "PYTHONPYCACHEPREFIX" not in self.env:
            return
        where = quiet(
            [
                interpreter,
                "-c",
                "import builder, grammar, store, os; print(*(os.path.dirname(m.__file__) for m in (builder, grammar, store)))",
            ],
            env=self.env,
            check=False,
        ).split()
        if where:
            quiet([interpreter, "-m", "compileall", "-q", "-j", "0", *where], env=self.env, check=False)

    def store(self, workload: str) -> Path:
        return self.stores / workload

    def reset(self, workload: str) -> None:
        store = self.store(workload)
        unmount_under(store)
        shutil.rmtree(store, ignore_errors=True)
        quiet([str(self.binary), "--store", str(store), "import", str(self.bench.tarball), BASE], env=self.env)

    def build(self, workload: str, log: Path) -> Result:
        ctx = self.bench.contexts / workload
        argv = [str(self.binary), "--store", str(self.store(workload)), "build", "-t", f"bench-{workload}"]
        argv += ["--progress", "plain", "--network", "none", "-f", str(ctx / "Recipefile"), str(ctx)]
        return timed(argv, log, env=self.env)

    def version(self) -> str:
        if self.binary is None:
            return "pybuild not found"
        return f"{quiet([str(self.binary), '--version'], check=False).strip() or 'pybuild (version unknown)'} ({self.binary})"


class BuildKit(Tool):
    """BuildKit inside a dockerd of our own: its own unix socket, data root and exec root, stopped by PID."""

    key = "buildkit"

    def __init__(self, bench: Bench, client: Path | None) -> None:
        self.bench = bench
        self.daemon: subprocess.Popen[bytes] | None = None
        self.socket = Path(f"/run/pybuild-build-bench-{os.getpid()}.sock")
        self.root = bench.work / "dockerd"
        self.exec_root = self.root / "exec"
        self.made_exec_root: Path | None = None
        # dockerd writes these outside its roots: take back what this run created, and only that.
        self.created_outside = [p for p in (Path("/etc/docker/key.json"), Path("/run/docker")) if not p.exists()]
        dockerd = shutil.which("dockerd")
        default_client = Path("/usr/bin/docker") if Path("/usr/bin/docker").exists() else None
        self.client = client or default_client or (Path(shutil.which("docker")) if shutil.which("docker") else None)
        if dockerd is None or self.client is None:
            missing = " and ".join(n for n, p in (("dockerd", dockerd), ("docker", self.client)) if p is None)
            self.problem = f"{missing} not found (apt-get install docker.io)"
            return
        if os.geteuid() != 0:
            self.problem = "needs root (dockerd)"
            return
        self.dockerd = dockerd
        self.env = dict(os.environ, DOCKER_BUILDKIT="1", DOCKER_CONFIG=str(self.root / "client-config"))
        self.docker = [str(self.client), "-H", f"unix://{self.socket}"]
        try:
            self.start()
        except Unavailable as error:
            self.problem = str(error)

    def start(self) -> None:
        self.root.mkdir()
        # containerd's sockets live under the exec root, and a unix socket path has at most 107 bytes.
        if len(str(self.exec_root)) > 60:
            self.made_exec_root = Path(tempfile.mkdtemp(prefix="pbb-", dir="/run"))
            self.exec_root = self.made_exec_root
        config = self.root / "daemon.json"
        config.write_text("{}\n")  # not the host's /etc/docker/daemon.json
        argv = [
            self.dockerd,
            "--config-file", str(config),
            "--iptables=false", "--ip6tables=false", "--bridge=none",
            "--storage-driver=overlay2",
            "--data-root", str(self.root / "data"),
            "--exec-root", str(self.exec_root),
            "--host", f"unix://{self.socket}",
            "--pidfile", str(self.root / "dockerd.pid"),
        ]  # fmt: skip
        with open(self.root / "dockerd.log", "wb") as log:
            # A session of its own: Ctrl-C reaches the bench, which stops the daemon itself.
            self.daemon = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        deadline = time.monotonic() + 60
        while True:
            if self.daemon.poll() is not None:
                raise Unavailable(f"dockerd exited with {self.daemon.returncode}: {message(self.root / 'dockerd.log')}")
            if (
                self.socket.exists()
                and subprocess.run([*self.docker, "version"], check=False, capture_output=True, env=self.env).returncode
                == 0
            ):
                break
            if time.monotonic() > deadline:
                raise Unavailable(f"dockerd did not answer within 60 s: {message(self.root / 'dockerd.log')}")
            time.sleep(0.2)
        quiet([*self.docker, "import", str(self.bench.tarball), BASE], env=self.env)

    def reset(self, workload: str) -> None:
        quiet([*self.docker, "rmi", "-f", f"bench-{workload}"], env=self.env, check=False)
        quiet([*self.docker, "builder", "prune", "-af"], env=self.env)

    def build(self, workload: str, log: Path) -> Result:
        ctx = self.bench.contexts / workload
        argv = [*self.docker, "build", "--network", "none", "--progress", "plain", "-t", f"bench-{workload}"]
        argv += ["-f", str(ctx / "Recipefile"), str(ctx)]
        return timed(argv, log, env=self.env)

    def version(self) -> str:
        if self.client is None:
            return "docker not found"
        client = quiet([str(self.client), "--version"], check=False).strip() or "docker (version unknown)"
        if self.daemon is None or self.daemon.poll() is not None:
            return f"{client} ({self.client})"
        server = quiet([*self.docker, "version", "--format", "{{.Server.Version}}"], env=self.env, check=False).strip()
        return f"{client} ({self.client}), dockerd {server or '?'} overlay2"

    def close(self) -> None:
        """Stop dockerd by its PID (then its containerd, by the PID it wrote), and remove what it left."""
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
        # dockerd stops the containerd it started; if it was killed, that containerd is left running.
        pidfile = self.exec_root / "containerd" / "containerd.pid"
        try:
            pid = int(pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except (OSError, ValueError):
            pid, cmdline = 0, ""
        if pid and str(self.exec_root) in cmdline:  # still the containerd of this exec root, not a reused PID
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)
        self.daemon = None
        self.socket.unlink(missing_ok=True)
        for root in (self.root, self.exec_root):
            unmount_under(root)
        if self.made_exec_root is not None:
            shutil.rmtree(self.made_exec_root, ignore_errors=True)
        for path in self.created_outside:
            if path.is_dir():
                remove_empty_dirs(path)
            else:
                path.unlink(missing_ok=True)


class Buildah(Tool):
    """buildah --layers with runc (crun refuses this machine's hybrid cgroups), a storage of its own per cold build."""

    key = "buildah"

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.binary = shutil.which("buildah")
        self.containers_dir_existed = Path("/var/lib/containers").exists()
        if self.binary is None:
            self.problem = "buildah not found (apt-get install buildah runc)"
        elif shutil.which("runc") is None:
            self.problem = "runc not found (apt-get install runc): buildah's default crun refuses hybrid cgroups"
        elif os.geteuid() != 0:
            self.problem = "needs root"
        self.root = bench.work / "buildah"
        self.env = dict(os.environ, TMPDIR=str(self.root / "tmp"))

    def storage(self, workload: str) -> list[str]:
        assert self.binary is not None
        top = self.root / workload
        return [
            self.binary,
            "--root",
            str(top / "root"),
            "--runroot",
            str(top / "runroot"),
            "--storage-driver",
            "overlay",
        ]

    def reset(self, workload: str) -> None:
        top = self.root / workload
        if top.exists():
            quiet([*self.storage(workload), "rm", "--all"], env=self.env, check=False)
            unmount_under(top)
            shutil.rmtree(top, ignore_errors=True)
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        buildah = self.storage(workload)
        container = quiet([*buildah, "from", "scratch"], env=self.env).strip().splitlines()[-1]
        quiet([*buildah, "add", container, str(self.bench.tarball), "/"], env=self.env)
        quiet([*buildah, "commit", "-q", container, BASE], env=self.env)
        quiet([*buildah, "rm", container], env=self.env)

    def build(self, workload: str, log: Path) -> Result:
        ctx = self.bench.contexts / workload
        argv = [*self.storage(workload), "build", "--layers", "--runtime", "runc", "--network", "none"]
        argv += ["-t", f"bench-{workload}", "-f", str(ctx / "Recipefile"), str(ctx)]
        return timed(argv, log, env=self.env)

    def version(self) -> str:
        if self.binary is None:
            return "buildah not found"
        return quiet([self.binary, "--version"], check=False).strip() or "buildah (version unknown)"

    def close(self) -> None:
        remove_containers_cache(self.containers_dir_existed)  # buildah makes it even with --root


class Floor:
    """W3's floor: its RUN payload alone on the host, then zstd (pybuild's layer level, two threads) of the 1 GiB it wrote.

    The payload runs as the build runs it: the rootfs's own busybox shell and applets (tr, head,
    cat), writing into a plain directory. The same script with the host's /bin/sh and GNU tools
    (what ../shared/bench/README.md's "5.4 s" measured) is about twice as fast here; it is timed
    too and reported beside it, not used for the target: no builder can run the recipe's busybox
    faster than busybox.
    """

    def __init__(self, bench: Bench) -> None:
        self.dir = bench.work / "floor"
        self.rootfs = self.dir / "rootfs"
        self.out = self.dir / "data"
        self.problem = ""
        try:
            import zstandard

            from store.compression import ZSTD_LEVEL
        except ImportError:
            self.problem = "the python `zstandard` package is not importable: run with the project's interpreter"
            return
        self.zstandard = zstandard
        self.level = ZSTD_LEVEL
        self.rootfs.mkdir(parents=True)
        subprocess.run(["tar", "-C", str(self.rootfs), "--numeric-owner", "-xf", str(bench.tarball)], check=True)
        runs = [
            line[4:]
            for line in (bench.contexts / "w3" / "Recipefile").read_text().splitlines()
            if line.startswith("RUN ")
        ]
        if len(runs) != 1:
            self.problem = f"expected one single-line RUN in W3's recipe, found {len(runs)}"
            return
        script = re.sub(r"(?<![\w/])/data\b", str(self.out), runs[0])
        self.script = script.replace("/bin/busybox", str(self.rootfs / "bin" / "busybox"))
        self.busybox = [str(self.rootfs / "bin" / "sh"), "-c", self.script]
        self.host = ["/bin/sh", "-c", self.script]
        # The rootfs's own busybox applets only, as in the container; or the host's tools.
        self.busybox_env = {"PATH": str(self.rootfs / "bin"), "HOME": "/", "LC_ALL": "C"}
        self.host_env = {"PATH": "/usr/bin:/bin", "HOME": "/", "LC_ALL": "C"}

    def reset(self) -> None:
        shutil.rmtree(self.out, ignore_errors=True)

    def measure(self, log: Path) -> dict[str, float]:
        """Seconds of the busybox payload, of zstd over its output, and of the payload with the host's tools."""
        self.reset()
        os.sync()
        payload = timed(self.busybox, log, env=self.busybox_env, cwd=self.dir).seconds
        files = self.output()
        start = time.perf_counter()
        writer = self.zstandard.ZstdCompressor(level=self.level, threads=2).stream_writer(_Null(), closefd=False)
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        for path in files:
            with open(path, "rb", buffering=0) as f:
                while count := f.readinto(buffer):
                    writer.write(view[:count])
        writer.close()
        zstd = time.perf_counter() - start
        self.reset()
        os.sync()
        host = timed(self.host, log.with_suffix(".host.log"), env=self.host_env, cwd=self.dir).seconds
        self.output()
        self.reset()
        return {"payload": payload, "zstd": zstd, "payload_host_tools": host}

    def output(self) -> list[Path]:
        files = sorted(p for p in self.out.rglob("*") if p.is_file())
        size = sum(p.stat().st_size for p in files)
        if size != 1 << 30:
            raise Unavailable(f"the payload wrote {size} bytes, not 1 GiB")
        return files


class _Null:
    def write(self, data: bytes | bytearray | memoryview) -> int:
        return len(data)


# ---- the run -----------------------------------------------------------------------------


class Bench:
    def __init__(self, work: Path, shared: Path, pybuild: Path | None, docker: Path | None, filesystem: str) -> None:
        self.work = work
        self.filesystem = filesystem  # where the builds run, for the report
        self.shared = shared
        self.tarball = work / "busybox-rootfs.tar"
        self.contexts = work / "ctx"
        self.pybuild_binary = pybuild
        self.docker_client = docker
        self.logs = work / "logs"
        self.tools: dict[str, Tool] = {}
        self.floor: Floor | None = None
        # samples[workload][case][tool] = seconds; the floor is the tool "floor" (payload + zstd)
        self.samples: dict[str, dict[str, dict[str, list[float]]]] = {}
        self.rss: dict[str, dict[str, dict[str, list[int]]]] = {}  # KiB, same keys
        self.floor_parts: dict[str, list[float]] = {"payload": [], "zstd": [], "payload_host_tools": []}
        self.failed: dict[tuple[str, str], str] = {}  # (tool, workload) -> message
        self.cgroups_before = set(cgroups_made_by_peers())

    def run(self, workloads: list[str], runs: int, json_path: Path | None) -> int:
        started = time.perf_counter()
        print(f"preparing in {self.work}, on {self.filesystem} ...", flush=True)
        self.prepare(workloads)
        missing = {key: tool.problem for key, tool in self.tools.items() if tool.problem}
        for key, problem in missing.items():
            print(f"!!! {TOOL_LABELS[key]} NOT MEASURED: {problem}", flush=True)
        if self.floor is not None and self.floor.problem:
            print(f"!!! W3 floor NOT MEASURED: {self.floor.problem}", flush=True)
        cases = {w: [c for c in CASES if c != "changed" or w in CHANGED_FILE] for w in workloads}
        print(
            f"  done in {time.perf_counter() - started:.1f} s; one warm-up round (W2), then {runs} rounds", flush=True
        )

        shuffle = random.Random(SEED).shuffle
        self.warm_up(shuffle)
        for r in range(runs):
            for workload in workloads:
                line = [f"round {r + 1}/{runs} {TITLES[workload]}:"]
                for case in cases[workload]:
                    if case == "changed":
                        self.change_file(workload, r)
                    order = [k for k, t in self.tools.items() if not t.problem and (k, workload) not in self.failed]
                    if workload == "w3" and case == "cold" and self.floor is not None and not self.floor.problem:
                        order.append("floor")
                    shuffle(order)
                    figures = []
                    for key in order:
                        seconds = self.once(key, workload, case, r)
                        figures.append(
                            f"{TOOL_LABELS.get(key, key)} {'failed' if seconds is None else f'{seconds:.2f}'}"
                        )
                    line.append(f"{case} " + ", ".join(figures) + ";")
                print(" ".join(line).rstrip(";"), flush=True)

        report = self.report(workloads, cases, runs)
        print()
        publish(render(report), report, started, json_path)
        return 0

    def prepare(self, workloads: list[str]) -> None:
        script = self.shared / "make-workloads.sh"
        if not script.exists():
            sys.exit(f"bench: {script} not found (give --shared DIR)")
        made = subprocess.run(["bash", str(script), str(self.work)], check=False, capture_output=True, text=True)
        if made.returncode != 0:
            sys.exit(f"bench: make-workloads.sh failed: {message(made.stderr or made.stdout)}")
        self.logs.mkdir()
        self.tools = {
            "pybuild": Pybuild(self, self.pybuild_binary),
            "buildkit": BuildKit(self, self.docker_client),
            "buildah": Buildah(self),
        }
        if "w3" in workloads:
            self.floor = Floor(self)

    def warm_up(self, shuffle: Callable[[list[str]], None]) -> None:
        """One untimed cold build and no-op rebuild of W2 by every tool (first-build costs, page cache)."""
        order = [k for k, t in self.tools.items() if not t.problem]
        shuffle(order)
        for key in order:
            tool = self.tools[key]
            try:
                if isinstance(tool, Pybuild):
                    tool.warm()
                tool.reset("w2")
                tool.build("w2", self.logs / f"warmup-{key}.log")
                tool.build("w2", self.logs / f"warmup-{key}.log")
            except Unavailable as error:
                tool.problem = f"the warm-up build of W2 failed: {error}"
                print(f"!!! {TOOL_LABELS[key]} NOT MEASURED: {tool.problem}", flush=True)

    def change_file(self, workload: str, round_index: int) -> None:
        """New bytes, of the same size, never seen before in this run, in one file of the context."""
        path = self.contexts / workload / CHANGED_FILE[workload]
        size = path.stat().st_size
        path.chmod(0o644)
        path.write_bytes(random.Random(f"{SEED}-{workload}-{round_index}").randbytes(size))

    def once(self, key: str, workload: str, case: str, round_index: int) -> float | None:
        log = self.logs / f"{workload}-{case}-{key}-{round_index}.log"
        try:
            if key == "floor":
                assert self.floor is not None
                parts = self.floor.measure(log)
                for name, value in parts.items():
                    self.floor_parts[name].append(value)
                seconds = parts["payload"] + parts["zstd"]
            else:
                tool = self.tools[key]
                if (key, workload) in self.failed:
                    return None
                if case == "cold":
                    tool.reset(workload)
                os.sync()  # the reset's deletes and the last build's writes are not this build's cost
                result = tool.build(workload, log)
                seconds = result.seconds
                if result.maxrss_kib is not None:
                    self.rss.setdefault(workload, {}).setdefault(case, {}).setdefault(key, []).append(result.maxrss_kib)
        except Unavailable as error:
            if key == "floor":
                assert self.floor is not None
                self.floor.problem = f"failed: {error}"
            else:
                self.failed[(key, workload)] = f"{CASE_LABELS[case]} failed: {error}"
            return None
        self.samples.setdefault(workload, {}).setdefault(case, {}).setdefault(key, []).append(seconds)
        return seconds

    def close(self) -> None:
        for tool in self.tools.values():
            try:
                tool.close()
            except Exception as error:  # noqa: BLE001 -- close every tool, whatever one of them does
                print(f"bench: closing {tool.key}: {type(error).__name__}: {error}", file=sys.stderr)
        # dockerd and buildah leave their (empty) parent cgroups behind: take back those this run created.
        for group in cgroups_made_by_peers():
            if group not in self.cgroups_before:
                remove_empty_dirs(group)  # what is still in use stays

    # ---- the report -----------------------------------------------------------------------

    def report(self, workloads: list[str], cases: dict[str, list[str]], runs: int) -> dict:
        rows = []
        for workload in workloads:
            for case in CASES:
                row: dict = {"workload": workload, "case": case, "label": CASE_LABELS[case]}
                if case not in cases[workload]:
                    row["skipped"] = (
                        "no COPY of context files in the recipe"
                        if not has_copy(self.contexts / workload)
                        else "no changed file configured"
                    )
                    rows.append(row)
                    continue
                for key in TOOLS:
                    samples = self.samples.get(workload, {}).get(case, {}).get(key, [])
                    problem = self.tools[key].problem or self.failed.get((key, workload), "")
                    row[key] = {
                        "median": statistics.median(samples) if samples and not problem else None,
                        "samples": samples,
                        "problem": problem,
                    }
                    rss = self.rss.get(workload, {}).get(case, {}).get(key, [])
                    if rss and key != "buildkit":  # the docker client's memory says nothing: dockerd builds
                        row[key]["peak_rss_mib"] = max(rss) / 1024
                rows.append(row)
        floor = None
        if self.floor is not None:
            totals = self.samples.get("w3", {}).get("cold", {}).get("floor", [])
            parts = self.floor_parts
            host_totals = [a + b for a, b in zip(parts["payload_host_tools"], parts["zstd"])]
            problem = self.floor.problem

            def mid(values: list[float]) -> float | None:
                return statistics.median(values) if values and not problem else None

            floor = {
                "median": mid(totals),
                "samples": totals,
                "payload_median": mid(parts["payload"]),
                "zstd_median": mid(parts["zstd"]),
                "zstd_level": getattr(self.floor, "level", None),
                "host_tools": {"median": mid(host_totals), "payload_median": mid(parts["payload_host_tools"])},
                "parts_samples": parts,
                "problem": self.floor.problem,
            }
        return {
            "machine": machine(),
            "filesystem": self.filesystem,
            "versions": self.versions(),
            "notes": [n for n in (getattr(self.tools.get("pybuild"), "pycache_note", ""),) if n],
            "runs": runs,
            "workloads": workloads,
            "rows": rows,
            "floor_w3": floor,
            "not_measured": {
                TOOL_LABELS[k]: t.problem or "; ".join(m for (tk, _), m in self.failed.items() if tk == k)
                for k, t in self.tools.items()
                if t.problem or any(tk == k for tk, _ in self.failed)
            },
        }

    def versions(self) -> list[str]:
        found = [tool.version() for tool in self.tools.values()]  # type: ignore[attr-defined]
        runc = shutil.which("runc")
        found.append(last_first_line(quiet([runc, "--version"], check=False)) if runc else "runc not found")
        if self.floor is not None and not self.floor.problem:
            found.append(f"zstandard {self.floor.zstandard.__version__}")
        busybox = self.work / "floor" / "rootfs" / "bin" / "busybox"
        if busybox.exists():
            found.append(last_first_line(quiet([str(busybox)], check=False)).split(" multi-call")[0])
        return found


def cgroups_made_by_peers() -> list[Path]:
    """The parent cgroups dockerd (docker/) and buildah (libpod_parent/) make in every hierarchy."""
    return [p for p in Path("/sys/fs/cgroup").glob("*/*") if p.name in ("docker", "libpod_parent") and p.is_dir()]


def has_copy(ctx: Path) -> bool:
    text = (ctx / "Recipefile").read_text()
    return any(re.match(r"\s*(COPY|ADD)\s", line, re.IGNORECASE) and "--from" not in line for line in text.splitlines())


def render(report: dict) -> str:
    def cell(figure: dict) -> str:
        return f"{figure['median']:.3f}" if figure.get("median") is not None else "--"

    def ratio(mine: dict, peer: dict) -> str:
        if mine.get("median") is None or peer.get("median") is None:
            return "--"
        return f"{mine['median'] / peer['median']:.2f}x"

    out = [
        f"BUILD TIMES, s (median of {report['runs']} interleaved runs; wall time of the whole build command)",
        "ratios: pybuild's median / the peer's median; -- = not measured (see below)",
        f"(peers measured here before: {PEERS_HERE})",
        "",
        f"  {'workload':<11}{'case':<26}{'pybuild':>9}{'BuildKit':>10}{'buildah':>9}{'/BuildKit':>11}{'/buildah':>10}",
    ]
    for row in report["rows"]:
        title = TITLES[row["workload"]]
        if "skipped" in row:
            out.append(f"  {title:<11}{row['label']:<26}  n/a: {row['skipped']}")
            continue
        mine, kit, dah = row["pybuild"], row["buildkit"], row["buildah"]
        out.append(
            f"  {title:<11}{row['label']:<26}{cell(mine):>9}{cell(kit):>10}{cell(dah):>9}"
            f"{ratio(mine, kit):>11}{ratio(mine, dah):>10}"
        )
    floor = report["floor_w3"]
    w3_cold = next((r for r in report["rows"] if r["workload"] == "w3" and r["case"] == "cold"), None)
    if floor is not None:
        if floor["median"] is not None:
            host = floor["host_tools"]
            out += [
                (
                    f"  {'W3 floor':<11}{'payload + zstd':<26}{floor['median']:>9.3f}"
                    f"   pybuild cold / floor {ratio(w3_cold['pybuild'], floor) if w3_cold else '--'}"
                ),
                (
                    f"    = the RUN payload on the host with the rootfs's busybox {floor['payload_median']:.3f}"
                    f" + zstd level {floor['zstd_level']}, 2 threads, of its 1 GiB {floor['zstd_median']:.3f}"
                ),
                (
                    f"    (with the host's /bin/sh and GNU tools instead: payload {host['payload_median']:.3f},"
                    f" floor {host['median']:.3f}, pybuild cold / that {ratio(w3_cold['pybuild'], host) if w3_cold else '--'})"
                ),
            ]
        else:
            out.append(f"  {'W3 floor':<11}not measured: {floor['problem']}")
    memory = []
    for row in report["rows"]:
        if row["case"] == "cold" and "skipped" not in row:
            parts = [
                f"{TOOL_LABELS[k]} {row[k]['peak_rss_mib']:.0f}"
                for k in ("pybuild", "buildah")
                if row[k].get("peak_rss_mib") is not None
            ]
            if parts:
                memory.append(f"{TITLES[row['workload']]}: " + ", ".join(parts))
    if memory:
        out += [
            "",
            "PEAK MEMORY of the build command, MiB (cold builds, largest RSS of any one process of it, GNU time's %M;",
            "BuildKit's work runs in dockerd, not in the client, so it has no figure here)",
            "  " + "; ".join(memory),
        ]
    elif TIME_BIN is None:
        out += ["", "PEAK MEMORY not measured: /usr/bin/time not found (apt-get install time)"]
    if report["not_measured"]:
        out.append("")
        for name, problem in report["not_measured"].items():
            out.append(f"!!! {name} NOT (FULLY) MEASURED: {problem}")
    out += ["", "TARGETS"]
    misses = total = 0
    for row in report["rows"]:
        if "skipped" in row:
            continue
        name = f"{TITLES[row['workload']]} {row['label']} <= {TARGET_BUILDKIT:.1f}x BuildKit"
        mine, kit = row["pybuild"], row["buildkit"]
        if mine.get("median") is None or kit.get("median") is None:
            why = "; ".join(
                f"{TOOL_LABELS[k]}: {row[k]['problem'] or 'no samples'}"
                for k in ("pybuild", "buildkit")
                if row[k].get("median") is None
            )
            out.append(f"  {name}: not measured ({why})")
            continue
        total += 1
        holds = mine["median"] <= TARGET_BUILDKIT * kit["median"]
        misses += not holds
        out.append(f"  {name}: {'yes' if holds else 'no'} ({ratio(mine, kit)})")
    out.append(
        f"  every measured row <= {TARGET_BUILDKIT:.1f}x BuildKit: "
        + ("not measured" if not total else ("yes" if not misses else f"no ({misses} of {total} rows miss)"))
    )
    if w3_cold is not None:
        name = f"W3 cold build <= {TARGET_FLOOR:.1f}x its floor (busybox payload on the host + zstd)"
        if w3_cold["pybuild"].get("median") is None or floor is None or floor["median"] is None:
            out.append(f"  {name}: not measured")
        else:
            holds = w3_cold["pybuild"]["median"] <= TARGET_FLOOR * floor["median"]
            host = floor["host_tools"]
            out.append(
                f"  {name}: {'yes' if holds else 'no'} ({ratio(w3_cold['pybuild'], floor)};"
                f" {ratio(w3_cold['pybuild'], host)} of the floor with the host's GNU tools)"
            )
    out += ["", "machine: " + report["machine"], "filesystem: " + report["filesystem"]]
    out += ["versions: " + "; ".join(report["versions"])]
    out += ["note: " + note for note in report["notes"]]
    return "\n".join(out)


# ---- machine facts ------------------------------------------------------------------------


if __name__ == "__main__":
    sys.exit(main())
