"""Progress: a tqdm bar on a terminal; sparse plain lines when stderr goes to a file or a pipe.

A tqdm bar redraws itself with carriage returns many times a second, which a log file keeps as thousands
of updates on one line. ``progress`` gives the bar only when stderr is a terminal; otherwise a
``LineProgress`` with the same interface writes one line every tenth of the total or every 30 seconds,
whichever comes first, and one at the end: ``train: 120/600 steps (20%), loss=1.234, 3.10 steps/s, 38 s``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TextIO

from tqdm.auto import tqdm

LINE_EVERY_FRACTION = 0.1
LINE_EVERY_SECONDS = 30.0


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             initial: int = 0, disable: bool = False):
    """A tqdm bar on stderr when it is a terminal, else a ``LineProgress``; nothing when ``disable``."""
    if disable or sys.stderr.isatty():
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=disable,
                    dynamic_ncols=True)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, initial=initial)


class LineProgress:
    """tqdm's ``update`` / ``set_postfix`` / ``close`` and iteration, writing a plain line to ``stream``
    every ``every_fraction`` of ``total`` or ``every_seconds``, and once at the end."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "it", initial: int = 0, stream: TextIO | None = None,
                 every_fraction: float = LINE_EVERY_FRACTION, every_seconds: float = LINE_EVERY_SECONDS,
                 clock: Callable[[], float] = time.monotonic):
        self.iterable, self.desc, self.unit, self.stream = iterable, desc, unit, stream
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.n = self.written = self.start_n = initial
        self.step = max(1, round(self.total * every_fraction)) if self.total else None
        self.every_seconds, self.clock = every_seconds, clock
        self.start = self.last_time = clock()
        self.postfix = ""

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def set_postfix(self, **values) -> None:
        """What the next line shows after the count, e.g. ``loss=1.234``."""
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        crossed_step = self.step and self.n // self.step > self.written // self.step
        if crossed_step or now - self.last_time >= self.every_seconds:
            self._write(now)

    def close(self) -> None:
        if self.n != self.written:
            self._write(self.clock())

    def _write(self, now: float) -> None:
        elapsed = now - self.start
        count = f"{self.n}/{self.total} {self.unit}s ({100 * self.n / self.total:.0f}%)" if self.total \
            else f"{self.n} {self.unit}s"
        rate = f"{(self.n - self.start_n) / elapsed:.2f} {self.unit}s/s" if elapsed > 0 else ""
        fields = [f"{self.desc}: {count}", self.postfix, rate, f"{elapsed:.0f} s"]
        print(", ".join(f for f in fields if f), file=self.stream or sys.stderr, flush=True)
        self.written, self.last_time = self.n, now
