"""Exact top-1 search over a subset of an index store's images.

Every database image occupies one contiguous id range of the layer's vectors, so searching a
shortlist is a handful of dense matrix products against slices of the store's own storage (the
zero-copy view of :meth:`IndexStore.vectors`): no copy of the index, no per-position loop.

Design (measured with ``tools/bench_exact.py``): the selected images are merged into runs of
adjacent ids, each run is cut into database blocks, and every (database block, query block) pair
is one ``torch.mm`` into a preallocated buffer followed by a row-wise ``torch.max``; the running
best per query is kept with strict ``>`` (the first maximum in id order wins). The max pass
reads the buffer once per 2·D flops of GEMM, a few per cent of the time. Alternatives measured
were ``faiss.knn`` on slices (about as fast, but it needs aligned input to stay so and returns
no more) and NumPy ``matmul`` (it silently drops BLAS for *unaligned* arrays, and a
memory-mapped FAISS file stores its vectors at byte offset 45, so the view is unaligned).
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from ..errors import QueryError
from .field import NNField

#: Default rows per query block and per database block (a 64 MiB float32 product buffer).
DEFAULT_BLOCK_SIZE = 4096


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


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    """Zero-copy tensor over a (possibly read-only) array; the search only reads it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "The given NumPy array is not writable"
        return torch.from_numpy(array)


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
        Rows per query block and per database block (default 4096); the product buffer holds
        ``block_size ** 2`` float32 values.
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
    runs = image_runs(ids, offs)

    qt = torch.from_numpy(q.reshape(nq, dim))
    db = _as_tensor(vectors)
    bq = min(block_size, nq)
    best_sim = torch.full((nq,), -float("inf"), dtype=torch.float32)
    best_id = torch.zeros(nq, dtype=torch.int64)
    buf = torch.empty(bq * block_size, dtype=torch.float32)
    vals = torch.empty(bq, dtype=torch.float32)
    args = torch.empty(bq, dtype=torch.int64)
    with thread_limit(threads), torch.no_grad():
        for start, stop in runs:
            for b0 in range(start, stop, block_size):
                b1 = min(b0 + block_size, stop)
                block_t = db[b0:b1].T
                for q0 in range(0, nq, bq):
                    q1 = min(q0 + bq, nq)
                    rows = q1 - q0
                    out = buf[: rows * (b1 - b0)].view(rows, b1 - b0)
                    torch.mm(qt[q0:q1], block_t, out=out)
                    torch.max(out, dim=1, out=(vals[:rows], args[:rows]))
                    cur_s, cur_i = best_sim[q0:q1], best_id[q0:q1]
                    better = vals[:rows] > cur_s
                    cur_s[better] = vals[:rows][better]
                    cur_i[better] = args[:rows][better] + b0
    return ids_to_field(
        best_id.numpy(), best_sim.numpy(), offsets=offs, grids=g, shape=(hq, wq)
    )
