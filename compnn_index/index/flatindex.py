"""The search side of a stored FAISS index, read-only, and zero-copy views of its storage.

A memory-mapped FAISS index aborts the process on ``add``/``reset``, so the store never hands
out the raw index: :class:`ReadOnlyFlatIndex` exposes only searching, and :func:`_readonly_view`
a read-only NumPy view whose owner keeps the index (and its memory map) alive.
"""
from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from ..errors import IndexStoreError, QueryError


_MUTATORS = frozenset(
    {"add", "add_with_ids", "add_c", "reset", "remove_ids", "train", "merge_from",
     "update_vectors", "sa_decode", "permute_entries", "get_xb", "codes"}
)


class _ViewOwner:
    """Exposes a float32 buffer of a FAISS index to NumPy and keeps the index alive."""

    def __init__(self, index: faiss.Index, shape: tuple[int, int]) -> None:
        self.index = index
        ptr = faiss.rev_swig_ptr(index.get_xb(), 1).ctypes.data
        self.__array_interface__ = {
            "data": (ptr, True),  # read-only
            "shape": shape,
            "typestr": "<f4",
            "version": 3,
        }


def _readonly_view(index: faiss.Index) -> np.ndarray:
    """Zero-copy, read-only ``(ntotal, d)`` float32 view of a flat index's storage."""
    return np.asarray(_ViewOwner(index, (int(index.ntotal), int(index.d))))


class ReadOnlyFlatIndex:
    """The search side of a stored ``IndexFlatIP``; mutation is refused.

    Attributes
    ----------
    name : str
        Layer name (or ``"global"``).
    d, ntotal : int
        Dimension and number of vectors.
    """

    def __init__(self, index: faiss.Index, name: str) -> None:
        self._index = index
        self.name = name

    @property
    def d(self) -> int:
        return int(self._index.d)

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    @property
    def metric_type(self) -> int:
        return int(self._index.metric_type)

    def search(
        self, queries: np.ndarray, k: int = 1, *, id_range: tuple[int, int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` inner-product search, optionally within ids ``[a, b)``.

        Parameters
        ----------
        queries : array_like, shape (nq, d)
            Converted to C-contiguous float32.
        k : int, default 1
            Neighbours per query (``1 <= k <= ntotal``).
        id_range : (int, int), optional
            Restrict to ids ``a <= id < b`` (``faiss.IDSelectorRange``: keeps BLAS speed).

        Returns
        -------
        similarities : ndarray of float32, shape (nq, k)
        ids : ndarray of int64, shape (nq, k)
            Global ids; -1 where fewer than ``k`` vectors were searched.
        """
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.d:
            raise QueryError(
                f"layer {self.name!r}: expected queries of shape (nq, {self.d}), but got {q.shape}"
            )
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= self.ntotal:
            raise QueryError(f"Expected 1 <= k <= ntotal = {self.ntotal}, but k = {k!r}")
        if id_range is None:
            return self._index.search(q, int(k))
        a, b = (int(v) for v in id_range)
        if not 0 <= a < b <= self.ntotal:
            raise QueryError(
                f"Expected id_range (a, b) with 0 <= a < b <= ntotal = {self.ntotal}, but "
                f"id_range = {id_range!r}"
            )
        params = faiss.SearchParameters(sel=faiss.IDSelectorRange(a, b))
        return self._index.search(q, int(k), params=params)

    def reconstruct(self, i: int) -> np.ndarray:
        """A copy of vector ``i``."""
        if not 0 <= int(i) < self.ntotal:
            raise QueryError(f"Expected 0 <= id < ntotal = {self.ntotal}, but id = {i}")
        return self._index.reconstruct(int(i))

    def __getattr__(self, name: str) -> Any:
        if name in _MUTATORS:
            raise IndexStoreError(
                f"layer {self.name!r}: the index store is read-only ({name} is not allowed); "
                "build a new store with build_index"
            )
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __repr__(self) -> str:
        return f"ReadOnlyFlatIndex({self.name!r}, d={self.d}, ntotal={self.ntotal})"
