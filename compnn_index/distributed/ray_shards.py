"""Distributed queries: one Ray actor per shard of a sharded store.

Every actor (:class:`ShardServer`) declares ``num_cpus`` (whole CPUs when the cluster has
enough, a fraction when shards outnumber them, see :func:`cpus_per_worker`), sets its torch,
FAISS and BLAS threads explicitly (Ray sets ``OMP_NUM_THREADS=1``), opens its shard
memory-mapped after checking it against the top manifest, and runs the same
:func:`~compnn_index.search.search_field` as one process on its shard's own
:class:`~compnn_index.index.LayerVectors`.

A query (:meth:`RayShards.search`): the driver extracts the features once and ``ray.put`` s
them once; only the shards holding shortlisted images are called, each with its part of the
shortlist (shard-local ids, rank order kept); their fields come back with shard-local image ids
and are merged on the driver (:func:`~compnn_index.distributed.backends.merge_fields`).
Reconstructions are pasted on the driver; the sidecar rows they need (only the images the field
uses) are read from the owning shard's actor (:meth:`RayShards.array`).

Faults: actors are created with ``max_restarts``; a call that fails because its actor died is
sent again once the actor is back (at most ``max_restarts + 1`` tries within
``restart_timeout``). If the actor cannot be restarted, the query fails with a
:class:`DistributedError` naming the shard and its image range — never a partial answer.

The shard folders are opened by path on the actors' nodes: on several machines the store must
sit on a filesystem every node mounts at the same path (or be copied to that path on every node).
"""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..checks import thread_limit
from ..errors import CompNNError, IndexStoreError
from ..index.manifest import read_manifest
from ..index.sharded import ShardedStore, shard_infos, verify_shard
from ..options import QueryOptions
from ..search import NNField, search_field
from .backends import SearchBackend, detach, localize_init, merge_fields, to_global
from .cluster import (DistributedError, cluster_cpus, connect, cpus_per_worker, node_cpus,
                      set_worker_threads, threads_for)


#: Actor names are ``compnn-shard-<index, 3 digits>-<8 hex digits, one per RayShards>``.
ACTOR_PREFIX = "compnn-shard-"


class ShardServer:
    """The body of one shard actor (``ray.remote`` is applied by :class:`RayShards`)."""

    def __init__(self, root: str, index: int, sha256: str, threads: int) -> None:
        self.threads = int(threads)
        set_worker_threads(self.threads)
        top = read_manifest(root)  # the top manifest as this node sees it
        self.info = shard_infos(Path(root), top)[int(index)]
        if self.info.manifest_sha256 != sha256:
            raise IndexStoreError(
                f"{self.info.label}: the top manifest on this node records manifest sha256 "
                f"{self.info.manifest_sha256[:16]}…, the driver's {sha256[:16]}…: the nodes see "
                "different copies of the store")
        self.store = verify_shard(self.info, top, mmap=True)
        self._crash = False

    def describe(self) -> dict[str, Any]:
        import ray
        import torch

        return {"shard": self.info.index, "images": [self.info.start, self.info.stop], "pid": os.getpid(),
                "node": ray.get_runtime_context().get_node_id(),
                "threads": self.threads, "torch_threads": torch.get_num_threads(),
                "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}

    def warm(self, layers: Sequence[str]) -> int:
        """Open (memory-map) the layers now rather than in the first query."""
        return sum(self.store.layer(n).ntotal for n in layers)

    def search(self, feats: Mapping[str, np.ndarray], ids: np.ndarray, layer: str,
               options: QueryOptions, init: Any, pyramid: Sequence[str],
               norms: Mapping[str, np.ndarray] | None = None) -> tuple[NNField, float]:
        self._maybe_crash()
        t = time.perf_counter()
        with thread_limit(self.threads):
            field = search_field(feats, self.store.layer, ids, layer=layer, options=options, init=init,
                                 pyramid=pyramid, threads=self.threads, norms=norms)
        return field, time.perf_counter() - t

    def rows(self, name: str, ids: np.ndarray) -> np.ndarray:
        self._maybe_crash()
        return np.ascontiguousarray(self.store.array(name)[np.asarray(ids, dtype=np.int64)])

    def crash_during_next_call(self) -> bool:
        """Fault injection for the tests: the next search or rows call kills this process."""
        self._crash = True
        return True

    def _maybe_crash(self) -> None:
        if self._crash:
            os._exit(1)


class RayShards(SearchBackend):
    """A sharded store whose shards are searched by Ray actors.

    Parameters
    ----------
    store : ShardedStore
        The store, opened (and verified) on the driver; the driver reads its global index.
    cluster : str
        ``"local"``, ``"auto"``, ``"ray://host:port"`` or ``"host:port"``; an initialised Ray
        is used as it is.
    shard_cpus : float, optional
        ``num_cpus`` of every actor (default :func:`cpus_per_worker` of the cluster's CPUs).
    threads : int, optional
        Compute threads per actor (default ``max(1, floor(shard_cpus))``).
    max_restarts : int, default 3
        Restarts Ray grants each actor.
    ready_timeout, call_timeout, restart_timeout : float
        Seconds to wait for the actors to start, for one call, for a restarted actor.
    """

    kind = "ray"

    def __init__(self, store: ShardedStore, cluster: str, *, shard_cpus: float | None = None,
                 threads: int | None = None, max_restarts: int = 3, ready_timeout: float = 120.0,
                 call_timeout: float = 600.0, restart_timeout: float = 120.0) -> None:
        if not isinstance(store, ShardedStore):
            raise DistributedError(
                f"index store {os.fspath(store.path)!r} is not sharded: a cluster serves sharded stores "
                "(build one with `compnn build --shards N`), or load it without a cluster")
        super().__init__(store)
        ray = self._ray = connect(cluster)
        self.cluster = cluster
        n = store.num_shards
        self.shard_cpus = float(shard_cpus) if shard_cpus else cpus_per_worker(node_cpus(ray), n)
        self.threads = threads_for(self.shard_cpus, threads)
        self.max_restarts = int(max_restarts)
        self.call_timeout, self.restart_timeout = float(call_timeout), float(restart_timeout)
        actor = ray.remote(ShardServer)
        root = os.fspath(Path(store.path).resolve())
        # named, so an operator (or tools/bench_failover.py) can find a shard's actor from another
        # driver: ray.util.list_named_actors(all_namespaces=True), then ray.get_actor(name, namespace)
        token = uuid.uuid4().hex[:8]
        self.actor_names = [f"{ACTOR_PREFIX}{info.index:03d}-{token}" for info in store.shards]
        self.actors = [
            actor.options(num_cpus=self.shard_cpus, max_restarts=self.max_restarts, max_task_retries=0,
                          scheduling_strategy="SPREAD", name=name).remote(root, info.index, info.manifest_sha256,
                                                                         self.threads)
            for info, name in zip(store.shards, self.actor_names)]
        try:
            pending = {a.warm.remote(store.layers): i for i, a in enumerate(self.actors)}
            ready, waiting = ray.wait(list(pending), num_returns=len(pending), timeout=ready_timeout)
            if waiting:
                free = ray.available_resources().get("CPU", 0.0)
                raise DistributedError(
                    f"{len(waiting)} of {n} shard actors were not placed within {ready_timeout:.0f} s "
                    f"(each declares num_cpus={self.shard_cpus:g}; the cluster has "
                    f"{cluster_cpus(ray):g} CPUs, {free:g} free): pass shard_cpus= or free the cluster")
            for ref in ready:
                self._get(pending[ref], ref, None)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ calls
    def _get(self, shard: int, ref: Any, resubmit: Any) -> Any:
        """``ray.get`` of one shard's call; resubmitted while its actor restarts."""
        ray = self._ray
        info = self.store.shards[shard]
        deadline = time.monotonic() + self.restart_timeout
        tries = 0
        while True:
            try:
                return ray.get(ref, timeout=self.call_timeout)
            except ray.exceptions.GetTimeoutError:
                raise DistributedError(f"{info.label} did not answer within {self.call_timeout:.0f} s; "
                                       "no partial answer is returned") from None
            except ray.exceptions.RayActorError as exc:
                # "Unavailable" while Ray restarts the actor: wait for it (until the deadline);
                # a death counts as one try of at most max_restarts + 1.
                tries += not isinstance(exc, ray.exceptions.ActorUnavailableError)
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                if resubmit is None or tries > self.max_restarts or time.monotonic() > deadline:
                    cause = self._creation_error(exc)
                    raise DistributedError(
                        f"{info.label}: its actor died and could not be restarted ({cause or first}); "
                        "the query fails rather than return a partial answer") from None
                time.sleep(min(2.0, 0.2 * 2 ** (tries - 1)))
                self._await_restart(shard, deadline)
                ref = resubmit()
            except ray.exceptions.RayTaskError as exc:
                # the shard's own code raised: a user error stays what one process would raise
                # (the service answers it 4xx); anything else names the shard, never a bare 500
                cause = getattr(exc, "cause", None)
                if isinstance(cause, CompNNError):
                    raise cause from None
                lines = str(cause if cause is not None else exc).strip().splitlines()
                raise DistributedError(f"{info.label} failed ({type(cause or exc).__name__}: "
                                       f"{lines[-1] if lines else 'no message'}); no partial answer is "
                                       "returned") from None
            except ray.exceptions.RayError as exc:  # object lost, worker crashed, out of memory, ...
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise DistributedError(f"{info.label} could not answer ({type(exc).__name__}: {first}); "
                                       "no partial answer is returned") from None
            except CompNNError:
                raise

    def _await_restart(self, shard: int, deadline: float) -> None:
        """Wait (until ``deadline``) for a restarted actor to answer a cheap call, so that the
        restart is bounded by ``restart_timeout`` and only the query itself by ``call_timeout``:
        an actor that cannot be placed again, or whose restart hangs, fails the query within
        ``restart_timeout`` instead of holding it for ``call_timeout``. A death seen here is left
        to the caller's next try (its resubmitted call raises it)."""
        ray = self._ray
        try:
            ray.get(self.actors[shard].describe.remote(), timeout=max(0.1, deadline - time.monotonic()))
        except ray.exceptions.GetTimeoutError:
            raise DistributedError(
                f"{self.store.shards[shard].label}: its actor died and was not back within "
                f"{self.restart_timeout:.0f} s; the query fails rather than return a partial answer") from None
        except ray.exceptions.RayError:
            pass

    @staticmethod
    def _creation_error(exc: Exception) -> str | None:
        """The user error that made an actor's (re)start fail, if Ray reports one."""
        text = str(exc)
        for marker in ("IndexStoreError:", "DistributedError:", "QueryError:"):
            if marker in text:
                return text[text.rindex(marker):].strip().splitlines()[0]
        return None


    def search(self, feats, ids, *, layer, options, init=None, pyramid=(), norms=None, info=None) -> NNField:
        # The query's window norms travel with its hyperpatches, so a shard's exact search takes
        # the same (fused) path as one process: each image's similarities do not depend on how
        # images are grouped, and the merged field equals the unsharded one bit for bit.
        ray = self._ray
        wanted = {layer, *pyramid}
        ref = ray.put({n: np.asarray(v) for n, v in feats.items() if n in wanted})  # once per query
        norms_ref = ray.put({n: np.asarray(v) for n, v in (norms or {}).items() if n in wanted})
        calls = []
        for s, local in self.store.locate(ids):
            shard = self.store.shards[s]
            args = (ref, local, layer, options, localize_init(init, shard.start, shard.stop, local),
                    tuple(pyramid), norms_ref)
            submit = (lambda s=s, args=args: self.actors[s].search.remote(*args))
            calls.append((s, submit(), submit))
        parts, seconds = [], []
        for s, pending, submit in calls:
            field, sec = self._get(s, pending, submit)
            parts.append(to_global(field, self.store.shards[s].start))
            seconds.append(sec)
        self.last = {"shard_seconds": seconds}
        return merge_fields(parts)

    def _rows(self, shard: int, name: str, ids: np.ndarray) -> np.ndarray:
        submit = lambda: self.actors[shard].rows.remote(name, np.asarray(ids, dtype=np.int64))
        return self._get(shard, submit(), submit)

    def array(self, name: str) -> Any:
        return self.store.array(name, read=lambda s, ids: self._rows(s, name, ids))

    def close(self) -> None:
        detach(self.store, self)
        for a in getattr(self, "actors", []):
            try:
                self._ray.kill(a, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.actors = []

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "shards": self.store.num_shards, "cluster": self.cluster,
                "shard_cpus": self.shard_cpus, "threads": self.threads, "actors": list(self.actor_names)}
