"""Progress reports of long stages through `logging`: count, rate, elapsed time and ETA.

One helper for every stage. Wrap an iterable::

    for image in progress(images, "predict", total=len(images), unit="img"):
        ...

or, when the loop counts itself (training, pooled workers), update a `Progress`::

    bar = Progress("train_pa", total=iterations, start=resumed_at)
    bar.update(done, f"loss {loss:.3f}")
    bar.close()

A line is logged (logger `oln.progress`, level INFO) at the first item, every
`every` items (default: 10% of `total`), at least every `interval` seconds, and at
the end, e.g. ``predict 120/1000 (12%) 3.52 img/s elapsed 0:00:34 eta 0:04:10``.
The timestamp comes from the logging format (the CLI's includes it).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
LOGGER = logging.getLogger("oln.progress")
DEFAULT_INTERVAL_S = 30.0


def format_duration(seconds: float) -> str:
    """`seconds` as h:mm:ss (`?` when unknown or infinite)."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class Progress:
    """Logs `desc done/total (pct) rate unit/s elapsed h:mm:ss eta h:mm:ss [text]` now and then.

    Args:
        desc: what is being done (the stage name).
        total: items in all (None: unknown, no percentage or ETA).
        start: items already done before this process (a resumed run); the rate counts
            only the items done here.
        unit: name of an item in the rate (it, img, ...).
        every: log every this many items (default: 10% of `total`, else 100).
        interval: log at least every this many seconds.
        enabled: False turns it off (e.g. on DDP ranks other than 0).
        logger: where to log (default `oln.progress`).
    """

    def __init__(self, desc: str, total: int | None, start: int = 0, enabled: bool = True, *,
                 unit: str = "it", every: int | None = None, interval: float = DEFAULT_INTERVAL_S,
                 logger: logging.Logger | None = None):
        self.desc, self.total, self.start, self.enabled, self.unit = desc, total, start, enabled, unit
        self.every = every or (max(1, math.ceil(total / 10)) if total else 100)
        self.interval = interval
        self.logger = logger or LOGGER
        self.t0 = time.perf_counter()
        self.last_time = self.t0
        self.last_done = start
        self.done = start

    def line(self, done: int, text: str = "") -> str:
        """The progress text for `done` items."""
        elapsed = time.perf_counter() - self.t0
        rate = (done - self.start) / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.desc} {done}"]
        if self.total:
            parts[0] += f"/{self.total} ({100.0 * done / self.total:.0f}%)"
        parts.append(f"{rate:.2f} {self.unit}/s elapsed {format_duration(elapsed)}")
        if self.total:
            eta = (self.total - done) / rate if rate > 0 else float("inf")
            parts.append(f"eta {format_duration(eta if done < self.total else 0.0)}")
        if text:
            parts.append(text)
        return " ".join(parts)

    def update(self, done: int, text: str = "") -> None:
        """Record that `done` items are finished; log when a report is due."""
        self.done = done
        if not self.enabled:
            return
        now = time.perf_counter()
        first = self.last_done == self.start and done > self.start
        due = done // self.every != self.last_done // self.every or now - self.last_time >= self.interval
        if first or due or done == self.total:
            self.logger.info(self.line(done, text))
            self.last_time, self.last_done = now, done

    def close(self) -> None:
        """Log the final count unless it was just logged."""
        if self.enabled and self.done != self.last_done:
            self.logger.info(self.line(self.done))
            self.last_done = self.done


def progress(items: Iterable[T], desc: str, total: int | None = None, *, unit: str = "it",
             every: int | None = None, interval: float = DEFAULT_INTERVAL_S,
             logger: logging.Logger | None = None) -> Iterator[T]:
    """Yield `items` and log progress as they are consumed (see `Progress`).

    Args:
        items: the iterable.
        desc: stage name shown in the log line.
        total: number of items (default: `len(items)` when it has one).
        unit, every, interval, logger: as for `Progress`.
    """
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    bar = Progress(desc, total, unit=unit, every=every, interval=interval, logger=logger)
    done = 0
    for item in items:
        yield item
        done += 1
        bar.update(done)
    bar.close()
