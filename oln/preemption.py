"""Signal handling for preemptible training: SIGTERM/SIGUSR1 are recorded, not fatal.

Slurm sends SIGTERM at a job's time limit (and SIGUSR1 before it with
`--signal=USR1@T`); the training loop polls `StopFlag.signum` between steps,
writes a checkpoint and exits with `EXIT_CODES[signum]` so the job is retried
and resumes.
"""

from __future__ import annotations

import signal
import threading

EXIT_CODES = {signal.SIGTERM: 143, signal.SIGUSR1: 128 + signal.SIGUSR1}


class StopFlag:
    """Records SIGTERM/SIGUSR1 so the loop can checkpoint and exit between steps."""

    def __init__(self):
        self.signum: int | None = None
        self.previous: dict = {}

    def install(self) -> None:
        if threading_is_main():
            for signum in EXIT_CODES:
                self.previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}

    def _handle(self, signum, frame) -> None:
        self.signum = signum


def threading_is_main() -> bool:
    return threading.current_thread() is threading.main_thread()
