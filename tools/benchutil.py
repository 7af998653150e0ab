"""Shared helpers of the benchmark scripts in tools/ (run them as scripts: this folder is on sys.path)."""
from __future__ import annotations

import threading
from pathlib import Path

import psutil


class RssSampler:
    """Samples this process's resident set size every ``interval`` seconds in a thread.

    RSS counts the pages of memory-mapped index files that a query touched, so a peak within
    "index size + X" shows that no *copy* of the index was made beyond X.
    """

    def __init__(self, interval: float = 0.2) -> None:
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()
        self._proc = psutil.Process()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
