"""Progress of a compile's passes on stderr: a live line on a terminal once a pass has run for
a moment, and plain periodic lines elsewhere (CI logs), so a long solve is never silent.

Quick compiles print nothing: the live line appears only after `delay_s`, and plain lines
only for passes that run longer than that.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, TextIO


class PassProgress:
    """Callbacks for the pass manager (`start(name, index, total)`, `end(name)`), shown on
    `stream`; `close()` stops the ticker."""

    def __init__(self, stream: TextIO | None = None, delay_s: float = 1.5,
                 every_s: float = 10.0) -> None:
        self.stream = stream or sys.stderr
        self.delay_s = delay_s
        self.every_s = every_s
        self.live = self.stream.isatty()
        self._lock = threading.Lock()
        self._current: tuple[str, int, int, float] | None = None
        self._printed_at = 0.0
        self._stop = threading.Event()
        self._status: Any = None
        self._thread = threading.Thread(target=self._tick, name="mapper-progress", daemon=True)
        self._thread.start()

    def start(self, name: str, index: int, total: int) -> None:
        """Pass `name` (the index-th of total) begins."""
        with self._lock:
            self._current = (name, index, total, time.monotonic())
            self._printed_at = 0.0

    def end(self, name: str) -> None:
        """Pass `name` finished; a pass that was shown gets its time."""
        with self._lock:
            current, self._current = self._current, None
        if current is None:
            return
        seconds = time.monotonic() - current[3]
        if self.live and self._status is not None:
            self._status.update(f"pass {name} done in {seconds:.1f} s")
        elif not self.live and seconds >= self.delay_s:
            self._write(f"mapper: pass {name} done in {seconds:.1f} s")

    def close(self) -> None:
        """Stop showing progress."""
        self._stop.set()
        self._thread.join(timeout=1.0)
        if self._status is not None:
            self._status.stop()
            self._status = None

    def _write(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def _tick(self) -> None:
        while not self._stop.wait(0.25):
            with self._lock:
                current = self._current
            if current is None:
                continue
            name, index, total, began = current
            running = time.monotonic() - began
            if running < self.delay_s:
                continue
            text = f"pass {name} ({index}/{total}) running for {running:.0f} s"
            if self.live:
                if self._status is None:
                    from rich.console import Console

                    self._status = Console(file=self.stream).status(text)
                    self._status.start()
                else:
                    self._status.update(text)
            elif time.monotonic() - self._printed_at >= self.every_s:
                self._printed_at = time.monotonic()
                self._write(f"mapper: {text}")
