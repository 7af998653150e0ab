"""Sharded builds on Ray: one task per shard, each an ordinary atomic ``build_index`` run.

Every task declares ``num_cpus`` (:func:`build_cpus`: whole CPUs, so 4 shards on 2 cores run in
two waves in 2 reused worker processes), sets its torch/FAISS/BLAS threads explicitly
and writes its shard atomically (a temporary folder renamed when complete). The driver writes
the global index and the top manifest only after every task succeeded
(:func:`~compnn_index.index.sharded.build_sharded`), so an interrupted build leaves nothing that
loads, and running it again keeps the finished shards. Before the tasks start, the driver fits
the ``sq8`` ranges and the screen bases once over the whole dataset, and every task writes its
shard with that fit (:mod:`compnn_index.index.fit`): the shards share one basis, and the sample
pass is paid once, not once per shard. The model and the dataset are ``ray.put`` once; the
dataset's files must be readable at the same path on every node, and the store's folder must be
on a filesystem all nodes share.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

from ..index.sharded import ShardTask, build_shard
from .cluster import (DistributedError, connect, cpus_per_worker, node_cpus, set_worker_threads, threads_for,
                      worker_threads)


def _build_task(task: ShardTask, model: Any, dataset: Any, threads: int) -> tuple[int, float, dict]:
    """One shard's build in a Ray worker, with ``threads`` compute threads (the worker's whole
    torch, OpenMP and BLAS pools, set here: Ray's worker starts with OMP_NUM_THREADS=1 or its
    num_cpus). Returns the shard, its seconds and the thread counts the build ran with."""
    set_worker_threads(threads)
    t = time.perf_counter()
    build_shard(task, model, dataset, threads=threads)
    return task.index, time.perf_counter() - t, worker_threads()


def build_cpus(nodes: Sequence[float], tasks: int) -> float:
    """``num_cpus`` of each shard build task: whole CPUs where a node has one.

    Unlike the query actors, build tasks need not all run at once: on 2 cores, 4 shards run as
    two waves of 2 one-CPU tasks, in 2 worker processes that Ray reuses for the second wave
    (each importing torch, FAISS and the model once), rather than 4 processes of 0.5 CPU that
    all start, import and compete for the same 2 cores. Below 1 CPU per node, the fraction of
    :func:`cpus_per_worker`.
    """
    share = cpus_per_worker(list(nodes), tasks)
    return max(share, 1.0) if max(nodes) >= 1 else share


def ray_runner(cluster: str, *, shard_cpus: float | None = None, threads: int | None = None,
               progress: bool = True) -> Callable[[Sequence[ShardTask], Any, Any], None]:
    """A ``runner`` for :func:`~compnn_index.index.sharded.build_sharded` that builds on Ray."""

    def run(tasks: Sequence[ShardTask], model: Any, dataset: Any) -> None:
        t = time.perf_counter()
        ray = connect(cluster)
        if progress:
            print(f"Ray cluster ready in {time.perf_counter() - t:.1f} s")
        cpus = float(shard_cpus) if shard_cpus else build_cpus(node_cpus(ray), len(tasks))
        nthreads = threads_for(cpus, threads)
        remote = ray.remote(_build_task).options(num_cpus=cpus, max_retries=1,
                                                 scheduling_strategy="SPREAD")
        model_ref, data_ref = ray.put(model), ray.put(dataset)
        refs = {remote.remote(t, model_ref, data_ref, nthreads): t for t in tasks}
        pending = list(refs)
        if progress:
            print(f"building {len(tasks)} shards on Ray ({cpus:g} CPUs and {nthreads} threads each)")
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    task = refs[ref]
                    try:
                        _, seconds, used = ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 - reported with the shard named
                        text = str(exc).strip().splitlines()
                        raise DistributedError(
                            f"shard {task.index} (images {task.start}..{task.stop - 1}) failed to build: "
                            f"{text[-1] if text else type(exc).__name__}") from None
                    if progress:
                        print(f"  shard {task.index} (images {task.start}..{task.stop - 1}) built in "
                              f"{seconds:.1f} s ({used['torch']} torch / {used['faiss']} FAISS threads)")
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise

    return run
