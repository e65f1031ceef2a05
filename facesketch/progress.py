"""A dependency-free progress bar with rate and ETA (the core has no tqdm).

On a terminal it redraws one line at most every ``min_interval`` seconds; into a
file or pipe it writes a plain line at every 10% so logs stay short.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _clock(seconds: float) -> str:
    s = int(round(max(seconds, 0.0)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class ProgressBar:
    def __init__(self, total: int, label: str = "", unit: str = "it", stream: TextIO | None = None,
                 min_interval: float = 0.5):
        self.total, self.label, self.unit = max(int(total), 0), label, unit
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.min_interval = min_interval
        self.t0 = time.perf_counter()
        self.done = 0
        self._last_draw = 0.0
        self._last_decile = -1

    def line(self) -> str:
        elapsed = time.perf_counter() - self.t0
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        frac = self.done / self.total if self.total else 1.0
        bar = "#" * int(frac * 24)
        eta_s = _clock(eta) if eta == eta else "?"
        return (f"{self.label} {self.done}/{self.total} [{bar:<24}] {frac:4.0%} "
                f"{rate:.2f} {self.unit}/s, {_clock(elapsed)} elapsed, ETA {eta_s}").strip()

    def update(self, done: int) -> None:
        self.done = min(int(done), self.total)
        now = time.perf_counter()
        if self.tty:
            if now - self._last_draw >= self.min_interval or self.done == self.total:
                self.stream.write("\r" + self.line() + "\033[K")
                self.stream.flush()
                self._last_draw = now
            return
        decile = int(10 * self.done / self.total) if self.total else 10
        if decile != self._last_decile:
            self._last_decile = decile
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
