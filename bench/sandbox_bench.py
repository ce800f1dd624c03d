"""Sandbox benchmark: the cost of running `true` in a pybuild sandbox against unshare, crun and podman.

Run `python3 bench/sandbox_bench.py [--runs 50] [--warmup 5] [--json FILE]` as
root from the repository root with the project's interpreter (it imports
`store` and `builder`). It builds the busybox root filesystem with
fixtures/busybox-rootfs.py and imports it into a temporary pybuild store, then
reports, side by side in one run:
  1. the in-process cost of a sandbox run of `true` (fork, namespaces, overlay
     mount, pivot_root, /proc and /dev, exec, teardown) on a fresh writable
     snapshot, timed in this process (the snapshot's checkout and removal are
     timed apart and printed beside it), against the floor
     `unshare --user --map-root-user --mount --pid --fork --uts --ipc --net true`
     and `crun run` of the same root filesystem as an OCI bundle;
  2. the whole-process `pybuild run --rm busybox true` against
     `podman run --rm` of the same image (saved from the pybuild store and
     loaded into a private podman storage, removed afterwards).
External commands are timed one invocation at a time, with perf_counter_ns
around subprocess.run, so their figures include the interpreter's spawn
cost: the `/bin/true` row measures it. crun refuses this machine's hybrid
cgroup layout, so it runs from a helper process of this same script inside
`unshare -m --propagation private` with /sys/fs/cgroup/unified unmounted in
that private mount namespace only; the helper times each `crun run` the same
way. Every round runs each measure once, in a fresh (seeded) random order, so
machine drift and what ran just before hit all alike; the warm-up rounds are
not timed. Then `crun run` is timed once more back to back (see BACK_TO_BACK).
It reports median, mean ± sd and min, and never asserts: it exits 0 unless the
bench breaks.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # `store` and `builder` from this checkout, as the other benches do
FIXTURE = REPO / "fixtures" / "busybox-rootfs.py"
IMAGE = "busybox"
SEED = 20240601
UNSHARE_FLOOR = ["--user", "--map-root-user", "--mount", "--pid", "--fork", "--uts", "--ipc", "--net", "true"]
PODMAN_RUN = [
    "run",
    "--rm",
    "--runtime",
    "runc",
    "--network",
    "none",
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
]
CGROUP_V2_HYBRID = "/sys/fs/cgroup/unified"
TARGET_FLOOR = 2.0  # in-process sandbox run / unshare floor, at most
TARGET_PODMAN = 0.5  # `pybuild run` / `podman run`, at most
BACK_TO_BACK = (
    "crun back to back: the same runs consecutively, not interleaved. On cgroup v1 the first migration into a\n"
    "  cgroup after ~20 ms without one waits for an RCU grace period (cgroup_threadgroup_rwsem), ~8-15 ms here;\n"
    "  crun interleaved pays it on (nearly) every run, back to back it does not."
)
PEERS_HERE = "unshare floor 2.5 ms, crun 9.7 ms, podman 142 ms (../shared/bench/README.md)"


class Unavailable(Exception):
    """A measure that cannot run here; its message says why."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50, help="timed runs of each measure (default 50)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs of each measure first (default 5)")
    parser.add_argument("--json", metavar="FILE", type=Path, help="also write the figures to FILE as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temporary store, bundle and podman storage")
    parser.add_argument(
        "--pybuild",
        type=Path,
        help="the pybuild to time for `pybuild run` (default: this interpreter's; the README installs /opt/pybuild/bin/pybuild)",
    )
    parser.add_argument("--crun-helper", nargs=3, metavar=("CRUN", "STATE", "BUNDLE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.crun_helper:
        return crun_helper(*args.crun_helper)
    work = Path(tempfile.mkdtemp(prefix="pybuild-sandbox-bench-"))
    bench = Bench(work, args.pybuild)
    try:
        return bench.run(max(1, args.runs), max(0, args.warmup), args.json)
    finally:
        bench.close()
        remove_work(work, keep=args.keep)


# ---- timing ---------------------------------------------------------------------------


def spawn(argv: list[str], env: dict[str, str] | None = None) -> int:
    """Nanoseconds of wall time of one `subprocess.run(argv)`; Unavailable if it fails."""
    gc.disable()
    try:
        start = time.perf_counter_ns()
        done = subprocess.run(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
        )
        elapsed = time.perf_counter_ns() - start
    finally:
        gc.enable()
    if done.returncode != 0:
        raise Unavailable(f"{Path(argv[0]).name} exited with {done.returncode}: {message(done.stderr)}")
    return elapsed


def message(data: bytes | str) -> str:
    """The line of a command's error output that says what went wrong: the first naming an error, else the last."""
    text = data.decode(errors="replace") if isinstance(data, bytes) else data
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    named = [line for line in lines if "error" in line.lower()]
    return (named or lines or ["(no message)"])[-1 if not named else 0]


def crun_helper(crun: str, state: str, bundle: str) -> int:
    """Time `crun run` once per line read (a container id), answering one JSON line each."""
    for line in sys.stdin:
        try:
            answer: dict[str, object] = {"ns": spawn([crun, "--root", state, "run", "--bundle", bundle, line.strip()])}
        except Unavailable as error:
            answer = {"error": str(error)}
        print(json.dumps(answer), flush=True)
    return 0


class CrunPeer:
    """The helper process that runs `crun run` in a private mount namespace without the cgroup v2 mount."""

    def __init__(self, unshare: str, crun: str, state: Path, bundle: Path) -> None:
        # Only in the new, private mount namespace: the host keeps its /sys/fs/cgroup/unified.
        script = f'if mountpoint -q {CGROUP_V2_HYBRID}; then umount {CGROUP_V2_HYBRID} || exit 1; fi; exec "$@"'
        helper = [sys.executable, str(Path(__file__).resolve()), "--crun-helper", crun, str(state), str(bundle)]
        self.process = subprocess.Popen(
            [unshare, "-m", "--propagation", "private", "sh", "-c", script, "sh", *helper],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.count = 0

    def __call__(self) -> int:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.count += 1
        self.process.stdin.write(f"pybuild-bench-{os.getpid()}-{self.count}\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise Unavailable(f"the crun helper exited ({self.process.wait()})")
        answer = json.loads(line)
        if "error" in answer:
            raise Unavailable(answer["error"])
        return answer["ns"]

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class InProcess:
    """One pybuild sandbox run of `true` in this process, on a fresh snapshot.

    The timed part is `NamespaceSandbox.run`: fork, namespaces, overlay mount,
    pivot_root, /proc and /dev, exec, teardown. Preparing and removing the
    writable snapshot (store bookkeeping) are timed apart and reported beside it.
    """

    def __init__(self, store_root: Path) -> None:
        try:
            from builder.sandbox import ExecRequest
            from store.images import Store

            try:
                from builder.sandbox import NamespaceSandbox
            except ImportError:  # the implementation's own module, if builder.sandbox does not re-export it
                from builder.namespace_sandbox import NamespaceSandbox
        except ImportError as error:
            raise Unavailable(f"{type(error).__name__}: {error}") from error
        self.store = Store(store_root)
        self.sandbox = NamespaceSandbox()
        self.request = ExecRequest
        self.parts: dict[str, list[int]] = {"checkout": [], "sandbox.run": [], "remove": []}

    def __call__(self) -> int:
        gc.disable()
        try:
            t0 = time.perf_counter_ns()
            rootfs = self.store.checkout(IMAGE)
            t1 = time.perf_counter_ns()
            try:
                result = self.sandbox.run(self.request(argv=("true",), rootfs=rootfs.mounts, network="none"))
                t2 = time.perf_counter_ns()
            finally:
                rootfs.remove()
            t3 = time.perf_counter_ns()
        finally:
            gc.enable()
        if result.status != 0:
            raise Unavailable(f"the sandbox run of `true` ended with status {result.status}")
        for name, ns in zip(self.parts, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            self.parts[name].append(ns)
        return t2 - t1

    def close(self) -> None:
        close = getattr(self.sandbox, "close", None)
        if close is not None:
            close()


class Measure:
    def __init__(self, key: str, label: str, action: Callable[[], int] | None, unavailable: str = "") -> None:
        self.key, self.label, self.action = key, label, action
        self.samples: list[int] = []
        self.problem = unavailable  # "not available: ..." or "failed: ..."; empty while it works
        self.warm = False

    @property
    def ok(self) -> bool:
        return not self.problem and self.action is not None

    def once(self, *, timed: bool) -> None:
        assert self.action is not None
        try:
            ns = self.action()
        except Unavailable as error:
            self.problem = f"{'failed' if self.warm else 'not available'}: {error}"
            return
        except Exception as error:  # noqa: BLE001 -- the pybuild side is new: report, do not break the other measures
            self.problem = f"{'failed' if self.warm else 'not available'}: {type(error).__name__}: {error}"
            return
        self.warm = True
        if timed:
            self.samples.append(ns)

    def stats(self) -> dict[str, float] | None:
        if not self.ok or not self.samples:
            return None
        ms = [ns / 1e6 for ns in self.samples]
        return {
            "median": statistics.median(ms),
            "mean": statistics.fmean(ms),
            "sd": statistics.stdev(ms) if len(ms) > 1 else 0.0,
            "min": min(ms),
            "max": max(ms),
        }


# ---- the run --------------------------------------------------------------------------


class Bench:
    def __init__(self, work: Path, pybuild: Path | None = None) -> None:
        self.work = work
        self.store = work / "store"
        self.bundle = work / "bundle"
        self.pybuild = pybuild or Path(sys.prefix) / "bin" / "pybuild"
        self.crun: CrunPeer | None = None
        self.podman: list[str] | None = None
        self.in_process: InProcess | None = None
        self.podman_env = dict(os.environ, TMPDIR=str(work / "tmp"))
        self.podman_image = ""
        self.containers_dir_existed = Path("/var/lib/containers").exists()

    def run(self, runs: int, warmup: int, json_path: Path | None) -> int:
        started = time.perf_counter()
        print(f"preparing in {self.work} ...", flush=True)
        measures = self.prepare()
        rounds = warmup + runs
        print(
            f"  done in {time.perf_counter() - started:.1f} s; {warmup} warm-up + {runs} timed runs each, "
            "in a random order each round\n",
            flush=True,
        )
        shuffle = random.Random(SEED).shuffle
        for r in range(rounds):
            order = list(measures)
            shuffle(order)
            for measure in order:
                if measure.ok:
                    measure.once(timed=r >= warmup)
        # The same crun runs once more, consecutively: see BACK_TO_BACK.
        crun = next(m for m in measures if m.key == "crun")
        if crun.ok:
            again = Measure("crun_b2b", "crun run, back to back", crun.action)
            again.warm = True
            for r in range(rounds):
                if again.ok:
                    again.once(timed=r >= warmup)
            measures.append(again)
        report = self.report(measures, runs, warmup)
        publish(render(report), report, started, json_path)
        return 0

    def prepare(self) -> list[Measure]:
        (self.work / "tmp").mkdir()
        tarball = self.work / "busybox-rootfs.tar"
        env = dict(os.environ, PATH=f"{self.pybuild.parent}{os.pathsep}{os.environ.get('PATH', '')}")
        made = subprocess.run(
            [sys.executable, str(FIXTURE), str(tarball), "--import", IMAGE, "--store", str(self.store)],
            env=env,
            capture_output=True,
            text=True,
        )
        if not tarball.exists():
            sys.exit(f"bench: could not build the busybox rootfs: {made.stderr.strip() or made.stdout.strip()}")
        imported = "" if made.returncode == 0 else f"the busybox import failed: {message(made.stderr)}"

        true = shutil.which("true") or "/bin/true"
        measures = [Measure("spawn", f"{true} (spawn baseline)", lambda: spawn([true]))]

        unshare = shutil.which("unshare")
        measures.append(
            Measure("floor", "unshare floor", lambda: spawn([unshare, *UNSHARE_FLOOR]))
            if unshare
            else Measure("floor", "unshare floor", None, "not available: unshare not found")
        )
        measures.append(self.prepare_crun(unshare, tarball))

        try:
            if imported:
                raise Unavailable(imported)
            in_process = InProcess(self.store)
            self.in_process = in_process
            measures.append(Measure("in_process", "pybuild sandbox run", in_process))
        except Unavailable as error:
            measures.append(Measure("in_process", "pybuild sandbox run", None, f"not available: {error}"))

        interpreter = script_interpreter(self.pybuild) or sys.executable
        measures.append(Measure("python", "python -c pass (pybuild's #!)", lambda: spawn([interpreter, "-c", "pass"])))
        measures.append(self.prepare_podman(imported))
        pybuild_run = [str(self.pybuild), "--store", str(self.store), "run", "--rm", IMAGE, "true"]
        measures.append(
            Measure("pybuild_run", "pybuild run --rm", lambda: spawn(pybuild_run))
            if not imported
            else Measure("pybuild_run", "pybuild run --rm", None, f"not available: {imported}")
        )
        return measures

    def prepare_crun(self, unshare: str | None, tarball: Path) -> Measure:
        label = "crun run (OCI bundle)"
        crun = shutil.which("crun")
        if crun is None or unshare is None:
            return Measure("crun", label, None, "not available: crun not found (apt-get install crun)")
        if os.geteuid() != 0:
            return Measure("crun", label, None, "not available: needs root")
        rootfs = self.bundle / "rootfs"
        rootfs.mkdir(parents=True)
        subprocess.run(["tar", "-C", str(rootfs), "--numeric-owner", "-xf", str(tarball)], check=True)
        subprocess.run([crun, "spec"], cwd=self.bundle, check=True)
        config_path = self.bundle / "config.json"
        config = json.loads(config_path.read_text())
        config["process"]["terminal"] = False
        config["process"]["args"] = ["true"]
        config_path.write_text(json.dumps(config, indent=2) + "\n")
        state = self.work / "crun-state"
        state.mkdir()
        self.crun = CrunPeer(unshare, crun, state, self.bundle)
        return Measure("crun", label, self.crun)

    def prepare_podman(self, imported: str) -> Measure:
        label = "podman run --rm (runc)"
        podman = shutil.which("podman")
        if podman is None:
            return Measure("podman", label, None, "not available: podman not found")
        if os.geteuid() != 0:
            return Measure("podman", label, None, "not available: needs root")
        if imported:
            return Measure("podman", label, None, f"not available: {imported}")
        archive = self.work / "busybox-oci.tar"
        saved = subprocess.run(
            [str(self.pybuild), "--store", str(self.store), "save", IMAGE, "-o", str(archive)],
            capture_output=True,
            text=True,
        )
        if saved.returncode != 0:
            return Measure("podman", label, None, f"not available: pybuild save: {message(saved.stderr)}")
        # A private storage: the host's podman images and containers are never touched.
        self.podman = [
            podman,
            "--root",
            str(self.work / "podman-root"),
            "--runroot",
            str(self.work / "podman-runroot"),
            "--tmpdir",
            str(self.work / "podman-tmp"),
        ]
        loaded = subprocess.run(
            [*self.podman, "load", "-i", str(archive)], capture_output=True, text=True, env=self.podman_env
        )
        found = re.search(r"Loaded image(?:\(s\))?: *(\S+)", loaded.stdout + loaded.stderr)
        if loaded.returncode != 0 or not found:
            return Measure("podman", label, None, f"not available: podman load: {message(loaded.stderr)}")
        self.podman_image = found.group(1)
        argv = [*self.podman, *PODMAN_RUN, self.podman_image, "true"]
        return Measure("podman", label, lambda: spawn(argv, self.podman_env))

    def close(self) -> None:
        if self.crun is not None:
            self.crun.close()
        if self.in_process is not None:
            self.in_process.close()
        if self.podman is not None:
            quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": self.podman_env}
            subprocess.run([*self.podman, "rm", "--all", "--force"], **quiet)
            if self.podman_image:
                subprocess.run([*self.podman, "rmi", "--force", self.podman_image], **quiet)
            self.podman = None
        # `podman load` creates /var/lib/containers/cache (its blob-info cache) even with --root.
        remove_containers_cache(self.containers_dir_existed)

    # ---- the report -----------------------------------------------------------------------

    def report(self, measures: list[Measure], runs: int, warmup: int) -> dict:
        rows = {}
        for m in measures:
            rows[m.key] = {"label": m.label, "problem": m.problem, "stats": m.stats(), "samples_ns": m.samples}
            if isinstance(m.action, InProcess) and m.ok:
                rows[m.key]["parts"] = {name: statistics.median(ns) / 1e6 for name, ns in m.action.parts.items() if ns}
        return {"machine": machine(), "versions": versions(self.pybuild), "runs": runs, "warmup": warmup, "rows": rows}


def render(report: dict) -> str:
    rows = report["rows"]
    median = lambda key: rows[key]["stats"]["median"] if rows[key]["stats"] else None
    spawn_ms, floor, podman = median("spawn"), median("floor"), median("podman")
    header = f"{'':<36}{'median':>10}{'mean ± sd':>18}{'min':>10}{'- spawn':>10}{'ratio':>10}"

    def line(key: str, reference: float | None, what: str, subprocess_row: bool = True) -> str:
        row = rows[key]
        stats = row["stats"]
        if stats is None:
            return f"  {row['label']:<34}{row['problem'] or 'not measured'}"
        net = f"{stats['median'] - spawn_ms:.2f}" if subprocess_row and spawn_ms is not None and key != "spawn" else ""
        ratio = f"{stats['median'] / reference:.2f}x" if reference and key not in ("spawn",) else ""
        spread = f"{stats['mean']:.2f} ± {stats['sd']:.2f}"
        return f"  {row['label']:<34}{stats['median']:>10.2f}{spread:>18}{stats['min']:>10.2f}{net:>10}{ratio:>10}" + (
            f" {what}" if ratio else ""
        )

    out = [
        f"SANDBOX RUN OF `true`, ms (median of {report['runs']} interleaved runs after {report['warmup']} warm-up, "
        "wall time per invocation)",
        "ratio = median / median of the unshare floor; '- spawn' = median less the /bin/true spawn baseline",
        f"(peers measured here before: {PEERS_HERE})",
        "",
        header,
        "  subprocess.run from Python",
        line("spawn", None, ""),
        line("floor", floor, "floor"),
        line("crun", floor, "floor"),
        *([line("crun_b2b", floor, "floor")] if "crun_b2b" in rows else []),
        "  in this process, no subprocess",
        line("in_process", floor, "floor", subprocess_row=False),
    ]
    parts = rows["in_process"].get("parts")
    if parts:
        out.append(
            "    around it (medians, untimed above): "
            + ", ".join(f"{name} {ms:.2f}" for name, ms in parts.items() if name != "sandbox.run")
            + f"; checkout + run + remove {sum(parts.values()):.2f}"
        )
    if "crun_b2b" in rows:
        out.append(f"  {BACK_TO_BACK}")
    out += [
        "",
        "WHOLE PROCESS, ms (subprocess.run; ratio = median / median of podman run)",
        "",
        header,
        line("python", podman, "podman"),
        line("podman", podman, "podman"),
        line("pybuild_run", podman, "podman"),
        "",
        "TARGETS",
    ]
    in_process, crun, pybuild_run = median("in_process"), median("crun"), median("pybuild_run")
    out.append(
        target(
            f"in-process <= {TARGET_FLOOR:.1f}x the unshare floor",
            in_process,
            floor,
            lambda a, b: a <= TARGET_FLOOR * b,
            ratio=True,
            rows=rows,
            keys=("in_process", "floor"),
        )
    )
    out.append(
        target(
            "in-process below crun run",
            in_process,
            crun,
            lambda a, b: a < b,
            ratio=False,
            rows=rows,
            keys=("in_process", "crun"),
        )
    )
    b2b = median("crun_b2b") if "crun_b2b" in rows else None
    if in_process is not None and b2b is not None:
        out[-1] += f"; below crun back to back ({b2b:.2f} ms): {'yes' if in_process < b2b else 'no'}"
    out.append(
        target(
            f"pybuild run <= {TARGET_PODMAN:.1f}x podman run",
            pybuild_run,
            podman,
            lambda a, b: a <= TARGET_PODMAN * b,
            ratio=True,
            rows=rows,
            keys=("pybuild_run", "podman"),
        )
    )
    out += ["", "machine: " + report["machine"], "versions: " + "; ".join(report["versions"])]
    return "\n".join(out)


def target(
    name: str,
    mine: float | None,
    peer: float | None,
    holds: Callable[[float, float], bool],
    *,
    ratio: bool,
    rows: dict,
    keys: tuple[str, str],
) -> str:
    text = f"  {name}: "
    if mine is None or peer is None:
        missing = [
            rows[k]["label"] + " " + (rows[k]["problem"] or "not measured") for k in keys if rows[k]["stats"] is None
        ]
        return text + "not measured (" + "; ".join(missing) + ")"
    verdict = "yes" if holds(mine, peer) else "no"
    detail = f"{mine / peer:.2f}x" if ratio else f"{mine:.2f} vs {peer:.2f} ms"
    return text + f"{verdict} ({detail})"


# ---- machine facts ------------------------------------------------------------------------


def machine() -> str:
    memory = ""
    try:
        with open("/proc/meminfo") as f:
            kib = int(next(line.split()[1] for line in f if line.startswith("MemTotal:")))
        memory = f", {kib / (1 << 20):.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    return (
        f"{platform.machine()}, {os.cpu_count()} cores{memory}, Linux {platform.release()}, "
        f"Python {platform.python_version()}, cgroups {cgroup_layout()}"
    )


def cgroup_layout() -> str:
    v1: list[str] = []
    v2: list[str] = []
    with open("/proc/self/mountinfo") as f:
        for entry in f:
            left, _, right = entry.partition(" - ")
            point, fstype, options = (
                left.split()[4],
                right.split()[0],
                right.split()[2] if len(right.split()) > 2 else "",
            )
            if fstype == "cgroup":
                v1 += [o for o in options.split(",") if o not in ("rw", "ro") and not o.startswith("relatime")]
            elif fstype == "cgroup2":
                try:
                    controllers = Path(point, "cgroup.controllers").read_text().split()
                except OSError:
                    controllers = []
                v2.append(f"v2 at {point} ({' '.join(controllers) or 'no controllers'})")
    kind = "hybrid" if v1 and v2 else ("v1" if v1 else ("v2" if v2 else "none mounted"))
    parts = ([f"v1: {','.join(v1)}"] if v1 else []) + v2
    return f"{kind}: " + "; ".join(parts) if parts else kind


def versions(pybuild: Path) -> list[str]:
    found = []
    for tool in ("crun", "runc", "podman", "unshare", "conmon"):
        path = shutil.which(tool)
        if path is None:
            found.append(f"{tool} not found")
            continue
        done = subprocess.run([path, "--version"], capture_output=True, text=True)
        found.append(last_first_line(done.stdout or done.stderr) or f"{tool} (version unknown)")
    try:
        from importlib.metadata import version

        found.append(f"pybuild {version('pybuild')} ({pybuild})")
    except Exception:  # noqa: BLE001
        found.append(f"pybuild ({pybuild})")
    return found


def last_first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else ""


def script_interpreter(script: Path) -> str | None:
    """The interpreter named on a console script's `#!` line."""
    try:
        first = script.read_text(encoding="utf-8").splitlines()[0]
    except (OSError, IndexError, UnicodeDecodeError):
        return None
    return first[2:].strip() if first.startswith("#!") else None


def remove_containers_cache(existed: bool) -> None:
    """Take back the /var/lib/containers/cache that podman and buildah make even with --root, if this run made it."""
    containers = Path("/var/lib/containers")
    if existed or not containers.exists():
        return
    (containers / "cache" / "blob-info-cache-v1.boltdb").unlink(missing_ok=True)
    remove_empty_dirs(containers)


def publish(text: str, report: dict, started: float, json_path: Path | None) -> None:
    """Print the rendered report and the run's total time; write the figures as JSON when asked."""
    print(text)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"figures written to {json_path}")


def remove_work(work: Path, *, keep: bool) -> None:
    """Delete a bench's working directory (unmounting what a failed run left in it), or say where it was kept."""
    if keep:
        print(f"kept {work}")
    else:
        unmount_under(work)
        shutil.rmtree(work, ignore_errors=True)


def remove_empty_dirs(top: Path) -> None:
    """Remove `top` and the directories below it, deepest first, leaving any that are not empty (or in use)."""
    for directory in [*sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(str(p))), top]:
        try:
            directory.rmdir()
        except OSError:
            pass


def unmount_under(root: Path) -> None:
    """Lazily unmount whatever a failed run left mounted below `root` (deepest first) before it is deleted."""
    prefix = str(root.resolve()) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [entry.split()[4] for entry in f]
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    sys.exit(main())
