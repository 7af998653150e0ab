"""Certified exact search: HyperPatch-Match's field as a lower bound, the screen as an upper bound.

Exact search scores every query position against every shortlisted position; nearly all of those
candidates are far worse than the answer. Every store carries a screen (a 32-byte Cauchy–Schwarz
bound per stored vector, :mod:`compnn_index.index.screen`), and HyperPatch-Match finds, in a
fraction of exact search's time, a field within ~1.5% of the exact similarity. The similarity
of the seed's match is a lower bound of the best one; a candidate whose upper bound is below it
cannot be the answer, so skipping it changes nothing. What is scored exactly is what remains.

The native kernel (``csrc/bounded_exact.cpp``, module ``_bounded``) applies the bound at four
grains, coarse to fine — a tile of query positions against a tile of stored positions (balls
around the tiles' centroids in screen space), one query against a stored tile, one query against
one stored vector (the screen row), and the exact similarity — and raises each position's lower
bound whenever it accepts a better match. The result is the exact field: the same similarities
as the other methods (to float rounding) and the same ids except exact ties (lowest id wins).
The seed only prunes: a seed entry outside the shortlist, or garbage, is ignored.

Memory: per call the kernel holds the shortlisted leaves' bounds and transposed screen rows,
about 64 bytes per shortlisted position (~0.4 GB for a whole-set Facades decoder2 query of 6.45 M
positions), besides the store's own mapped pages.

``info`` receives ``exact_method="bounded"``, the seed's time and kind, and the pruned fraction at
every grain (``bounded_pruned``), which ``QueryResult.params`` and the benchmarks report.
"""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from ..checks import current_threads, thread_limit
from ..errors import QueryError
from ..index.layer import LayerVectors
from .field import NNField

try:
    from . import _bounded
except ImportError as exc:  # pragma: no cover - exercised only on a broken build
    _bounded = None
    _BOUNDED_ERROR: str | None = f"{type(exc).__name__}: {exc}"
else:
    _BOUNDED_ERROR = None

#: Stored positions per database tile and query positions per query tile ((rows, columns), at
#: most 16 each: one 16-lane step of the bound kernels). Chosen by tools/bench_exact.py --tiles.
DEFAULT_TILE = (4, 4)
DEFAULT_QUERY_TILE = (4, 4)
#: How positions are grouped into tiles: ``"kd"`` (a k-d split of the screen rows: leaves of up to
#: 16 positions close in screen space) or ``"spatial"`` (the ``tile`` / ``query_tile`` blocks).
DEFAULT_GROUPING = "kd"


def bounded_unsupported(layer: LayerVectors) -> str | None:
    """Why bounded exact search cannot run on ``layer``, or None if it can."""
    if _bounded is None:
        return f"the native kernel compnn_index.search._bounded did not import ({_BOUNDED_ERROR})"
    if layer.screen is None:
        return (f"layer {layer.name!r} has no screen sidecar (stores built before it: "
                "`compnn upgrade STORE` adds one in place)")
    if layer.codec not in ("fp32", "fp16", "sq8"):
        return f"layer {layer.name!r} is stored as {layer.codec} (the bounded kernel reads fp32, fp16, sq8)"
    if not 2 <= layer.screen.width <= 64:
        return f"layer {layer.name!r}: screen width {layer.screen.width} is outside 2..64"
    return None


def seed_ids(layer: LayerVectors, seed: NNField, shape: tuple[int, int]) -> np.ndarray:
    """A seed field as global ids, flat; entries that name no stored position become -1."""
    if not isinstance(seed, NNField) or seed.shape != shape:
        got = seed.shape if isinstance(seed, NNField) else type(seed).__name__
        raise QueryError(f"Expected a seed NNField of the query grid's shape {shape}, but got {got}")
    image, y, x = (a.ravel().astype(np.int64) for a in (seed.image, seed.y, seed.x))
    ok = (image >= 0) & (image < layer.num_images)
    g = np.zeros((image.size, 2), dtype=np.int64)
    g[ok] = layer.grids[image[ok]]
    ok &= (y >= 0) & (y < g[:, 0]) & (x >= 0) & (x < g[:, 1])
    ids = np.full(image.size, -1, dtype=np.int64)
    ids[ok] = layer.offsets[image[ok]] + y[ok] * g[ok, 1] + x[ok]
    return ids


def default_seed(queries: np.ndarray, layer: LayerVectors, images: np.ndarray, t: np.ndarray,
                 threads: int) -> NNField:
    """HyperPatch-Match from the screen start with the query defaults (the fastest good field)."""
    from ..options import DEFAULTS
    from .hyperpatchmatch import patchmatch
    from .start import screen_start

    start = screen_start(queries, layer, images, candidates=DEFAULTS.start_candidates, threads=threads,
                         projected=t)
    return patchmatch(queries, layer, images, **DEFAULTS.patchmatch_params(), threads=threads, init=start,
                      screen_q=t)


def bounded_search(
    queries: np.ndarray,
    layer: LayerVectors,
    images: Sequence[int] | np.ndarray,
    *,
    seed: NNField | None = None,
    projected: np.ndarray | None = None,
    tile: tuple[int, int] = DEFAULT_TILE,
    query_tile: tuple[int, int] = DEFAULT_QUERY_TILE,
    grouping: str = DEFAULT_GROUPING,
    residual_scale: float = 1.0,
    threads: int | None = None,
    info: dict | None = None,
) -> NNField:
    """The exact NN field of ``queries`` over ``images``, pruned by the screen and a seed field.

    Parameters
    ----------
    queries : ndarray of float32, shape (Hq, Wq, D)
        Query hyperpatches (unit vectors), already checked (:func:`exact.check_search_inputs`).
    layer : LayerVectors
        The database layer; it needs a screen (:func:`bounded_unsupported`).
    images : ndarray of int64
        Sorted unique database image ids.
    seed : NNField, optional
        Any field over the query grid (its matches' similarities are the first lower bounds).
        Default: HyperPatch-Match from the screen start with the query defaults.
    projected : ndarray of float32, shape (Hq * Wq, W), optional
        The queries' screen projection (``layer.screen.project``), when the caller has it.
    tile, query_tile : (int, int)
        ``grouping="spatial"``: database and query tile shapes (rows, columns), at most 16 each.
    grouping : {"kd", "spatial"}
        How positions are grouped into the tiles the coarse grains bound (see the kernel).
    residual_scale : float, default 1.0
        1: the certified bound (the exact field). Below 1 the residual term of every bound is
        scaled by it, so the search is approximate: the best exact similarity among the candidates
        whose relaxed bound reaches the best so far (HyperPatch-Match's polish).
    threads : int, optional
        Thread limit (default: the limit in force).
    info : dict, optional
        Filled with ``exact_method="bounded"``, ``bounded_seed`` (``"given"`` or
        ``"hyperpatchmatch"``), ``bounded_seed_seconds``, ``bounded_search_seconds`` and
        ``bounded_pruned``: per grain the fraction of its checks that pruned, and the fraction of
        all candidate pairs scored exactly.

    Returns
    -------
    NNField
        The exact field (ties to the lowest database id).
    """
    reason = bounded_unsupported(layer)
    if reason is not None:
        raise QueryError(f"bounded exact search cannot run: {reason}")
    info = {} if info is None else info
    hq, wq, dim = queries.shape
    sc = layer.screen
    with thread_limit(threads) as n_threads:
        n_threads = int(n_threads or current_threads())
        t = sc.project(queries.reshape(-1, dim)) if projected is None else np.ascontiguousarray(
            projected, dtype=np.float32).reshape(hq * wq, sc.width)
        t0 = time.perf_counter()
        if seed is None:
            seed = default_seed(queries, layer, images, t, n_threads)
            info["bounded_seed"] = "hyperpatchmatch"
        else:
            info["bounded_seed"] = "given"
        t1 = time.perf_counter()
        codec = {"scale": None, "bias": None}
        if layer.codec == "sq8":
            codec = {"scale": np.ascontiguousarray(layer.codec_params["scale"], dtype=np.float32),
                     "bias": np.ascontiguousarray(layer.codec_params["bias"], dtype=np.float32)}
        ids, sim, stats = _bounded.search(
            queries.reshape(hq * wq, dim), t, hq, wq, layer.raw, layer.codec, codec["scale"], codec["bias"],
            sc.rows.view(np.uint16), float(sc.margin), np.asarray(images, dtype=np.int64), layer.offsets,
            layer.grids, seed_ids(layer, seed, (hq, wq)), tuple(tile), tuple(query_tile), n_threads, grouping,
            float(residual_scale))
        t2 = time.perf_counter()
    info.update(exact_method="bounded", exact_kernel=stats["kernel"], bounded_seed_seconds=round(t1 - t0, 4),
                bounded_search_seconds=round(t2 - t1, 4), bounded_pruned=pruned_fractions(stats),
                bounded_counts={k: int(v) for k, v in stats.items() if k != "kernel"})
    unmatched = int(np.count_nonzero(ids >= layer.ntotal))  # no candidate was ever accepted
    if unmatched:  # only a non-finite query window can do that: every finite candidate is scored
        raise QueryError(f"bounded exact search: {unmatched} query positions matched nothing "
                         "(non-finite query hyperpatches?)")
    image, y, x = layer.ids_to_positions(ids)
    return NNField(image.reshape(hq, wq), y.reshape(hq, wq), x.reshape(hq, wq), sim.reshape(hq, wq))


#: ``auto`` prefers a faster fallback when the bounded search would score more than this fraction
#: of all (query, candidate) pairs exactly: its per-pair cost is then above the fused kernel's
#: (measured on Facades decoder2: 0.25-1% scored, 3-4x faster than fused; on random smooth
#: activations whose screen holds little energy: 90% scored, 10x slower than fused).
AUTO_MAX_SCORED = {"fused": 0.05, "faiss": 0.2}
#: Query rows of the pilot that measures it (every ``PILOT_STEP``-th row; the whole grid when small).
PILOT_STEP = 16


def bounded_pays(queries: np.ndarray, layer: LayerVectors, images: np.ndarray, fallback: str, *,
                 threads: int | None = None) -> tuple[bool, str]:
    """Whether bounded search beats ``fallback`` ("fused" or "faiss") on this layer, and why.

    The pruning power is a property of the layer (how much energy its screen holds, how clustered
    its vectors are), so the answer is measured once per layer — a pilot search over every
    :data:`PILOT_STEP`-th query row — and kept on the layer object for later queries.
    """
    cache = getattr(layer, "_bounded_pays", None)
    if cache is None:
        cache = {}
        layer._bounded_pays = cache
    if fallback not in cache:
        pilot = queries[::PILOT_STEP] if queries.shape[0] >= 2 * PILOT_STEP else queries
        info: dict = {}
        bounded_search(np.ascontiguousarray(pilot), layer, images, threads=threads, info=info)
        scored = info["bounded_pruned"]["scored"]
        limit = AUTO_MAX_SCORED[fallback]
        cache[fallback] = (scored <= limit,
                           f"pilot on {pilot.shape[0]} of {queries.shape[0]} query rows scored "
                           f"{scored:.2%} of pairs exactly ({'<=' if scored <= limit else '>'} {limit:.0%}: "
                           f"{'bounded' if scored <= limit else fallback} is faster)")
    return cache[fallback]


def pruned_fractions(stats: dict) -> dict:
    """Per grain, the fraction of its checks that pruned; and of all pairs, the fraction scored."""
    def frac(a: str, b: str) -> float:
        return round(float(stats[b]) / float(stats[a]), 6) if stats[a] else 0.0
    out = {"tile_pairs": frac("tile_pairs", "tile_pairs_pruned"),
           "query_tiles": frac("query_tiles", "query_tiles_pruned"),
           "vectors": frac("vector_bounds", "vector_bounds_pruned"),
           "scored": frac("candidates", "exact")}
    if stats.get("full_bounds"):  # a screen wider than 16: its full rows are one more grain
        out["full_rows"] = frac("full_bounds", "full_bounds_pruned")
    return out
