"""Exact top-1 search over a subset of an index store's images.

Every database image occupies one contiguous id range of the layer's vectors, so searching a
shortlist is a handful of dense matrix products against slices of the store's own storage (the
zero-copy view of :meth:`IndexStore.vectors`): no copy of the index, no per-position loop.

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
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import faiss
import numpy as np
import torch
from threadpoolctl import threadpool_limits

from ..errors import QueryError
from .field import NNField

#: Default query rows per ``faiss.knn`` call (a 256×256 Decoder 2 query has 16129 positions).
DEFAULT_BLOCK_SIZE = 16384


def check_search_inputs(
    queries: np.ndarray,
    vectors: np.ndarray,
    images: Sequence[int] | np.ndarray,
    *,
    offsets: np.ndarray,
    grids: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validate the arguments shared by the search methods.

    Parameters
    ----------
    queries : array_like, shape (Hq, Wq, D)
        Query hyperpatches; converted to C-contiguous float32.
    vectors : ndarray of float32, shape (N, D)
        Database vectors (the store's view); never copied, so it must already be float32.
    images : sequence of int
        Database image ids to search.
    offsets : array_like of int, shape (n + 1,)
        Image ``i`` occupies ids ``offsets[i] .. offsets[i+1]-1``.
    grids : array_like of int, shape (n, 2)
        Feature grid ``(Hp, Wp)`` of every database image.

    Returns
    -------
    queries, images, offsets, grids : ndarray
        float32 (Hq, Wq, D); sorted unique int64 image ids; int64 offsets; int64 grids.

    Raises
    ------
    QueryError
        On any shape, dtype or range mismatch (the message quotes the value and what was
        expected).
    """
    q = np.asarray(queries)
    if q.ndim != 3:
        raise QueryError(f"Expected queries of shape (Hq, Wq, D), but queries.shape = {q.shape}")
    if not (np.issubdtype(q.dtype, np.floating) or np.issubdtype(q.dtype, np.integer)):
        raise QueryError(f"Expected real-valued queries, but queries.dtype = {q.dtype}")
    if q.shape[0] * q.shape[1] == 0:
        raise QueryError(f"Expected a non-empty query grid, but queries.shape = {q.shape}")
    q = np.ascontiguousarray(q, dtype=np.float32)

    if not isinstance(vectors, np.ndarray) or vectors.ndim != 2:
        raise QueryError(
            "Expected vectors to be a 2-D ndarray (N, D), but got "
            f"{type(vectors).__name__} with shape {getattr(vectors, 'shape', None)}"
        )
    if vectors.dtype != np.float32 or not vectors.flags.c_contiguous:
        raise QueryError(
            "Expected vectors to be a C-contiguous float32 array (the store's view is never "
            f"copied), but vectors.dtype = {vectors.dtype}, "
            f"C-contiguous = {vectors.flags.c_contiguous}"
        )
    if q.shape[2] != vectors.shape[1]:
        raise QueryError(
            f"Expected queries of dimension D = vectors.shape[1] = {vectors.shape[1]}, but "
            f"queries.shape[2] = {q.shape[2]}"
        )

    offs = np.asarray(offsets)
    if offs.ndim != 1 or offs.size < 2 or not np.issubdtype(offs.dtype, np.integer):
        raise QueryError(
            f"Expected integer offsets of shape (n + 1,) with n >= 1, but offsets.shape = "
            f"{offs.shape}, dtype = {offs.dtype}"
        )
    offs = offs.astype(np.int64)
    n = offs.size - 1
    if offs[0] != 0 or np.any(np.diff(offs) < 0) or offs[-1] > vectors.shape[0]:
        raise QueryError(
            "Expected offsets to start at 0, never decrease and end at most at "
            f"len(vectors) = {vectors.shape[0]}, but offsets = [{offs[0]}, ..., {offs[-1]}]"
        )
    g = np.asarray(grids)
    if g.shape != (n, 2) or not np.issubdtype(g.dtype, np.integer):
        raise QueryError(
            f"Expected integer grids of shape (n, 2) = ({n}, 2), but grids.shape = {g.shape}, "
            f"dtype = {g.dtype}"
        )
    g = g.astype(np.int64)
    if np.any(g[:, 0] * g[:, 1] != np.diff(offs)):
        bad = int(np.flatnonzero(g[:, 0] * g[:, 1] != np.diff(offs))[0])
        raise QueryError(
            f"Expected grids[i, 0] * grids[i, 1] == offsets[i+1] - offsets[i], but for image "
            f"{bad}: {g[bad, 0]} * {g[bad, 1]} != {offs[bad + 1] - offs[bad]}"
        )

    ids = np.asarray(images)
    if ids.size == 0:
        raise QueryError("Expected at least one database image to search, but images is empty")
    if not np.issubdtype(ids.dtype, np.integer):
        raise QueryError(f"Expected integer image ids, but images.dtype = {ids.dtype}")
    ids = np.unique(ids.astype(np.int64).ravel())
    if ids[0] < 0 or ids[-1] >= n:
        bad = ids[(ids < 0) | (ids >= n)]
        raise QueryError(
            f"Expected image ids 0 <= id < {n}, but images contains {bad[:8].tolist()}"
        )
    return q, ids, offs, g


def image_runs(ids: np.ndarray, offsets: np.ndarray) -> list[tuple[int, int]]:
    """Merge sorted image ids into maximal contiguous id ranges ``[start, stop)``.

    Parameters
    ----------
    ids : ndarray of int64
        Sorted, unique image ids.
    offsets : ndarray of int64, shape (n + 1,)
        Per-image id offsets.

    Returns
    -------
    list of (int, int)
        Non-empty ``[start, stop)`` ranges of database ids, ascending.
    """
    breaks = np.flatnonzero(np.diff(ids) != 1) + 1
    runs = []
    for group in np.split(ids, breaks):
        start, stop = int(offsets[group[0]]), int(offsets[group[-1] + 1])
        if stop > start:
            runs.append((start, stop))
    return runs


def ids_to_field(
    ids: np.ndarray, similarity: np.ndarray, *, offsets: np.ndarray, grids: np.ndarray,
    shape: tuple[int, int],
) -> NNField:
    """Turn global database ids into an :class:`NNField` of (image, y, x, similarity).

    Parameters
    ----------
    ids : ndarray of int64, shape (Hq * Wq,)
        Global ids (``offsets[image] + y * Wp + x``).
    similarity : ndarray of float32, shape (Hq * Wq,)
    offsets, grids : ndarray of int64
        As in :func:`check_search_inputs`.
    shape : (int, int)
        The query grid ``(Hq, Wq)``.
    """
    image = np.searchsorted(offsets, ids, side="right") - 1
    local = ids - offsets[image]
    wp = grids[image, 1]
    return NNField(
        image=image.reshape(shape),
        y=(local // wp).reshape(shape),
        x=(local % wp).reshape(shape),
        similarity=similarity.reshape(shape),
    )


@contextmanager
def thread_limit(threads: int | None) -> Iterator[None]:
    """Limit torch, OpenMP (FAISS, torch) and BLAS threads to ``threads`` inside the block.

    ``None`` leaves every setting as it is.
    """
    if threads is None:
        yield
        return
    if int(threads) < 1:
        raise QueryError(f"Expected threads >= 1 or None, but threads = {threads}")
    previous = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        with threadpool_limits(int(threads)):
            yield
    finally:
        torch.set_num_threads(previous)


def exact_search(
    queries: np.ndarray,
    vectors: np.ndarray,
    images: Sequence[int] | np.ndarray,
    *,
    offsets: np.ndarray,
    grids: np.ndarray,
    block_size: int | None = None,
    threads: int | None = None,
) -> NNField:
    """Exact nearest database hyperpatch (top-1 by inner product) for every query position.

    Parameters
    ----------
    queries : array_like, shape (Hq, Wq, D)
        Query hyperpatches (unit vectors for cosine similarity); converted to float32.
    vectors : ndarray of float32, shape (N, D)
        The layer's database vectors, normally ``IndexStore.vectors(layer)``. Read in place,
        never copied.
    images : sequence of int
        Database image ids to search (order and duplicates do not matter).
    offsets : ndarray of int64, shape (n + 1,)
        ``IndexStore.offsets(layer)``.
    grids : ndarray of int64, shape (n, 2)
        ``IndexStore.grids(layer)``.
    block_size : int, optional
        Query rows per ``faiss.knn`` call (default 16384). Memory stays bounded either way:
        FAISS multiplies 4096 × 1024 blocks into its own 16 MiB buffer.
    threads : int, optional
        Thread count for torch / BLAS / OpenMP during the search (default: leave as is).

    Returns
    -------
    NNField
        Shaped ``(Hq, Wq)``. Among equal similarities the lowest database id wins.

    Raises
    ------
    QueryError
        Invalid shapes, dtypes, image ids or options.
    """
    q, ids, offs, g = check_search_inputs(queries, vectors, images, offsets=offsets, grids=grids)
    if block_size is None:
        block_size = DEFAULT_BLOCK_SIZE
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise QueryError(f"Expected block_size to be a positive integer, but block_size = {block_size!r}")
    block_size = int(block_size)
    hq, wq, dim = q.shape
    nq = hq * wq
    flat = q.reshape(nq, dim)
    best_sim = np.full(nq, -np.inf, dtype=np.float32)
    best_id = np.zeros(nq, dtype=np.int64)
    with thread_limit(threads):
        for start, stop in image_runs(ids, offs):
            run = vectors[start:stop]  # a view: C-contiguous float32, never copied
            for q0 in range(0, nq, block_size):
                q1 = min(q0 + block_size, nq)
                sim, idx = faiss.knn(flat[q0:q1], run, 1, metric=faiss.METRIC_INNER_PRODUCT)
                better = sim[:, 0] > best_sim[q0:q1]
                best_sim[q0:q1][better] = sim[better, 0]
                best_id[q0:q1][better] = idx[better, 0] + start
    return ids_to_field(best_id, best_sim, offsets=offs, grids=g, shape=(hq, wq))
