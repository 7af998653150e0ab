"""Sharded builds on Ray: one task per shard, each an ordinary atomic ``build_index`` run.

Every task declares ``num_cpus`` (:func:`cpus_per_worker`: fractional when shards outnumber the
cluster's CPUs, so 4 shards on 2 cores all run), sets its torch/FAISS/BLAS threads explicitly
and writes its shard atomically (a temporary folder renamed when complete). The driver writes
the global index and the top manifest only after every task succeeded
(:func:`~compnn_index.index.sharded.build_sharded`), so an interrupted build leaves nothing that
loads, and running it again keeps the finished shards. The model and the dataset are
``ray.put`` once; the dataset's files must be readable at the same path on every node, and the
store's folder must be on a filesystem all nodes share.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

from ..index.sharded import ShardTask, build_shard
from .cluster import DistributedError, connect, cpus_per_worker, node_cpus, set_worker_threads, threads_for


def _build_task(task: ShardTask, model: Any, dataset: Any, threads: int) -> tuple[int, float]:
    set_worker_threads(threads)
    t = time.perf_counter()
    build_shard(task, model, dataset, threads=threads)
    return task.index, time.perf_counter() - t


def ray_runner(cluster: str, *, shard_cpus: float | None = None, threads: int | None = None,
               progress: bool = True) -> Callable[[Sequence[ShardTask], Any, Any], None]:
    """A ``runner`` for :func:`~compnn_index.index.sharded.build_sharded` that builds on Ray."""

    def run(tasks: Sequence[ShardTask], model: Any, dataset: Any) -> None:
        ray = connect(cluster)
        cpus = float(shard_cpus) if shard_cpus else cpus_per_worker(node_cpus(ray), len(tasks))
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
                        _, seconds = ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 - reported with the shard named
                        text = str(exc).strip().splitlines()
                        raise DistributedError(
                            f"shard {task.index} (images {task.start}..{task.stop - 1}) failed to build: "
                            f"{text[-1] if text else type(exc).__name__}") from None
                    if progress:
                        print(f"  shard {task.index} (images {task.start}..{task.stop - 1}) built in "
                              f"{seconds:.1f} s")
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise

    return run
