"""Search methods that turn query hyperpatches into an :class:`NNField`.

Every method takes the query hyperpatches, a :class:`~compnn_index.index.LayerVectors` and the
shortlisted image ids:

- :func:`exact_search` (``search/exact.py``): dense GEMM over the shortlisted images' id ranges;
- :func:`patchmatch` (``search/hyperpatchmatch.py``): HyperPatch-Match, the native kernel
  ``search/_hpm`` (C++, ``search/csrc/``), with :func:`patchmatch_reference`
  (``search/reference.py``, NumPy) as its specification and fallback;
- :func:`search_field` (``search/strategy.py``): how a query is searched — exact, or
  HyperPatch-Match started randomly, staged over the best-ranked images, or coarse to fine;
- ``search/ann.py``: the FAISS HNSW / IVF baselines of ``compnn compare``.
"""
from __future__ import annotations

from .exact import best_of, exact_search, exact_search_per_image
from .field import NNField
from .hyperpatchmatch import native_available, native_error, patchmatch, patchmatch_reference, upsample_field
from .strategy import search_field

__all__ = ["NNField", "best_of", "exact_search", "exact_search_per_image", "native_available", "native_error", "patchmatch",
           "patchmatch_reference", "search_field", "upsample_field"]
