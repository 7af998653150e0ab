"""Exact top-1 search over a subset of an index store's images.

Every database image occupies one contiguous id range of the layer's vectors, so searching a
shortlist is a handful of dense matrix products against slices of the store's own storage (the
zero-copy blocks of :meth:`LayerVectors.blocks`): no copy of the index, no per-position loop.

Design (measured with ``tools/bench_exact.py`` on the 2-core AMD EPYC host, Q = 16129,
D = 512): the selected images are merged into runs of adjacent ids and each run is one
``faiss.knn(queries, vectors[a:b], 1, METRIC_INNER_PRODUCT)`` call; runs are merged with a strict
``>`` so the lowest id wins ties (FAISS's top-1 handler keeps the first maximum inside a run).
FAISS computes 4096 × 1024 GEMM blocks into its own preallocated buffer and reduces each to a
row maximum in parallel. Measured alternatives: blocked ``torch.mm(out=)`` into a preallocated
buffer plus ``torch.max`` reached the same speed on an idle machine (≈ 165 GFLOP/s) but 10–25 %
less whenever the cores were shared (torch's BLAS is slower on this CPU than the OpenBLAS
FAISS ships); NumPy ``matmul`` silently drops BLAS for *unaligned* operands (≈ 8 GFLOP/s), and a
memory-mapped FAISS file stores its vectors at byte offset 45, so the store's view is unaligned.
``IndexFlatIP.search`` with ``IDSelectorRange`` is equivalent but needs the index object.

Bounded method (``method="bounded"``, the default where the layer has a screen): the exact field
from a fraction of the candidates, pruned by the screen's bounds below a seed field's
similarities (:mod:`compnn_index.search.bounded`).

Fused method (``method="fused"``, the default where bounded cannot run): FAISS already runs at the
machine's float32 GEMM limit, so the fused kernel (``compnn_index.search._fused``, C++, see
``csrc/fused_exact.cpp``) does less arithmetic instead. A k×k hyperpatch is k² pixel feature
vectors divided by the window norm, so a hyperpatch inner product is a sum of k² shifted
pixel-level inner products divided by both window norms: one pixel-level GEMM (D / k² dims) per
pixel-row pair, a shifted k²-term sum and a running best — the same similarities (to ~1e-7) with
about k² times fewer flops. Pixel vectors are read from the stored unit vectors times the stored
norms (the layer's norms sidecar), and from the query's hyperpatches times ``query_norms``. It
needs an ``fp32`` layer with norms and a :class:`LayerSpec` (for ``k``), and the query norms;
``method="auto"`` falls back to FAISS otherwise and ``info["exact_method"]`` says which ran.
"""
from __future__ import annotations

from typing import Sequence

import faiss
import numpy as np

from ..checks import check_choice, check_int, thread_limit
from ..errors import QueryError
from ..index.layer import LayerVectors
from ..options import EXACT_METHODS
from .field import NNField

try:
    from . import _fused
except ImportError as exc:  # pragma: no cover - exercised only on a broken build
    _fused = None
    _FUSED_ERROR: str | None = f"{type(exc).__name__}: {exc}"
else:
    _FUSED_ERROR = None

#: Default query rows per ``faiss.knn`` call (a 256×256 Decoder 2 query has 16129 positions).
DEFAULT_BLOCK_SIZE = 16384
#: ``auto`` measures whether bounded search pays (:func:`compnn_index.search.bounded.bounded_pays`)
#: on problems of at least this many (query, candidate) pairs; smaller ones cost milliseconds
#: whichever method runs, and take bounded.
AUTO_PILOT_PAIRS = 50_000_000


def check_search_inputs(
    queries: np.ndarray, layer: LayerVectors, images: Sequence[int] | np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Validate the arguments shared by the search methods.

    Parameters
    ----------
    queries : array_like, shape (Hq, Wq, D)
        Query hyperpatches; converted to C-contiguous float32.
    layer : LayerVectors
        The database layer (``IndexStore.layer(name)`` or ``LayerVectors.from_array``).
    images : sequence of int
        Database image ids to search.

    Returns
    -------
    queries, images : ndarray
        float32 (Hq, Wq, D); sorted unique int64 image ids.

    Raises
    ------
    QueryError
        On any shape, dtype or range mismatch (the message quotes the value and what was
        expected).
    """
    if not isinstance(layer, LayerVectors):
        raise QueryError(
            f"Expected layer to be a LayerVectors (IndexStore.layer(name) or "
            f"LayerVectors.from_array), but got {type(layer).__name__}")
    q = np.asarray(queries)
    if q.ndim != 3:
        raise QueryError(f"Expected queries of shape (Hq, Wq, D), but queries.shape = {q.shape}")
    if not (np.issubdtype(q.dtype, np.floating) or np.issubdtype(q.dtype, np.integer)):
        raise QueryError(f"Expected real-valued queries, but queries.dtype = {q.dtype}")
    if q.shape[0] * q.shape[1] == 0:
        raise QueryError(f"Expected a non-empty query grid, but queries.shape = {q.shape}")
    q = np.ascontiguousarray(q, dtype=np.float32)
    if q.shape[2] != layer.dim:
        raise QueryError(
            f"layer {layer.name!r}: query hyperpatches have {q.shape[2]} dims but the layer holds "
            f"{layer.dim}; was the index built with this model?")
    return q, layer.check_images(images)


def field_from_ids(layer: LayerVectors, ids: np.ndarray, similarity: np.ndarray,
                   shape: tuple[int, int]) -> NNField:
    """Global database ids and similarities (flat) → an :class:`NNField` of ``shape``."""
    image, y, x = layer.ids_to_positions(ids)
    return NNField(image.reshape(shape), y.reshape(shape), x.reshape(shape),
                   np.asarray(similarity).reshape(shape))


def fused_unsupported(layer: LayerVectors, query_norms: np.ndarray | None = None) -> str | None:
    """Why fused exact search cannot run on ``layer`` (and these query norms), or None if it can."""
    if _fused is None:
        return f"the native kernel compnn_index.search._fused did not import ({_FUSED_ERROR})"
    if layer.codec != "fp32":
        return f"layer {layer.name!r} is stored as {layer.codec} (the fused kernel reads fp32)"
    if layer.norms is None:
        return (f"layer {layer.name!r} has no norms sidecar (stores built before fused exact search; "
                "rebuild the store with `compnn build` to get one)")
    if layer.spec is None:
        return f"layer {layer.name!r} has no LayerSpec, so its window side k is unknown"
    k = layer.spec.k
    if layer.dim % (k * k):
        return f"layer {layer.name!r}: dimension {layer.dim} is not k*k*C for k = {k}"
    if query_norms is None:
        return "no query_norms were given (the query's window norms before normalisation)"
    return None


def _check_query_norms(query_norms: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    n = np.asarray(query_norms)
    if n.shape != shape or not (np.issubdtype(n.dtype, np.floating) or np.issubdtype(n.dtype, np.integer)):
        raise QueryError(f"Expected query_norms of shape {shape} (the query grid), but got "
                         f"{n.dtype} {n.shape}")
    n = np.ascontiguousarray(n, dtype=np.float32)
    if not np.isfinite(n).all() or (n < 0).any():
        raise QueryError("Expected finite, non-negative query_norms (window norms before normalisation)")
    return n


def exact_search(
    queries: np.ndarray,
    layer: LayerVectors,
    images: Sequence[int] | np.ndarray,
    *,
    method: str = "auto",
    query_norms: np.ndarray | None = None,
    block_size: int | None = None,
    threads: int | None = None,
    info: dict | None = None,
    seed: NNField | None = None,
    projected: np.ndarray | None = None,
) -> NNField:
    """Exact nearest database hyperpatch (top-1 by inner product) for every query position.

    Parameters
    ----------
    queries : array_like, shape (Hq, Wq, D)
        Query hyperpatches (unit vectors for cosine similarity); converted to float32.
    layer : LayerVectors
        The database layer, normally ``IndexStore.layer(name)``. Its vectors are read in place
        (float32 codec) or decoded block by block into one reused tile (other codecs).
    images : sequence of int
        Database image ids to search (order and duplicates do not matter).
    method : {"auto", "bounded", "fused", "faiss"}, default "auto"
        ``"faiss"``: ``faiss.knn`` over the images' id ranges (the reference). ``"fused"``: the
        pixel-level fused kernel (QueryError if it cannot run: see :func:`fused_unsupported`).
        ``"bounded"``: certified exact search pruned by the layer's screen and a seed field
        (:mod:`compnn_index.search.bounded`; QueryError without a screen). ``"auto"``: the
        fastest that can run — bounded where the layer has a screen and its pruning pays (a
        pilot measures it once per layer on large problems: ``info["exact_auto"]``), else
        fused, else FAISS.
    query_norms : array_like, shape (Hq, Wq), optional
        The query windows' norms before normalisation (``hyperpatches(..., return_norms=True)``);
        the fused method needs them.
    block_size : int, optional
        Query rows per ``faiss.knn`` call (default 16384). Memory stays bounded either way:
        FAISS multiplies 4096 × 1024 blocks into its own 16 MiB buffer.
    threads : int, optional
        Thread limit for this call (default: the limit in force, see
        :func:`compnn_index.checks.thread_limit`); the fused kernel runs that many threads.
    info : dict, optional
        Filled with ``"exact_method"`` (``"bounded"``, ``"fused"`` or ``"faiss"``: which ran)
        and, when ``auto`` fell back, ``"exact_fallback"`` (why each faster method could not
        run); after a native run also ``"exact_kernel"``; after a bounded run the pruned
        fraction at each grain (see :func:`compnn_index.search.bounded.bounded_search`).
    seed : NNField, optional
        ``bounded``: the field whose similarities are the first lower bounds (default:
        HyperPatch-Match from the screen start). It only prunes: garbage entries are ignored.
    projected : ndarray, optional
        ``bounded``: the queries' screen projection, when the caller computed it already.

    Returns
    -------
    NNField
        Shaped ``(Hq, Wq)``. Among equal similarities the lowest database id wins. The two
        methods agree on every similarity to about 1e-6 (float rounding), and so on every id
        except near-exact ties.

    Raises
    ------
    QueryError
        Invalid shapes, dtypes, image ids or options.

    Examples
    --------
    >>> import numpy as np
    >>> from compnn_index.index import LayerVectors
    >>> db = np.eye(4, dtype=np.float32)                       # one 2×2 image, 4-dim vectors
    >>> layer = LayerVectors.from_array(db, grids=(2, 2))
    >>> exact_search(db[[3, 0]].reshape(1, 2, 4), layer, [0]).x.tolist()
    [[1, 0]]
    """
    q, ids = check_search_inputs(queries, layer, images)
    block_size = DEFAULT_BLOCK_SIZE if block_size is None else check_int(block_size, "block_size", low=1)
    method = check_choice(method, "method", EXACT_METHODS, error=QueryError)
    info = {} if info is None else info
    info.pop("exact_fallback", None)
    fallback = []
    if method in ("auto", "bounded"):
        from .bounded import bounded_pays, bounded_search, bounded_unsupported  # lazy: the seed imports HPM

        reason = bounded_unsupported(layer)
        if reason is None and method == "auto":  # bounded only where it pays on this layer
            other = "fused" if fused_unsupported(layer, query_norms) is None else "faiss"
            known = other in getattr(layer, "_bounded_pays", {})
            if known or q.shape[0] * q.shape[1] * layer.positions(ids) >= AUTO_PILOT_PAIRS:
                pays, why = bounded_pays(q, layer, ids, other, threads=threads)  # measured once per layer
                info["exact_auto"] = why
                if not pays:
                    reason = why
        if reason is None:
            return bounded_search(q, layer, ids, seed=seed, projected=projected, threads=threads, info=info)
        if method == "bounded":
            raise QueryError(f"bounded exact search cannot run: {reason}")
        fallback.append(f"bounded: {reason}")
    if method != "faiss":
        reason = fused_unsupported(layer, query_norms)
        if reason is None and layer.positions(ids) == 0:
            reason = "the selected images hold no positions"
        if reason is None:
            norms = _check_query_norms(query_norms, q.shape[:2])
            with thread_limit(threads) as n_threads:
                best, sim, stats = _fused.search(q, norms, layer.vectors, layer.norms, ids, layer.offsets,
                                                 layer.grids, int(layer.spec.k), int(n_threads))
            info.update(exact_method="fused", exact_kernel=stats["kernel"])
            if fallback:
                info["exact_fallback"] = "; ".join(fallback)
            return field_from_ids(layer, best.ravel(), sim.ravel(), q.shape[:2])
        if method == "fused":
            raise QueryError(f"fused exact search cannot run: {reason}")
        fallback.append(f"fused: {reason}")
        info["exact_fallback"] = "; ".join(fallback)
    info["exact_method"] = "faiss"
    hq, wq, dim = q.shape
    nq = hq * wq
    flat = q.reshape(nq, dim)
    best_sim = np.full(nq, -np.inf, dtype=np.float32)
    best_id = np.zeros(nq, dtype=np.int64)
    with thread_limit(threads):
        for start, stop in layer.runs(ids):
            for first, run in layer.blocks(start, stop):  # fp32: one zero-copy view
                for q0 in range(0, nq, block_size):
                    q1 = min(q0 + block_size, nq)
                    sim, idx = faiss.knn(flat[q0:q1], run, 1, metric=faiss.METRIC_INNER_PRODUCT)
                    better = sim[:, 0] > best_sim[q0:q1]
                    best_sim[q0:q1][better] = sim[better, 0]
                    best_id[q0:q1][better] = idx[better, 0] + first
    return field_from_ids(layer, best_id, best_sim, (hq, wq))


def exact_search_per_image(
    queries: np.ndarray, layer: LayerVectors, images: Sequence[int] | np.ndarray, *,
    block_size: int | None = None, threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Every query position's best match in *each* of ``images`` (one exact pass, kept apart).

    Returns ``(similarity, ids)``, float32 and int64 ``(len(images), Hq, Wq)`` in the order of
    ``images`` (e.g. a shortlist, best-ranked first). :func:`best_of` turns the first ``k`` rows
    into the NN field of a top-``k`` search — identical to :func:`exact_search` over those
    images — so top-1/16/32/64 fields cost one top-64 search.
    """
    q, _ = check_search_inputs(queries, layer, images)
    order = np.asarray(images, dtype=np.int64).ravel()
    block_size = DEFAULT_BLOCK_SIZE if block_size is None else check_int(block_size, "block_size", low=1)
    hq, wq, dim = q.shape
    nq = hq * wq
    flat = q.reshape(nq, dim)
    sims = np.full((order.size, nq), -np.inf, dtype=np.float32)
    ids = np.zeros((order.size, nq), dtype=np.int64)
    with thread_limit(threads):
        for j, n in enumerate(order):
            start, stop = layer.image_range(int(n))
            for first, run in layer.blocks(start, stop):
                for q0 in range(0, nq, block_size):
                    q1 = min(q0 + block_size, nq)
                    sim, idx = faiss.knn(flat[q0:q1], run, 1, metric=faiss.METRIC_INNER_PRODUCT)
                    better = sim[:, 0] > sims[j, q0:q1]
                    sims[j, q0:q1][better] = sim[better, 0]
                    ids[j, q0:q1][better] = idx[better, 0] + first
    return sims.reshape(-1, hq, wq), ids.reshape(-1, hq, wq)


def best_of(layer: LayerVectors, similarity: np.ndarray, ids: np.ndarray, k: int) -> NNField:
    """The NN field of the first ``k`` images of :func:`exact_search_per_image`'s result
    (highest similarity; among equal similarities the lowest database id, like exact_search)."""
    k = check_int(k, "k", low=1, high=similarity.shape[0])
    s, i = similarity[:k], ids[:k]
    best = s.max(axis=0)
    pick = np.where(s == best, i, np.iinfo(np.int64).max).min(axis=0)
    return field_from_ids(layer, pick.ravel(), best.ravel(), best.shape)
