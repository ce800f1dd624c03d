"""Parse benchmark: pybuild's recipe parser against BuildKit's own Go parser.

Run `python3 bench/parse_bench.py [--json FILE]` with any Python 3. It keeps a
virtualenv at bench/.venv (created once) holding the `dockerfile` package
(BuildKit's parser wrapped for Python) and pybuild itself, reinstalls pybuild
from this checkout on every run, and re-executes its measuring part there.

It reports, in one run:
  1. in-process throughput (instructions/s) of `dockerfile.parse_string`,
     `grammar.parse_syntax` and `grammar.parse` on a generated 2,000-instruction
     recipe and on every recipe in fixtures/recipes/real/;
  2. whole-process wall time of `pybuild parse` and `pybuild parse --json` on
     python-app.Dockerfile against `python -c pass` (hyperfine);
  3. whether `grammar.to_json(grammar.parse_syntax(text))` equals the Go
     parser's result for every text measured.
It reports and never asserts: the exit status is 0 unless the bench breaks.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VENV = HERE / ".venv"
VENV_PYTHON = VENV / "bin" / "python"
REAL_RECIPES = REPO / "fixtures" / "recipes" / "real"
STARTUP_RECIPE = "fixtures/recipes/real/python-app.Dockerfile"  # relative to REPO

GENERATED_INSTRUCTIONS = 2000
MIN_SECONDS = 0.3  # no timed loop may be shorter
CALIBRATE_SECONDS = 0.4  # loop length aimed at, so noise keeps loops above MIN_SECONDS
WARMUP_SECONDS = 0.1
REPEATS = 5
THROUGHPUT_TARGET = 1.0  # pybuild syntax tree / Go parser, instructions per second
STARTUP_TARGET = 3.0  # `pybuild parse` / bare interpreter start, wall time
HYPERFINE_ARGS = ["-N", "--warmup", "5", "--runs", "30", "--style", "none"]
MAX_DIFFS_SHOWN = 10
NOT_SOURCE = (".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="FILE", type=Path, help="also write the figures to FILE as JSON")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # set by the re-execution
    args = parser.parse_args()
    if args.measure:
        return measure(args.json)
    prepare_venv()
    command = [str(VENV_PYTHON), str(Path(__file__).resolve()), "--measure"]
    if args.json:
        command += ["--json", str(args.json.resolve())]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    os.execve(command[0], command, env)


# ---- the bench's own environment -----------------------------------------------------


def prepare_venv() -> None:
    """Create bench/.venv once (project + dockerfile), then reinstall the project."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        # Built from a copy: setuptools would leave build/ and *.egg-info in the checkout.
        source = Path(scratch) / "pybuild"
        shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
        if not VENV_PYTHON.exists():
            create_venv(source)
        run_step(pip("install", "--force-reinstall", "--no-deps", str(source)), f"reinstall pybuild from {REPO}")
    print(f"bench: reinstalled pybuild from {REPO} into {VENV} ({time.perf_counter() - started:.1f} s)", flush=True)


def create_venv(source: Path) -> None:
    print(f"bench: creating {VENV} with {sys.executable} ...", flush=True)
    try:
        run_step([sys.executable, "-m", "venv", str(VENV)], "create the bench virtualenv")
        run_step(pip("install", str(source), "dockerfile"), "install pybuild and dockerfile into it")
    except SystemExit:
        shutil.rmtree(VENV, ignore_errors=True)  # the next run starts over
        raise


def pip(*args: str) -> list[str]:
    return [str(VENV_PYTHON), "-m", "pip", "--quiet", "--disable-pip-version-check", *args]


def run_step(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        sys.exit(f"bench: could not {what}: `{shlex.join(command)}` exited with {result.returncode}")


# ---- the generated recipe ------------------------------------------------------------

# One stage's body, one instruction per entry; {n} numbers the instruction,
# {prev} is the previous stage (or an image in stage 0), {port} a port.
_STAGE_BODY = [
    "ARG COMPONENT_{n}_VERSION=1.{k}.{n}",
    'ENV APP_HOME_{n}=/opt/app{n} APP_MODE_{n}="release build" PATH=/opt/app{n}/bin:$PATH',
    'LABEL com.example.component{n}.name="component {n}" com.example.component{n}.tier=backend',
    "RUN apt-get update \\\n    && apt-get install -y --no-install-recommends libfoo{n} libbar{n}-dev \\\n"
    "    && rm -rf /var/lib/apt/lists/*",
    "WORKDIR /srv/app/component{n}",
    "COPY --chown=1000:1000 --chmod=0644 src/component{n}/ /srv/app/component{n}/",
    "# the Python dependencies of component {n}\nRUN --mount=type=cache,target=/root/.cache/pip \\\n"
    '    pip install --no-compile "component{n}==1.{k}.0" requests==2.32.{k}',
    "RUN set -eux; \\\n    mkdir -p /var/lib/app{n} /var/log/app{n}; \\\n"
    "    chown -R 1000:1000 /var/lib/app{n} && chmod 0750 /var/log/app{n}",
    "ADD --chown=1000:1000 --link vendor/bundle-{n}.tar.gz /opt/vendor/{n}/",
    "\nRUN make -C /srv/app/component{n} -j2 all \\\n# comments inside a continuation vanish\n"
    "    && make -C /srv/app/component{n} install",
    "COPY --from={prev} /srv/app/ /srv/app/",
    'COPY ["config/settings {n}.json", "/etc/app/"]',
    'RUN <<EOF\nset -e\necho "building component {n}"\ncat > /etc/app{n}.conf <<CONF\nlisten={port}\nCONF\nEOF',
    "ENV LEGACY_{n} old style value {n}",
    "RUN --mount=type=secret,id=npmrc,target=/root/.npmrc --network=none npm ci --prefix /srv/app/web{n}",
    "RUN python -m compileall -q /srv/app/component{n} && find /srv/app -name '*.pyc' | wc -l",
    "EXPOSE {port}/tcp {port}/udp",
    "USER 1000:1000",
    'HEALTHCHECK --interval=30s --timeout=5s CMD ["/srv/app/bin/check", "--component", "{n}"]',
    'CMD ["python", "-m", "component{n}", "--port", "{port}"]',
]


def generate_recipe(count: int = GENERATED_INSTRUCTIONS) -> str:
    """A deterministic multi-stage recipe of exactly `count` instructions."""
    chunks = [
        "# syntax=docker/dockerfile:1",
        "# Generated by bench/parse_bench.py: a large multi-stage build.",
        "ARG BASE_IMAGE=debian:bookworm-slim",
        "ARG APP_VERSION=1.0.0",
    ]
    instructions = 2
    stage = 0
    while instructions < count:
        for chunk in _stage(stage)[: count - instructions]:
            chunks.append(chunk)
            instructions += 1
        stage += 1
    return "\n".join(chunks) + "\n"


def _stage(k: int) -> list[str]:
    base = "${BASE_IMAGE}" if k % 3 == 0 else f"stage{k - 1:03d}"
    prev = f"stage{k - 1:03d}" if k else "busybox:1.36"
    head = f"\n# ---- stage {k} ----\nFROM {base} AS stage{k:03d}"
    body = [
        template.format(n=k * 100 + j, k=k, prev=prev, port=8000 + (k * 7 + j) % 1000)
        for j, template in enumerate(_STAGE_BODY)
    ]
    return [head, *body]


# ---- measuring -------------------------------------------------------------------------


def measure(json_path: Path | None) -> int:
    if shutil.which("hyperfine") is None:
        sys.exit("bench: hyperfine is missing (apt-get install hyperfine)")
    import dockerfile
    import grammar

    texts = {f"generated-{GENERATED_INSTRUCTIONS}": generate_recipe()}
    texts.update((p.name, p.read_text(encoding="utf-8")) for p in sorted(REAL_RECIPES.glob("*.Dockerfile")))
    report = {"environment": environment(grammar), "texts": {}}
    print(header(report["environment"]), flush=True)
    for name, text in texts.items():
        print(f"bench: measuring {name} ...", flush=True)
        report["texts"][name] = measure_text(text, grammar, dockerfile)
    print("bench: running hyperfine ...", flush=True)
    report["startup"] = measure_startup()
    summarize(report)
    print(render(report))
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"\nfigures written to {json_path}")
    return 0


def environment(grammar: object) -> dict:
    from importlib.metadata import version

    hyperfine = subprocess.run(["hyperfine", "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "python": f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})",
        "pybuild": f"{version('pybuild')} from {Path(grammar.__file__).parent}",  # type: ignore[attr-defined]
        "dockerfile": version("dockerfile"),
        "hyperfine": hyperfine,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def header(env: dict) -> str:
    return "\n".join(f"{key:>10}: {value}" for key, value in env.items())


def measure_text(text: str, grammar, dockerfile) -> dict:
    """Compare pybuild's syntax tree with the Go parser's, then time all three parsers."""
    go, go_error = attempt(dockerfile.parse_string, text)
    ours, ours_error = attempt(lambda t: grammar.to_json(grammar.parse_syntax(t)), text)
    _, typed_error = attempt(grammar.parse, text)
    result = {
        "lines": text.count("\n"),
        "bytes": len(text.encode("utf-8")),
        "instructions": len(go) if go is not None else len(ours or ()),
        "errors": {k: v for k, v in (("go", go_error), ("syntax", ours_error), ("typed", typed_error)) if v},
        "differences": differences(ours, go_as_json(go)) if go is not None and ours is not None else [],
    }
    parsers = {
        "go": (dockerfile.parse_string, go_error),
        "syntax": (grammar.parse_syntax, ours_error),
        "typed": (grammar.parse, typed_error),
    }
    result["timings"] = time_parsers({k: fn for k, (fn, error) in parsers.items() if not error}, text)
    return result


def attempt(fn, text: str) -> tuple[object, str | None]:
    try:
        return fn(text), None
    except Exception as exc:  # noqa: BLE001 - a parser failing is a finding, not a bench failure
        return None, f"{type(exc).__name__}: {exc}"


def go_as_json(commands) -> list[dict]:
    """The Go parser's commands in the shape of `grammar.to_json`, words upper-cased."""
    return [
        {
            "cmd": c.cmd.upper(),
            "sub_cmd": c.sub_cmd.upper() if c.sub_cmd else None,
            "json": c.json,
            "original": c.original,
            "start_line": c.start_line,
            "end_line": c.end_line,
            "flags": list(c.flags),
            "value": list(c.value),
            "heredocs": [
                {"name": h.name, "file_descriptor": h.file_descriptor, "content": h.content} for h in c.heredocs
            ],
        }
        for c in commands
    ]


def differences(ours: list[dict], go: list[dict]) -> list[dict]:
    """Every field where pybuild's instruction differs from the Go parser's."""
    found = []
    if len(ours) != len(go):
        found.append({"index": None, "field": "instruction count", "pybuild": len(ours), "go": len(go)})
    for index, (mine, theirs) in enumerate(zip(ours, go, strict=False)):
        for field in theirs:
            if mine.get(field) != theirs[field]:
                found.append(
                    {
                        "index": index,
                        "line": theirs["start_line"],
                        "original": theirs["original"],
                        "field": field,
                        "pybuild": mine.get(field),
                        "go": theirs[field],
                    }
                )
    return found


def time_parsers(parsers: dict, text: str) -> dict:
    """Per-call seconds of each parser: warm-up, calibration, then interleaved timed loops."""
    gc.collect()
    gc.disable()
    try:
        for fn in parsers.values():
            warm_up(fn, text)
        loops = {name: calibrate(fn, text) for name, fn in parsers.items()}
        runs: dict[str, list[tuple[float, int]]] = {name: [] for name in parsers}
        for _ in range(REPEATS):  # interleaved, so drift of the machine hits every parser alike
            for name, fn in parsers.items():
                seconds, loops[name] = timed_loop(fn, text, loops[name])
                runs[name].append((seconds, loops[name]))
    finally:
        gc.enable()
    return {name: figures(timed) for name, timed in runs.items()}


def figures(timed: list[tuple[float, int]]) -> dict:
    per_call = [seconds / loops for seconds, loops in timed]
    return {
        "loops": [loops for _, loops in timed],
        "loop_seconds": [seconds for seconds, _ in timed],
        "best": min(per_call),
        "median": statistics.median(per_call),
    }


def warm_up(fn, text: str) -> None:
    deadline = time.perf_counter() + WARMUP_SECONDS
    calls = 0
    while calls < 3 or time.perf_counter() < deadline:
        fn(text)
        calls += 1


def calibrate(fn, text: str) -> int:
    """The number of calls that makes one timed loop last about CALIBRATE_SECONDS."""
    loops = 1
    while True:
        elapsed = run_loops(fn, text, loops)
        if elapsed >= CALIBRATE_SECONDS:
            return loops
        loops = max(loops + 1, math.ceil(loops * CALIBRATE_SECONDS * 1.1 / max(elapsed, 1e-6)))


def timed_loop(fn, text: str, loops: int) -> tuple[float, int]:
    """One timed loop of at least MIN_SECONDS: (seconds, calls), doubling the calls if it was short."""
    while (elapsed := run_loops(fn, text, loops)) < MIN_SECONDS:
        loops *= 2
    return elapsed, loops


def run_loops(fn, text: str, loops: int) -> float:
    start = time.perf_counter()
    for _ in range(loops):
        fn(text)
    return time.perf_counter() - start


# ---- start-up ------------------------------------------------------------------------


def measure_startup() -> dict:
    """hyperfine over `python -c pass`, `pybuild parse` and `pybuild parse --json`."""
    pybuild = VENV / "bin" / "pybuild"
    python = script_interpreter(pybuild)
    commands = {
        "python -c pass": [python, "-c", "pass"],
        "pybuild parse": [str(pybuild), "parse", STARTUP_RECIPE],
        "pybuild parse --json": [str(pybuild), "parse", "--json", STARTUP_RECIPE],
    }
    result: dict = {"interpreter": python, "recipe": STARTUP_RECIPE, "commands": {}}
    for name, argv in commands.items():
        check = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
        if check.returncode != 0:
            result["failed"] = f"`{shlex.join(argv)}` exited with {check.returncode}: {check.stderr.strip()}"
            return result
        if name == "pybuild parse --json":
            result["json_output"] = check.stdout
    with tempfile.TemporaryDirectory() as scratch:
        export = Path(scratch) / "hyperfine.json"
        hyperfine = ["hyperfine", *HYPERFINE_ARGS, "--export-json", str(export)]
        hyperfine += [shlex.join(argv) for argv in commands.values()]
        run = subprocess.run(hyperfine, cwd=REPO, capture_output=True, text=True)
        if run.returncode != 0:
            result["failed"] = f"hyperfine exited with {run.returncode}: {run.stderr.strip()}"
            return result
        measured = json.loads(export.read_text())["results"]
    keys = ("command", "median", "mean", "stddev", "min", "max")
    for name, row in zip(commands, measured, strict=True):
        result["commands"][name] = {k: row[k] for k in keys}
    return result


def script_interpreter(script: Path) -> str:
    """The interpreter named on a console script's `#!` line."""
    first = script.read_text(encoding="utf-8").splitlines()[0]
    if not first.startswith("#!"):
        sys.exit(f"bench: {script} has no #! line")
    return first[2:].strip()


# ---- the report ----------------------------------------------------------------------


def summarize(report: dict) -> None:
    """Add the ratios and verdicts to the measured figures."""
    for t in report["texts"].values():
        timings = t["timings"]
        t["ratio_syntax"] = ratio(timings.get("go"), timings.get("syntax"))
        t["ratio_typed"] = ratio(timings.get("go"), timings.get("typed"))
        t["target_met"] = None if t["ratio_syntax"] is None else t["ratio_syntax"] >= THROUGHPUT_TARGET
    startup = report["startup"]
    if startup["commands"]:
        bare = startup["commands"]["python -c pass"]["median"]
        for c in startup["commands"].values():
            c["ratio"] = c["median"] / bare
    if "json_output" in startup:
        import dockerfile

        text = (REPO / startup["recipe"]).read_text(encoding="utf-8")
        printed = json.loads(startup.pop("json_output"))
        startup["console_json_matches_go"] = printed == go_as_json(dockerfile.parse_string(text))


def render(report: dict) -> str:
    sections = [
        render_throughput(report["texts"]),
        render_startup(report["startup"]),
        render_agreement(report),
        render_targets(report),
    ]
    return "\n\n".join(sections)


def render_throughput(texts: dict) -> str:
    rows = [
        f"PARSE THROUGHPUT, instructions/s (median of {REPEATS} interleaved timed loops, each >= {MIN_SECONDS} s "
        f"after warm-up, gc off; best-of-{REPEATS} in brackets)",
        f"ratio = pybuild / Go on the same text; target: syntax tree >= {THROUGHPUT_TARGET:.1f}x",
        "",
        f"{'recipe':<28}{'instr':>6}{'lines':>7}  {'Go (BuildKit)':>22}  {'pybuild parse_syntax':>22}"
        f"{'ratio':>7}  {'met':<4}{'pybuild parse (typed)':>24}{'ratio':>7}",
    ]
    shortest = []
    for name, t in texts.items():
        timings = t["timings"]
        shortest += [s for figures in timings.values() for s in figures["loop_seconds"]]
        go, syntax, typed = (timings.get(k) for k in ("go", "syntax", "typed"))
        rows.append(
            f"{name:<28}{t['instructions']:>6}{t['lines']:>7}  {rate(go, t):>22}  {rate(syntax, t):>22}"
            f"{times(t['ratio_syntax']):>7}  {yes_no(t['target_met']):<4}{rate(typed, t):>24}"
            f"{times(t['ratio_typed']):>7}"
        )
    if shortest:
        rows.append(f"\nshortest timed loop: {min(shortest):.3f} s")
    return "\n".join(rows)


def ratio(go: dict | None, ours: dict | None) -> float | None:
    """Throughput ratio pybuild / Go (medians): Go's seconds per call over ours."""
    return None if go is None or ours is None else go["median"] / ours["median"]


def rate(figures: dict | None, text: dict) -> str:
    if figures is None:
        return "failed"
    n = text["instructions"]
    return f"{n / figures['median']:,.0f} [{n / figures['best']:,.0f}]"


def times(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def yes_no(value: bool | None) -> str:
    return "n/a" if value is None else ("yes" if value else "NO")


def render_startup(startup: dict) -> str:
    rows = [
        "PROCESS WALL TIME (hyperfine " + " ".join(HYPERFINE_ARGS[:5]) + f"; recipe {startup['recipe']})",
        f"interpreter for -c pass: {startup['interpreter']} (the #! of the pybuild console script)",
        f"ratio = median / median of `python -c pass`; target: pybuild parse <= {STARTUP_TARGET:.1f}x",
        "",
    ]
    if "failed" in startup:
        return "\n".join(rows + [f"NOT MEASURED: {startup['failed']}"])
    rows.append(f"{'command':<24}{'median':>10}{'mean ± sd':>20}{'min':>10}{'ratio':>8}  met")
    for name, c in startup["commands"].items():
        met = "" if name == "python -c pass" else yes_no(c["ratio"] <= STARTUP_TARGET)
        spread = f"{ms(c['mean'])} ± {ms(c['stddev'])}"
        rows.append(f"{name:<24}{ms(c['median']):>10}{spread:>20}{ms(c['min']):>10}{c['ratio']:>7.2f}x  {met}")
    return "\n".join(rows)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def render_agreement(report: dict) -> str:
    rows = ["SAME RESULT AS THE GO PARSER (grammar.to_json(grammar.parse_syntax(text)) vs dockerfile.parse_string)"]
    for name, t in report["texts"].items():
        for parser, error in t["errors"].items():
            rows.append(f"{name}: {parser} parser FAILED: {error}")
        if not t["differences"] and "go" not in t["errors"] and "syntax" not in t["errors"]:
            rows.append(f"{name}: identical ({t['instructions']} instructions)")
        elif t["differences"]:
            rows.append(f"{name}: {len(t['differences'])} DIFFERENCES")
            rows += [f"    {describe(d)}" for d in t["differences"][:MAX_DIFFS_SHOWN]]
    rows.append(console_agreement(report["startup"]))
    return "\n".join(rows)


def describe(d: dict) -> str:
    if d["index"] is None:
        return f"{d['field']}: pybuild {d['pybuild']}, Go {d['go']}"
    return f"line {d['line']} {d['original']!r}: {d['field']}: pybuild {d['pybuild']!r}, Go {d['go']!r}"


def console_agreement(startup: dict) -> str:
    same = startup.get("console_json_matches_go")
    if same is None:
        return "console `pybuild parse --json`: not run"
    verdict = "identical to" if same else "DIFFERENT FROM"
    return f"console `pybuild parse --json {startup['recipe']}`: {verdict} the Go parser's result"


def render_targets(report: dict) -> str:
    texts = report["texts"].values()
    met = [t["target_met"] for t in texts if t["target_met"] is not None]
    lines = [
        "TARGETS",
        f"  throughput >= {THROUGHPUT_TARGET:.1f}x Go (syntax tree): met on {sum(met)} of {len(met)} texts",
    ]
    commands = report["startup"]["commands"]
    startup = f"  pybuild parse <= {STARTUP_TARGET:.1f}x interpreter start: "
    if commands:
        r = commands["pybuild parse"]["ratio"]
        lines.append(startup + f"{yes_no(r <= STARTUP_TARGET)} ({r:.2f}x)")
    else:
        lines.append(startup + "not measured")
    diverging = [name for name, t in report["texts"].items() if t["differences"] or {"go", "syntax"} & set(t["errors"])]
    lines.append(f"  same syntax tree as Go: {'all texts' if not diverging else 'NOT for ' + ', '.join(diverging)}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
