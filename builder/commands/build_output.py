"""How `pybuild build` shows progress: a bar on a terminal, plain lines for CI logs, JSON events, or nothing.

    plain   one line per event, BuildKit's shape: `#3 [build 2/5] RUN make`,
            `#3 CACHED`, `#3 cache miss: env V: 1 -> 2`, RUN output prefixed
            `#3 `, `#3 DONE 1.2s (cpu 0.9s, peak memory 12.3 MiB)`
    json    one JSON object per line (`{"event": "step_finished", ...}`)
    tty     a tqdm bar of steps, with each step's outcome written above it, and
            a bar of bytes while a step's layer is written
    quiet   nothing (the command prints the image id at the end)
"""

from __future__ import annotations

import json
import sys
import threading
from typing import IO, TYPE_CHECKING

from ..progress import (
    BuildFinished,
    BuildStarted,
    BuildWarning,
    StepCommitting,
    StepFinished,
    StepOutput,
    StepStarted,
)

if TYPE_CHECKING:
    from ..progress import Event

__all__ = ["JsonLog", "PlainLog", "TerminalBar", "renderer"]


def renderer(mode: str, stream: IO[str] | None = None):  # type: ignore[no-untyped-def]
    """The progress callback for `--progress mode` (auto: a bar on a terminal, else plain); None for quiet."""
    stream = stream or sys.stderr
    if mode == "auto":
        mode = "tty" if stream.isatty() else "plain"
    if mode == "plain":
        return PlainLog(stream)
    if mode == "json":
        return JsonLog(stream)
    if mode == "tty":
        return TerminalBar(stream)
    return None


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} B"


def _costs(event: StepFinished) -> str:
    parts = []
    if event.cpu_time is not None:
        parts.append(f"cpu {event.cpu_time:.2f}s")
    if event.max_rss:
        parts.append(f"peak memory {_size(event.max_rss)}")
    if event.layer:
        parts.append(f"layer {event.layer[7:19]} {_size(event.size)}")
    return f" ({', '.join(parts)})" if parts else ""


class PlainLog:
    """Lines for CI logs; RUN output is split into lines, each prefixed with its step."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self._partial: dict[tuple[int, int], bytes] = {}

    def __call__(self, event: Event) -> None:
        write = self.stream.write
        if isinstance(event, BuildStarted):
            write(f"building {event.steps} steps in {len(event.stages)} stage(s): {', '.join(event.stages)}\n")
        elif isinstance(event, StepStarted):
            write(f"{event.step.name}\n")
            for reason in event.reasons:
                write(f"#{event.step.number} cache miss: {reason}\n")
        elif isinstance(event, StepOutput):
            key = (event.step.number, event.stream)
            lines = (self._partial.pop(key, b"") + event.data).split(b"\n")
            if lines[-1]:
                self._partial[key] = lines[-1]
            for line in lines[:-1]:
                write(f"#{event.step.number} {line.decode(errors='replace')}\n")
        elif isinstance(event, StepFinished):
            number = event.step.number
            for stream in (1, 2):
                rest = self._partial.pop((number, stream), None)
                if rest:
                    write(f"#{number} {rest.decode(errors='replace')}\n")
            if not event.layer_step:
                write(f"{event.step.name}\n")
            elif event.cached:
                write(f"{event.step.name}\n#{number} CACHED\n")
            else:
                write(f"#{number} DONE {event.duration:.1f}s{_costs(event)}\n")
        elif isinstance(event, BuildWarning):
            write(f"warning: {event.message}\n")
        elif isinstance(event, BuildFinished):
            state = "up to date" if event.up_to_date else f"built in {event.duration:.1f}s"
            write(f"image {event.image} (id {event.image_id}): {state}\n")
        self.stream.flush()


class JsonLog:
    """One JSON object per event and line, for CI tools."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def __call__(self, event: Event) -> None:
        record: dict[str, object]
        if isinstance(event, BuildStarted):
            record = {"event": "build_started", "steps": event.steps, "stages": list(event.stages)}
        elif isinstance(event, (StepStarted, StepOutput, StepCommitting, StepFinished)):
            step = event.step
            record = {
                "step": step.number,
                "stage": step.stage,
                "index": step.index,
                "count": step.count,
                "text": step.text,
                "location": step.location,
            }
            if isinstance(event, StepStarted):
                record |= {"event": "step_started", "reasons": list(event.reasons)}
            elif isinstance(event, StepCommitting):
                record |= {"event": "step_committing", "written": event.written}
            elif isinstance(event, StepOutput):
                record |= {"event": "step_output", "stream": "stdout" if event.stream == 1 else "stderr"}
                record["data"] = event.data.decode(errors="replace")
            else:
                record |= {
                    "event": "step_finished",
                    "layer_step": event.layer_step,
                    "cached": event.cached,
                    "reasons": list(event.reasons),
                    "duration": round(event.duration, 6),
                    "cpu_time": event.cpu_time,
                    "max_rss": event.max_rss,
                    "layer": event.layer,
                    "size": event.size,
                }
        elif isinstance(event, BuildWarning):
            record = {"event": "warning", "message": event.message}
        else:
            record = {
                "event": "build_finished",
                "image": event.image,
                "image_id": event.image_id,
                "up_to_date": event.up_to_date,
                "duration": round(event.duration, 6),
            }
        self.stream.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.stream.flush()


class TerminalBar:
    """A tqdm bar over the build's steps; each finished step is written above it, RUN output is not."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self._bar = None
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        from ..console import StepBar

        with self._lock:
            if isinstance(event, BuildStarted):
                self._bar = StepBar(self.stream, event.steps)
                return
            bar = self._bar
            if bar is None:
                return
            if isinstance(event, StepStarted):
                bar.describe(event.step.text)
            elif isinstance(event, StepCommitting):
                bar.committing(event.written)
            elif isinstance(event, StepFinished):
                bar.committing(None)
                if not event.layer_step:
                    status = ""
                elif event.cached:
                    status = "CACHED"
                else:
                    status = f"{event.duration:.1f}s{_costs(event)}"
                bar.write(f"{event.step.name}  {status}")
                bar.advance()
            elif isinstance(event, BuildWarning):
                bar.write(f"warning: {event.message}")
            elif isinstance(event, BuildFinished):
                state = "up to date" if event.up_to_date else f"built in {event.duration:.1f}s"
                bar.write(f"image {event.image} (id {event.image_id}): {state}")
                self.close()

    def close(self) -> None:
        """Take the bar off the terminal (also when the build failed)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
