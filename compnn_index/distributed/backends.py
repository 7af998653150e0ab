"""In-process search backends and the merge of per-shard NN fields.

Merging (:func:`merge_fields`): shard fields come in shard order, i.e. in increasing global
image ids (shards are contiguous image ranges). Per query position the field with the highest
similarity wins; among equal similarities the first shard, whose ids are lower, wins. For exact
search every shard's field is the exact top-1 over its part of the shortlist with the lowest id
among ties, so the merged field is exactly the unsharded one (ids and similarities).

For HyperPatch-Match every shard runs the whole search (all iterations) over its part of the
shortlist, and the merged field takes per position the best of those fields: its similarity is
never below any shard's own field. Against one process this changes two things: the total work
grows with the number of shards holding shortlisted images (each runs ``iterations × Q ×
candidates`` comparisons), and propagation and jumps stay inside a shard (a good match in one
shard cannot seed a neighbour's search in another). A staged start seeds each shard with its
own best-ranked ``seed_images`` images.
"""
from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

import numpy as np

from ..index import IndexStore
from ..index.sharded import ShardedStore
from ..options import QueryOptions
from ..search import NNField, search_field


def to_global(field: NNField, offset: int) -> NNField:
    """A shard's field (shard-local image ids) with global image ids."""
    return NNField(field.image + int(offset), field.y, field.x, field.similarity)


def merge_fields(fields: Sequence[NNField]) -> NNField:
    """Per-position best similarity of fields over disjoint image sets (ties: the first field)."""
    if len(fields) == 1:
        return fields[0]
    sims = np.stack([f.similarity for f in fields])
    best = np.argmax(sims, axis=0)  # the first maximum: the lowest shard, so the lowest id
    pick = lambda name: np.take_along_axis(np.stack([getattr(f, name) for f in fields]), best[None], 0)[0]
    return NNField(pick("image"), pick("y"), pick("x"), pick("similarity"))


def localize_init(init: Any, start: int, stop: int, local_ids: np.ndarray) -> Any:
    """A global start field made shard-local: positions matched outside the shard start at its
    first shortlisted image, same (y, x)."""
    if not isinstance(init, NNField):
        return init
    inside = (init.image >= start) & (init.image < stop)
    image = np.where(inside, init.image - start, int(local_ids[0]))
    return NNField(image, init.y, init.x, init.similarity)


class SearchBackend:
    """Where one store's queries are searched and its sidecar rows read (in process here).

    Attributes
    ----------
    store : IndexStore
    kind : str
        ``"local"``, ``"local-shards"`` or ``"ray"``.
    last : dict
        Per-shard seconds of the last search (informational: the benchmark's total work).
    """

    kind = "local"

    def __init__(self, store: IndexStore) -> None:
        self.store = store
        self.last: dict[str, Any] = {}

    def search(self, feats: Mapping[str, np.ndarray], ids: np.ndarray, *, layer: str,
               options: QueryOptions, init: Any = None, pyramid: Sequence[str] = (),
               norms: Mapping[str, np.ndarray] | None = None, info: dict | None = None) -> NNField:
        """The NN field of ``feats[layer]`` over the shortlisted images ``ids`` (rank order).

        ``norms`` (the query's hyperpatch norms) let exact search take the fused path; ``info``
        receives which exact search ran.
        """
        t = time.perf_counter()
        field = search_field(feats, self.store.layer, ids, layer=layer, options=options, init=init,
                             pyramid=pyramid, norms=norms, info=info)
        self.last = {"shard_seconds": [time.perf_counter() - t]}
        return field

    def array(self, name: str) -> Any:
        """A sidecar array (``inputs``, ``targets``, ``outputs``), read on demand."""
        return self.store.array(name)

    def close(self) -> None:
        """Release what the backend holds (actors); the store stays usable in process."""

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "shards": getattr(self.store, "num_shards", 1)}


LocalStore = SearchBackend


class LocalShards(SearchBackend):
    """A sharded store searched in this process, shard after shard, fields merged."""

    kind = "local-shards"

    def __init__(self, store: ShardedStore) -> None:
        super().__init__(store)

    def search(self, feats, ids, *, layer, options, init=None, pyramid=(), norms=None, info=None) -> NNField:
        parts, seconds = [], []
        for s, local in self.store.locate(ids):
            shard = self.store.shards[s]
            t = time.perf_counter()
            field = search_field(feats, self.store.shard(s).layer, local, layer=layer, options=options,
                                 init=localize_init(init, shard.start, shard.stop, local), pyramid=pyramid,
                                 norms=norms, info=info)
            seconds.append(time.perf_counter() - t)
            parts.append(to_global(field, shard.start))
        self.last = {"shard_seconds": seconds}
        return merge_fields(parts)


#: Attribute under which a store carries the cluster backend opened for it, so that every
#: CompNN made from that store object (the service's per-worker replicas) shares its actors.
#: (An attribute, not a registry: store and backend are collected together, and Ray ends the
#: actors when their last handle goes.)
_ATTR = "_compnn_backend"


def attach(store: IndexStore, backend: SearchBackend) -> SearchBackend:
    setattr(store, _ATTR, backend)
    return backend


def detach(store: IndexStore, backend: SearchBackend) -> None:
    if getattr(store, _ATTR, None) is backend:
        delattr(store, _ATTR)


def backend_for(store: IndexStore) -> SearchBackend:
    """The backend of a store: the cluster backend opened for it (:func:`attach`), else in
    process (:class:`LocalShards` when the store is sharded)."""
    attached = getattr(store, _ATTR, None)
    if attached is not None:
        return attached
    return LocalShards(store) if isinstance(store, ShardedStore) else LocalStore(store)
