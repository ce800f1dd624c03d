"""Build records: what each layer step of the last build of a recipe was keyed on, and the steps' full logs.

The cache can only say *that* a key missed. To say *why*, every build keeps,
per recipe file, context and target, the `op` fields and source files of its
layer steps in `<store>/builder/builds/<id>.json`; the next build compares a
missed step with the closest step of that record: the one that ran on the
same parent (same key chain so far), else the one in the same place of the
same stage. What differs is the reason: `env FOO: 1 -> 2`, `file changed:
src/app.py`, `argv: ...`; a step whose own fields are unchanged missed
because a step before it was rebuilt, which is named.

RUN output is kept whole, one file per step, in
`<store>/builder/logs/<build>/<step>.log` (the last 20 builds are kept).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from .cachekey import changes

if TYPE_CHECKING:
    from .progress import StepInfo

__all__ = ["BuildRecord", "previous_record"]

_KEEP_LOGS = 20
_VERSION = 1


def _record_id(recipe: str, context: str | os.PathLike[str], target: str) -> str:
    text = "\0".join((os.path.abspath(recipe), os.path.abspath(context), target))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def previous_record(store_root: Path, recipe: str, context: str | os.PathLike[str], target: str) -> BuildRecord | None:
    """The record of the last build of this recipe, context and target in this store, if readable."""
    path = store_root / "builder" / "builds" / f"{_record_id(recipe, context, target)}.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("version") != _VERSION or not isinstance(data.get("steps"), list):
        return None
    record = BuildRecord(path, None)
    record.steps = [s for s in data["steps"] if isinstance(s, dict)]
    return record


class BuildRecord:
    """One build's step records (see the module docstring); `explain` compares a new step with them."""

    def __init__(self, path: Path, log_dir: Path | None) -> None:
        self.path = path
        self._log_dir = log_dir
        self.steps: list[dict[str, Any]] = []

    @classmethod
    def new(cls, store_root: Path, recipe: str, context: str | os.PathLike[str], target: str) -> BuildRecord:
        base = store_root / "builder"
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        log_dir = base / "logs" / f"{stamp}-{os.urandom(4).hex()}"
        return cls(base / "builds" / f"{_record_id(recipe, context, target)}.json", log_dir)

    @property
    def log_dir(self) -> str | None:
        return str(self._log_dir) if self._log_dir is not None and self._log_dir.exists() else None

    def log(self, number: int) -> BinaryIO:
        """The file that keeps step `number`'s whole output."""
        assert self._log_dir is not None
        self._log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return open(self._log_dir / f"{number}.log", "wb")

    def add(
        self,
        info: StepInfo,
        key: str,
        parent: str | None,
        op: dict[str, Any],
        files: dict[str, str],
        *,
        cached: bool,
        produces: str | None = None,
    ) -> None:
        """Record a layer step; `produces` is the key the steps after it build on, when not `key` (--link)."""
        self.steps.append(
            {
                "number": info.number,
                "stage": info.stage,
                "index": info.index,
                "text": info.text,
                "key": key,
                "produces": produces or key,
                "parent": parent,
                "op": op,
                "files": files,
                "cached": cached,
            }
        )

    def save(self) -> None:
        """Write the record atomically, and drop the logs of all but the last builds."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        temporary.write_text(json.dumps({"version": _VERSION, "steps": self.steps}, sort_keys=True))
        os.replace(temporary, self.path)
        if self._log_dir is not None and self._log_dir.parent.is_dir():
            old = sorted(p for p in self._log_dir.parent.iterdir() if p.is_dir())[:-_KEEP_LOGS]
            if old:
                import shutil

                for directory in old:
                    shutil.rmtree(directory, ignore_errors=True)

    def explain(
        self,
        info: StepInfo,
        key: str,
        parent: str | None,
        op: dict[str, Any],
        files: dict[str, str],
        current: BuildRecord,
    ) -> list[str]:
        """Why `key` missed, against this (earlier) record; `current` is the build in progress."""
        same_key = next((s for s in self.steps if s.get("key") == key), None)
        if same_key is not None:
            return ["the same step was built before, but its cache record or layer is gone (pruned?)"]
        kind = op.get("kind")
        on_parent = [s for s in self.steps if s.get("parent") == parent and s.get("op", {}).get("kind") == kind]
        in_place = next(
            (s for s in self.steps if s.get("stage") == info.stage and s.get("index") == info.index), None
        )
        closest = on_parent[0] if len(on_parent) == 1 else in_place
        if closest is None:
            return ["a new step: the last build had none like it here"]
        reasons = []
        if closest.get("parent") != parent:
            reasons.append(self._parent_reason(parent, current))
        if closest.get("op", {}).get("kind") != kind:
            reasons.append(f"the last build had another instruction here: {closest.get('text')}")
        else:
            reasons += changes(
                closest.get("op", {}), op, files_before=closest.get("files") or {}, files_after=files
            )
        return reasons or ["its inputs are unchanged, but the key format or the base changed"]

    def _parent_reason(self, parent: str | None, current: BuildRecord) -> str:
        producer = next((s for s in current.steps if s["produces"] == parent), None)
        if producer is None:
            return "the base image changed"
        if not producer["cached"]:
            return f"it builds on step #{producer['number']} ({producer['text']}), which was rebuilt"
        return f"it builds on step #{producer['number']} ({producer['text']}), which differs from the last build"

