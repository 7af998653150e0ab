"""A bounded pool of query engines: threads, never processes.

Each worker thread gets its own :class:`~compnn_index.api.CompNN` replica (its own copy of the
model, the same read-only memory-mapped index store), because layer taps are forward hooks on
the model's modules: two queries running the same module object at once would read each
other's activations. At most ``workers`` queries compute at a time; further requests wait for a
free engine while the event loop keeps answering (``/health`` stays live during a query).
Threads, not processes: forking after FAISS ran multi-threaded can hang the child. Each
worker's call into the API runs inside one :func:`compnn_index.checks.thread_limit`, the only
thread limiter (the API's own limit of the same count is then free).
"""
from __future__ import annotations

import copy
import queue
import threading
import time
from typing import Callable, TypeVar

import anyio
import anyio.to_thread

from ..api import CompNN
from ..checks import check_int, check_threads, cpu_count, thread_limit

T = TypeVar("T")


def default_threads(workers: int) -> int:
    """Compute threads per query so that ``workers`` concurrent queries share the cores."""
    return max(1, cpu_count() // max(1, workers))


class EnginePool:
    """``workers`` CompNN replicas behind a capacity limiter.

    Parameters
    ----------
    cnn : the loaded index and model; replica 0 is ``cnn`` itself.
    workers : number of queries computed at once (>= 1).
    threads : compute threads per query, at most :data:`~compnn_index.checks.MAX_THREADS`
        (default: cores // workers).
    """

    def __init__(self, cnn: CompNN, *, workers: int, threads: int | None = None) -> None:
        self.workers = check_int(workers, "workers", low=1)  # QueryError is a ValueError
        self.threads = check_threads(threads) or default_threads(workers)
        self.cnn = cnn
        cnn.threads = self.threads
        self._idle: "queue.SimpleQueue[CompNN]" = queue.SimpleQueue()
        self._idle.put(cnn)
        for _ in range(workers - 1):
            self._idle.put(type(cnn)(cnn.store, copy.deepcopy(cnn.model), threads=self.threads))
        self._limiter: anyio.CapacityLimiter | None = None
        self._lock = threading.Lock()
        self.in_flight = 0
        self.completed = 0

    @property
    def limiter(self) -> anyio.CapacityLimiter:
        """The capacity limiter (created lazily inside the running event loop)."""
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.workers)
        return self._limiter

    def _call(self, fn: Callable[[CompNN], T], submitted: float) -> tuple[T, float]:
        waited = time.perf_counter() - submitted
        engine = self._idle.get()  # never blocks: the limiter admits at most `workers` callers
        with self._lock:
            self.in_flight += 1
        try:
            with thread_limit(self.threads):
                return fn(engine), waited
        finally:
            self._idle.put(engine)
            with self._lock:
                self.in_flight -= 1
                self.completed += 1

    async def run(self, fn: Callable[[CompNN], T]) -> tuple[T, float]:
        """Run ``fn(engine)`` in a worker thread; return its result and the seconds it queued."""
        return await anyio.to_thread.run_sync(self._call, fn, time.perf_counter(), limiter=self.limiter)
