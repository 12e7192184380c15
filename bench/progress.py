"""Progress lines on stderr for a long command: elapsed time, what runs, how long it took."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

_STARTED = time.monotonic()


def clock() -> str:
    seconds = int(time.monotonic() - _STARTED)
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def note(message: str) -> None:
    print(f"[{clock()}] {message}", file=sys.stderr, flush=True)


@contextmanager
def phase(label: str) -> Iterator[None]:
    """`label …` now and `label: done in N s` when the block ends (or `failed`)."""
    note(f"{label} …")
    started = time.perf_counter()
    try:
        yield
    except BaseException:
        note(f"{label}: failed after {time.perf_counter() - started:.1f} s")
        raise
    note(f"{label}: done in {time.perf_counter() - started:.1f} s")


class Throttle:
    """Lets a message through at most once per `seconds` (for per-project or per-line output)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._last = 0.0

    def ready(self) -> bool:
        now = time.monotonic()
        if now - self._last >= self.seconds:
            self._last = now
            return True
        return False
