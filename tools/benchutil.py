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
        self.interval, self.peak, self.peak_anon = interval, 0, 0
        self._stop = threading.Event()
        self._proc = psutil.Process()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            mem = self._proc.memory_info()
            self.peak = max(self.peak, mem.rss)
            # rss - shared = anonymous memory: where a copy of the index would show up.
            self.peak_anon = max(self.peak_anon, mem.rss - mem.shared)
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def open_stores(stores, *, data: str, split: str, limit: int | None, threads: int | None = None):
    """The stores (the first one's model shared by all) and the query split their manifest names.

    Returns ``(cnns, dataset)``; ``cnns[0]`` is the reference store.
    """
    from compnn_index.api import CompNN
    from compnn_index.data import open_like

    ref = CompNN.load(stores[0], threads=threads)
    cnns = [ref] + [CompNN.load(s, model=ref.model, threads=threads) for s in stores[1:]]
    ds = open_like(data, ref.store.manifest.get("dataset"), task=ref.task, split=split, limit=limit)
    return cnns, ds


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
