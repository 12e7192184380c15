"""Peak resident memory of a process tree, sampled from /proc through psutil every ~100 ms.

The tree is the process and all its descendants; PostgreSQL backends are not descendants of the
pipeline, and any process named postgres is excluded anyway.
"""

from __future__ import annotations

import threading

import psutil

SAMPLE_SECONDS = 0.1


def tree_rss(root: psutil.Process) -> int:
    """Sum of RSS over `root` and its descendants, PostgreSQL excluded; 0 once it has exited."""
    try:
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for process in processes:
        try:
            if process.name().startswith("postgres"):
                continue
            total += process.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


class PeakRss:
    """Samples `tree_rss(pid)` in a thread until `stop()`; `peak` is the highest sum seen."""

    def __init__(self, pid: int, interval: float = SAMPLE_SECONDS) -> None:
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-rss", daemon=True)

    def start(self) -> PeakRss:
        self._thread.start()
        return self

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak

    @property
    def current(self) -> int:
        return tree_rss(self.root)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(self.root))
            self.samples += 1
            self._stop.wait(self.interval)
