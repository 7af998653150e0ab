"""FAISS approximate-nearest-neighbour baselines (HNSW, IVF-Flat) over a shortlist's vectors.

Unlike exact search and HyperPatch-Match, which read the store in place, an ANN index needs its
own copy of the shortlisted vectors and a build per shortlist; ``compnn compare`` measures both.
"""
from __future__ import annotations

import time
from typing import Sequence

import faiss
import numpy as np

from ..errors import QueryError
from ..index.layer import LayerVectors
from .exact import check_search_inputs, field_from_ids
from .field import NNField

#: kind -> [(build params, [search params, ...]), ...]
DEFAULT_BASELINES = {
    "hnsw": [({"M": 16, "efConstruction": 40}, [{"efSearch": 16}, {"efSearch": 64}])],
    "ivf": [({"nlist": 256}, [{"nprobe": 4}, {"nprobe": 16}])],
}


def build_ann(kind: str, params: dict, xb: np.ndarray) -> faiss.Index:
    """Build a FAISS approximate index of ``kind`` ("hnsw" | "ivf") over ``xb``."""
    d = xb.shape[1]
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, int(params.get("M", 16)), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(params.get("efConstruction", 40))
        index.add(xb)
        return index
    if kind == "ivf":
        # FAISS wants >= 39 training points per centroid; small shortlists get fewer lists.
        nlist = max(1, min(int(params.get("nlist", 256)), len(xb) // 39))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        index.train(xb[rng.choice(len(xb), size=min(len(xb), nlist * 64), replace=False)])
        index.add(xb)
        return index
    raise QueryError(f"Unknown baseline {kind!r}; expected one of {', '.join(DEFAULT_BASELINES)}")


def ann_fields(kind: str, build_params: dict, search_params: Sequence[dict], queries: np.ndarray,
               layer: LayerVectors, images: np.ndarray) -> tuple[float, list[tuple[dict, NNField, float]]]:
    """Top-1 fields from one FAISS approximate index over the shortlisted images' vectors.

    The index is built once and searched at each of ``search_params`` (``efSearch`` for HNSW,
    ``nprobe`` for IVF). Returns (build seconds, [(params, field, search seconds), ...]).
    """
    q, ids = check_search_inputs(queries, layer, images)
    hq, wq, d = q.shape
    starts = layer.offsets[ids]
    sizes = layer.offsets[ids + 1] - starts
    xb = np.concatenate([layer.decode(np.arange(a, a + n)) for a, n in zip(starts, sizes)])
    base = np.concatenate([np.zeros(1, np.int64), np.cumsum(sizes)])
    t = time.perf_counter()
    index = build_ann(kind, build_params, np.ascontiguousarray(xb, dtype=np.float32))
    build_s = time.perf_counter() - t
    del xb
    flat_q = np.ascontiguousarray(q.reshape(-1, d))
    out = []
    for sp in search_params:
        if kind == "hnsw":
            index.hnsw.efSearch = int(sp["efSearch"])
        else:
            index.nprobe = int(sp["nprobe"])
        t = time.perf_counter()
        sims, lab = index.search(flat_q, 1)
        search_s = time.perf_counter() - t
        # FAISS marks "nothing found" (an IVF probe of empty lists) with id -1 and -3.4e38:
        # count it as the worst possible cosine rather than letting it wreck the mean ratio.
        missing = lab[:, 0] < 0
        sims[missing, 0] = -1.0
        local = np.maximum(lab[:, 0], 0)
        slot = np.searchsorted(base, local, side="right") - 1
        global_ids = starts[slot] + (local - base[slot])  # concatenated order -> store ids
        out.append(({**build_params, **sp}, field_from_ids(layer, global_ids, sims[:, 0], (hq, wq)),
                    search_s))
    return build_s, out
