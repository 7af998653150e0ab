"""A bounded pool of query engines: threads, never processes.

Each worker thread gets its own :class:`~compnn_index.api.CompNN` replica (its own copy of the
model, the same read-only memory-mapped index store), because layer taps are forward hooks on
the model's modules: two queries running the same module object at once would read each
other's activations. At most ``workers`` queries compute at a time; at most ``max_queue`` more
wait for a free engine (beyond: :class:`PoolBusy`, answered 503 with ``Retry-After``), each for
at most ``queue_timeout`` seconds, and a waiting query whose client disconnects is dropped
without being computed. The event loop keeps answering meanwhile (``/health`` stays live).
Threads, not processes: forking after FAISS ran multi-threaded can hang the child. Each
worker's call into the API runs inside one :func:`compnn_index.checks.thread_limit`, the only
thread limiter (the API's own limit of the same count is then free).
"""
from __future__ import annotations

import copy
import queue
import threading
import time
from typing import Awaitable, Callable, TypeVar

import anyio
import anyio.to_thread

from ..api import CompNN
from ..checks import MAX_THREADS, check_int, check_threads, cpu_count, thread_limit
from .memory import release_memory

T = TypeVar("T")
#: Queries that may wait per worker, by default (beyond them: 503 with Retry-After).
DEFAULT_QUEUE_PER_WORKER = 16


def default_threads(workers: int) -> int:
    """Compute threads per query so that ``workers`` concurrent queries share the cores."""
    return max(1, cpu_count() // max(1, workers))


class PoolBusy(Exception):
    """A query refused for capacity: the queue is full, or it waited past its deadline."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = int(retry_after)


class ClientGone(Exception):
    """The client disconnected while its query waited: the query was never computed."""


class EnginePool:
    """``workers`` CompNN replicas behind a bounded admission queue.

    Parameters
    ----------
    cnn : the loaded index and model; replica 0 is ``cnn`` itself.
    workers : number of queries computed at once (>= 1).
    threads : compute threads per query, at most :data:`~compnn_index.checks.MAX_THREADS`
        (default: cores // workers).
    max_queue : queries that may wait for a worker; one more is refused at once
        (:class:`PoolBusy`, answered 503 with ``Retry-After``).
    queue_timeout : seconds a query may wait for a worker before it is refused (its deadline;
        once computing, a query runs to its end: its work is bounded by the option bounds).
    """

    def __init__(self, cnn: CompNN, *, workers: int, threads: int | None = None,
                 max_queue: int | None = None, queue_timeout: float = 60.0) -> None:
        self.workers = check_int(workers, "workers", low=1, high=MAX_THREADS)  # QueryError is a ValueError
        self.threads = check_threads(threads) or default_threads(workers)
        self.max_queue = check_int(DEFAULT_QUEUE_PER_WORKER * self.workers if max_queue is None
                                   else max_queue, "max_queue", low=0)
        self.queue_timeout = float(queue_timeout)
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
        self.admitted = 0  # queries waiting or computing (event-loop thread only)
        self.refused = 0
        self.abandoned = 0  # queries whose client left before they started: never computed

    @property
    def limiter(self) -> anyio.CapacityLimiter:
        """The capacity limiter (created lazily inside the running event loop)."""
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.workers)
        return self._limiter

    @property
    def waiting(self) -> int:
        return max(0, self.admitted - self.in_flight)

    def _call(self, fn: Callable[[CompNN], T], submitted: float, job: dict) -> tuple[T, float]:
        with self._lock:
            if job["cancelled"]:  # the client left, or the deadline passed, as a worker freed up
                raise ClientGone()
            job["started"] = True
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
                idle = self.in_flight == 0
            if idle:
                release_memory()

    async def run(self, fn: Callable[[CompNN], T], *,
                  disconnected: Callable[[], Awaitable[None]] | None = None) -> tuple[T, float]:
        """Run ``fn(engine)`` in a worker thread; return its result and the seconds it queued.

        ``disconnected``: an awaitable that returns when the client has gone; a query still
        waiting for a worker then is dropped (:class:`ClientGone`) instead of computed.

        Raises
        ------
        PoolBusy
            ``max_queue`` queries are already waiting, or this one waited ``queue_timeout``.
        ClientGone
            The client disconnected before the query started.
        """
        if self.admitted >= self.workers + self.max_queue:
            self.refused += 1
            raise PoolBusy(f"The server is busy: {self.workers} queries computing and "
                           f"{self.max_queue} waiting; retry shortly")
        self.admitted += 1
        job = {"cancelled": False, "started": False, "why": None}
        result: list = []
        errors: list[Exception] = []
        submitted = time.perf_counter()

        def cancel(why: str, scope: anyio.CancelScope) -> None:
            with self._lock:
                if job["started"]:
                    return  # computing: it finishes, its answer is sent (or dropped)
                job["cancelled"] = True
                job["why"] = why
            scope.cancel()

        try:
            async with anyio.create_task_group() as tg:
                async def watch_client() -> None:
                    await disconnected()
                    cancel("gone", tg.cancel_scope)

                async def watch_deadline() -> None:
                    await anyio.sleep(self.queue_timeout)
                    cancel("deadline", tg.cancel_scope)

                async def compute() -> None:
                    try:
                        result.append(await anyio.to_thread.run_sync(
                            self._call, fn, submitted, job, limiter=self.limiter))
                    except ClientGone:
                        pass
                    except Exception as exc:  # the query's own error: re-raised below, unwrapped
                        errors.append(exc)
                    tg.cancel_scope.cancel()

                if disconnected is not None:
                    tg.start_soon(watch_client)
                tg.start_soon(watch_deadline)
                tg.start_soon(compute)
        finally:
            self.admitted -= 1
        if errors:
            raise errors[0]
        if result:
            return result[0]
        if job["why"] == "deadline":
            self.refused += 1
            raise PoolBusy(f"The query waited {self.queue_timeout:g} s for a free worker "
                           "(the server is busy); retry later", retry_after=5)
        self.abandoned += 1
        raise ClientGone()
