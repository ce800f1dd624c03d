"""`pybuild build [OPTIONS] CONTEXT` (also `pybuild -f Recipefile CONTEXT`): build an image into the store."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..argv import UsageError

if TYPE_CHECKING:
    from ..console import Console
    from ..executor import BuildResult

__all__ = ["run"]


def run(args: dict[str, object], console: Console) -> int:
    from ..api import build
    from .images import open_store

    progress_mode = "quiet" if args["quiet"] else str(args["progress"] or "auto")
    if progress_mode not in ("auto", "plain", "json", "tty", "quiet"):
        raise UsageError(f"--progress {progress_mode}: expected auto, plain, json, tty or quiet")
    network = str(args["network"] or "default")
    if network not in ("default", "none", "host"):
        raise UsageError(f"--network {network}: expected default, none or host")
    outputs = []
    if args["output"]:
        from ..outputs import parse_output

        outputs = [parse_output(str(o)) for o in args["output"]]  # type: ignore[attr-defined]
    progress = None
    if progress_mode != "quiet":
        from .build_output import renderer

        progress = renderer(progress_mode, console.err)
    try:
        result = build(
            str(args["context"]),
            recipe=str(args["file"]) if args["file"] else None,
            target=str(args["target"]) if args["target"] else None,
            build_args=_pairs(args["build_arg"], "--build-arg", environment=True),  # type: ignore[arg-type]
            tags=[str(t) for t in args["tag"]],  # type: ignore[attr-defined]
            labels=_pairs(args["label"], "--label"),  # type: ignore[arg-type]
            store=open_store(args),
            no_cache=bool(args["no_cache"]),
            no_cache_filter=[str(s).lower() for s in args["no_cache_filter"]],  # type: ignore[attr-defined]
            secrets=_secrets(args["secret"]),  # type: ignore[arg-type]
            memory=_memory(args["memory"]),
            cpus=_cpus(args["cpus"]),
            network="host" if network == "default" else network,
            platform=str(args["platform"]) if args["platform"] else None,
            outputs=outputs,
            progress=progress,
        )
    finally:
        close = getattr(progress, "close", None)
        if close is not None:
            close()
    if args["iidfile"]:
        with open(str(args["iidfile"]), "w") as f:
            f.write(result.image_id)
    if args["explain_cache"]:
        _explain(result, console)
    if progress_mode == "quiet":
        console.print(result.image_id)
    return 0


def _explain(result: BuildResult, console: Console) -> None:
    missed = [s for s in result.steps if s.layer_step and not s.cached]
    if not missed:
        console.err.write("cache: every step was cached\n")
        return
    console.err.write(f"cache: {len(missed)} step(s) rebuilt:\n")
    for step in missed:
        console.err.write(f"  #{step.number} [{step.stage}] {step.text} ({step.location})\n")
        for reason in step.reasons:
            console.err.write(f"      {reason}\n")


def _pairs(items: list[str], option: str, *, environment: bool = False) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not key:
            raise UsageError(f"{option} {item}: expected KEY=VALUE")
        if not sep:
            if not environment:
                raise UsageError(f"{option} {item}: expected KEY=VALUE")
            if key not in os.environ:  # docker build --build-arg KEY: the caller's value, if any
                continue
            value = os.environ[key]
        out[key] = value
    return out


def _secrets(items: list[str]):  # type: ignore[no-untyped-def]
    if not items:
        return {}
    from ..run_mounts import Secret

    out = {}
    for item in items:
        fields = dict(part.partition("=")[::2] for part in item.split(","))
        secret_id = fields.get("id")
        if not secret_id or not (fields.get("src") or fields.get("source") or fields.get("env")):
            raise UsageError(f"--secret {item}: expected id=ID,src=FILE or id=ID,env=VARIABLE")
        path = fields.get("src") or fields.get("source")
        if path is not None and not os.path.isfile(path):
            raise UsageError(f"--secret {item}: {path} is not a file")
        out[secret_id] = Secret(secret_id, path=path, env=fields.get("env"))
    return out


def _memory(value: object) -> int | None:
    if not value:
        return None
    from ..cgroups import parse_size

    try:
        return parse_size(str(value))
    except ValueError as exc:
        raise UsageError(f"--memory {value}: {exc}") from None


def _cpus(value: object) -> float | None:
    if not value:
        return None
    try:
        cpus = float(str(value))
    except ValueError:
        raise UsageError(f"--cpus {value}: not a number") from None
    if cpus <= 0:
        raise UsageError(f"--cpus {value}: must be positive")
    return cpus

