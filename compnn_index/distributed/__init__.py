"""Where a query is searched: one store in process, its shards in process, or shards on Ray.

The API holds one :class:`SearchBackend` per loaded store and routes every search and every
sidecar-array read through it:

- :class:`LocalStore` — an ordinary store, searched in this process (the embedded default);
- :class:`LocalShards` — a sharded store, every shard searched in this process in turn and the
  fields merged (:func:`merge_fields`);
- :class:`~compnn_index.distributed.ray_shards.RayShards` — one Ray actor per shard
  (``compnn_index.distributed.ray_shards``, imported only when a cluster is asked for; Ray is
  the optional extra ``compnn-index[ray]``).

Sharded builds on Ray: :func:`~compnn_index.distributed.ray_build.ray_runner`.
"""
from __future__ import annotations

from .backends import (LocalShards, LocalStore, SearchBackend, attach, backend_for, localize_init,
                       merge_fields, to_global)
from .cluster import DistributedError, cpus_per_worker, import_ray, ray_available

__all__ = ["DistributedError", "attach", "LocalShards", "LocalStore", "SearchBackend", "backend_for",
           "cpus_per_worker", "import_ray", "localize_init", "merge_fields", "open_backend",
           "ray_available", "to_global"]


def open_backend(store, cluster: str | None = None, **options) -> SearchBackend:
    """The backend of ``store``: in process when ``cluster`` is None, else Ray actors per shard.

    ``cluster``: ``"local"`` (start a Ray cluster in this process, or use the one already
    started), ``"auto"`` (join the running cluster, ``RAY_ADDRESS`` or ``ray start``'s),
    ``"ray://host:10001"`` (Ray Client) or ``"host:6379"`` (a head node's GCS address).
    """
    if cluster is None:
        return backend_for(store)
    from .ray_shards import RayShards

    return attach(store, RayShards(store, cluster, **options))
