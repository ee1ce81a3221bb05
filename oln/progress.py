"""A dependency-free progress line for training loops (stderr, rank 0 only)."""

from __future__ import annotations

import sys
import time


class Progress:
    """A carriage-return progress line on stderr (plain lines when not a terminal)."""

    def __init__(self, desc: str, total: int, start: int, enabled: bool):
        self.desc, self.total, self.start, self.enabled = desc, total, start, enabled
        self.t0 = time.perf_counter()
        self.tty = sys.stderr.isatty()
        self.every = max(1, total // 20)
        self.last_print = 0.0

    def update(self, done: int, text: str) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        rate = (done - self.start) / max(now - self.t0, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        line = f"{self.desc} {done}/{self.total} {text} {rate:.2f} it/s eta {eta:.0f}s"
        if self.tty:
            if now - self.last_print > 0.2 or done == self.total:
                sys.stderr.write("\r" + line[:150].ljust(150))
                sys.stderr.flush()
                self.last_print = now
        elif done % self.every == 0 or done == self.total:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()
