"""Console output for commands: text, JSON, tables and progress bars.

Commands write through a `Console` rather than printing, so they stay
testable and so tqdm (imported only here, and only when a bar is shown on a
terminal) never slows down a command that does not need it.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from types import TracebackType
    from typing import IO, Any

__all__ = ["Console", "Progress", "StepBar"]


class Console:
    """Where a command's output goes; `progress()` gives a byte counter for long transfers."""

    def __init__(self, out: IO[str] | None = None, err: IO[str] | None = None) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr

    def print(self, text: str = "") -> None:
        self.out.write(text + "\n")

    def warn(self, text: str) -> None:
        self.err.write(f"pybuild: warning: {text}\n")

    def json(self, value: Any) -> None:
        import json

        json.dump(value, self.out, ensure_ascii=False, indent=2)
        self.out.write("\n")

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        cells = [list(map(str, headers))] + [[str(c) for c in row] for row in rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
        for row in cells:
            self.print("   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())

    def progress(self, description: str, total: int | None = None) -> Progress:
        """A byte-counting progress bar (a context manager); silent unless stderr is a terminal."""
        return Progress(self.err, description, total)


class Progress:
    """`with console.progress("saving") as advance: advance(n_bytes)`."""

    def __init__(self, stream: IO[str], description: str, total: int | None) -> None:
        self._bar = None
        if stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(
                total=total, desc=description, unit="B", unit_scale=True, unit_divisor=1024, file=stream, leave=False
            )

    def advance(self, count: int) -> None:
        if self._bar is not None:
            self._bar.update(count)

    def __enter__(self) -> Callable[[int], None]:
        return self.advance

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.close()


class StepBar:
    """A bar of build steps on a terminal: `advance()` per finished step, `write()` for lines above it."""

    def __init__(self, stream: IO[str], total: int) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self._bar = tqdm(total=total, unit="step", file=stream, leave=True, dynamic_ncols=True)
        self._layer: tqdm | None = None

    def describe(self, text: str) -> None:
        self._bar.set_description_str(text[:60])

    def committing(self, written: int | None) -> None:
        """Show `written` bytes of a layer being committed, under the step bar; None: the layer is done."""
        if written is None:
            if self._layer is not None:
                self._layer.close()
                self._layer = None
            return
        if self._layer is None:
            self._layer = self._tqdm(
                desc="layer", unit="B", unit_scale=True, unit_divisor=1024, file=self._bar.fp, leave=False, position=1
            )
        self._layer.update(written - self._layer.n)

    def advance(self) -> None:
        self._bar.update(1)

    def write(self, line: str) -> None:
        self._tqdm.write(line, file=self._bar.fp)

    def close(self) -> None:
        self.committing(None)
        self._bar.close()
