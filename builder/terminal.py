"""PseudoTerminal: relays a container's pseudo-terminal (`pybuild run -t`) to our own terminal from a thread."""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import sys
import termios
import threading
import tty

__all__ = ["PseudoTerminal"]


class PseudoTerminal:
    """Once `attach`ed to the master side, what the container writes reaches our stdout, our stdin (if interactive) it."""

    def __init__(self, *, interactive: bool) -> None:
        self._stdin = sys.stdin.fileno() if interactive else None
        self._stdout = sys.stdout.fileno()
        self._master: int | None = None
        self._saved: list | None = None  # type: ignore[type-arg]
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PseudoTerminal:
        return self

    def attach(self, master: int) -> None:
        """Start relaying `master` (this object closes it)."""
        self._master = master
        with contextlib.suppress(OSError):  # our window size, when we have a terminal
            fcntl.ioctl(master, termios.TIOCSWINSZ, fcntl.ioctl(self._stdout, termios.TIOCGWINSZ, b"\0" * 8))
        if self._stdin is not None and os.isatty(self._stdin):
            self._saved = termios.tcgetattr(self._stdin)
            tty.setraw(self._stdin)
        self._thread = threading.Thread(target=self._relay, name="pty-relay", daemon=True)
        self._thread.start()

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._thread.join(timeout=5)  # the container is gone: the master reads EIO soon
        if self._saved is not None:
            termios.tcsetattr(self._stdin, termios.TCSADRAIN, self._saved)  # type: ignore[arg-type]
        if self._master is not None:
            os.close(self._master)

    def _relay(self) -> None:
        assert self._master is not None
        sources = [self._master] + ([self._stdin] if self._stdin is not None else [])
        while True:
            ready, _, _ = select.select(sources, [], [])
            if self._master in ready:
                try:
                    data = os.read(self._master, 65536)
                except OSError:  # EIO: every slave side is closed
                    return
                if not data:
                    return
                os.write(self._stdout, data)
            if self._stdin is not None and self._stdin in ready:
                data = os.read(self._stdin, 65536)
                if data:
                    os.write(self._master, data)
                else:
                    sources.remove(self._stdin)
