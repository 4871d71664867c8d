"""A small progress line for long management commands (in place on a terminal, a line every few seconds in logs)."""

from __future__ import annotations

import sys
import time

LOG_EVERY_SECONDS = 5.0


class Progress:
    def __init__(self, label: str, total: int, *, stream=None, unit: str = "rows") -> None:
        self.label, self.total, self.unit = label, total, unit
        self.done = 0
        self.stream = stream or sys.stderr
        self.started = self._last = time.monotonic()
        self.interactive = hasattr(self.stream, "isatty") and self.stream.isatty()

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.interactive or now - self._last >= LOG_EVERY_SECONDS:
            self._last = now
            self._write(final=False)

    def finish(self) -> None:
        self._write(final=True)

    def _write(self, *, final: bool) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.done / elapsed
        if self.total:
            width = 30
            filled = int(width * min(self.done, self.total) / self.total)
            bar = f"[{'#' * filled}{'.' * (width - filled)}] {self.done:,}/{self.total:,} {self.unit}"
        else:
            bar = f"{self.done:,} {self.unit}"
        line = f"{self.label}: {bar} {rate:,.0f} {self.unit}/s {elapsed:.1f}s"
        if self.interactive:
            self.stream.write("\r" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
