"""HyperPatch-Match: PatchMatch across a database of images (CompNN's approximate search).

For every query hyperpatch, find a database hyperpatch of high inner product without comparing
against all of them: cost is ``iterations * Q * candidates * D``, independent of the database
size. :func:`patchmatch` runs the native kernel (``compnn_index.search._hpm``, C++);
:func:`patchmatch_reference` (``search/reference.py``) is the same algorithm in NumPy, used as the fallback and as the
specification the kernel is tested against (both return identical fields up to float rounding).

Algorithm
---------
State: one match ``(image, y, x)`` and its similarity per query position.

* **Init**: ``"random"`` (a random shortlisted image and a random position in it) or a given
  :class:`NNField` (e.g. a coarser layer's field mapped with :func:`upsample_field`); the
  similarities are recomputed.
* **Iteration** ``t`` = a row pass, then a column pass. Rows are scanned left to right on even
  iterations and right to left on odd ones; columns top to bottom, then bottom to top.

  - *Row pass* (rows in parallel, each scanned sequentially): propagation from the previous
    position in the scan, its match shifted by one column (from ``(y, x-1)`` matched to
    ``(img, my, mx)``, try ``(img, my, mx+1)``), clipped to the image's grid; then *random search*:
    ``samples`` positions drawn uniformly in the window ``[my - r, my + r] x [mx - r, mx + r]``
    (clipped to the image's grid) around the match ``(my, mx)`` held after propagation,
    radius ``r = R >> level`` with ``R = max(Hp, Wp)`` of that image (halving, alpha = 0.5), the
    ``i``-th sample at level ``(t * samples + i) mod bit_length(R)`` so every scale is visited
    within a few iterations; and ``jumps`` random positions in random *other* shortlisted images.
    These candidates are accepted in draw order when strictly better.
  - *Column pass* (columns in parallel): propagation from the previous position in the column,
    shifted by one row.

  Candidates equal to the current match are skipped (not evaluated).
* **Early stop**: after an iteration whose mean-similarity gain is below ``tol`` (``tol = 0``
  runs every iteration, since the gain is never negative).

Determinism: random numbers come from a counter-based hash (splitmix64) of
``(seed, iteration, position, stream)``, and each row (column) of a pass reads and writes only its
own positions, so the result depends on the seed and inputs only, not on the thread count.
"""
from __future__ import annotations

import math
import warnings
from typing import Union

import numpy as np

from ..errors import QueryError
from ..index.layer import LayerVectors
from ..options import DEFAULTS
from .field import NNField
from .hpm_common import PatchMatchStats, Problem, validate
from .reference import run_reference

try:
    from . import _hpm
except ImportError as exc:  # pragma: no cover - exercised only on a broken build
    _hpm = None
    _NATIVE_ERROR: str | None = f"{type(exc).__name__}: {exc}"
else:
    _NATIVE_ERROR = None

__all__ = [
    "PatchMatchStats",
    "native_available",
    "native_error",
    "patchmatch",
    "patchmatch_reference",
    "upsample_field",
]

InitField = Union[str, NNField]

_FALLBACK_MESSAGE = (
    "The native HyperPatch-Match kernel compnn_index.search._hpm could not be imported ({error}); "
    "falling back to patchmatch_reference (pure NumPy, same results, much slower). "
    "Rebuild it with `.venv/bin/pip install --no-build-isolation -e .` from the repository root."
)


def native_available() -> bool:
    """Whether the native kernel ``compnn_index.search._hpm`` imported (else the NumPy fallback runs)."""
    return _hpm is not None


def native_error() -> str | None:
    """Why the native kernel did not import, or None."""
    return _NATIVE_ERROR


# ------------------------------------------------------------------------------------------------
# Public entry points.


def patchmatch(
    queries: np.ndarray,
    layer: LayerVectors,
    images: np.ndarray,
    *,
    iterations: int = DEFAULTS.iterations,
    samples: int = DEFAULTS.samples,
    jumps: int = DEFAULTS.jumps,
    seed: int = DEFAULTS.seed,
    init: InitField = "random",
    threads: int | None = None,
    tol: float = 0.0,
    return_stats: bool = False,
    prefetch: bool = True,
    screen: bool = True,
    screen_q: np.ndarray | None = None,
) -> NNField | tuple[NNField, PatchMatchStats]:
    """HyperPatch-Match with the native kernel: an approximate NN field over ``images``.

    Parameters
    ----------
    queries : ndarray of float32, shape (Hq, Wq, D)
        Query hyperpatches (unit vectors).
    layer : LayerVectors
        The database layer (``IndexStore.layer(name)``). The kernel reads its storage in place
        (the FAISS index's own buffer, unaligned when memory-mapped); nothing is copied. On an
        ``fp16`` or ``sq8`` layer it decodes the codes in registers and reports the cosine between
        the query and the decoded, re-normalised database vector (see
        :mod:`compnn_index.index.codecs`).
    images : ndarray of int, shape (M,)
        Database image ids to search (the shortlist; duplicates are searched once).
    iterations : int, default ``QueryOptions.iterations``
        Propagation / random-search rounds (0 returns the initial field).
    samples : int, default ``QueryOptions.samples``
        Random-search samples per position and iteration.
    jumps : int, default ``QueryOptions.jumps``
        Candidates per position and iteration at random positions of other shortlisted images.
    seed : int, default ``QueryOptions.seed``
        Seed of the counter-based random numbers.
    init : "random" or NNField, default "random"
        Initial field; an NNField must have the query grid's shape and match only ``images``.
    threads : int, optional
        Worker threads (default: the limit in force, :func:`compnn_index.checks.current_threads`).
        Does not change the result.
    tol : float, default 0.0
        Stop after an iteration whose mean-similarity gain is below ``tol``.
    return_stats : bool, default False
        Also return a :class:`PatchMatchStats`.
    prefetch : bool, default True
        First read the shortlisted images' ranges sequentially where they are not in the page
        cache (:meth:`LayerVectors.prefetch`; a ``mincore`` check only, when they are).
    screen : bool, default True
        Use the layer's screen (:mod:`compnn_index.index.screen`), if it has one: candidates whose
        32-byte bound is not above the position's current similarity are not read. The field is
        the same either way; only the work differs (``PatchMatchStats.screened``).
    screen_q : ndarray of float32, shape (Hq * Wq, W), optional
        The queries' screen projection ``layer.screen.project(queries)`` when the caller already
        has it (the screen start does); computed here otherwise.

    Returns
    -------
    NNField or (NNField, PatchMatchStats)

    Raises
    ------
    QueryError
        On invalid arguments (shapes, dtypes, image ids, options).
    """
    p = validate(queries, layer, images, iterations=iterations, samples=samples, jumps=jumps,
                 seed=seed, init=init, threads=threads, tol=tol)
    if prefetch:
        p.layer.prefetch(p.images)  # cold store: read the shortlist sequentially, not by faults
    if _hpm is None:
        warnings.warn(_FALLBACK_MESSAGE.format(error=_NATIVE_ERROR), RuntimeWarning, stacklevel=2)
        return run_reference(p, return_stats)
    return _run_native(p, return_stats, screen, screen_q)


def _run_native(p: Problem, return_stats: bool, screen: bool = True,
                screen_q: np.ndarray | None = None) -> NNField | tuple[NNField, PatchMatchStats]:
    init_arrays = (None, None, None) if p.init is None else (p.init.image, p.init.y, p.init.x)
    layer = p.layer
    codec = {}
    if layer.codec != "fp32":  # codes read in place, decoded by the kernel
        codec = dict(codec=layer.codec, scale=layer.codec_params.get("scale"),
                     bias=layer.codec_params.get("bias"))
    if screen and layer.screen is not None:
        sc = layer.screen
        t = sc.project(p.queries) if screen_q is None else np.ascontiguousarray(screen_q, dtype=np.float32)
        codec.update(screen=sc.rows.view(np.uint16), screen_q=t.reshape(*p.queries.shape[:2], sc.width),
                     margin=sc.margin)
    image, y, x, sim, raw = _hpm.patchmatch(
        p.queries, layer.raw, p.images, layer.offsets, layer.grids, *init_arrays,
        p.iterations, p.samples, p.jumps, p.seed, p.threads, p.tol, **codec,
    )
    result = NNField(image, y, x, sim)
    if not return_stats:
        return result
    return result, PatchMatchStats(raw["iterations"], list(raw["mean_similarity"]), raw["candidates"], True,
                                   raw["screened"])


def patchmatch_reference(
    queries: np.ndarray,
    layer: LayerVectors,
    images: np.ndarray,
    *,
    iterations: int = DEFAULTS.iterations,
    samples: int = DEFAULTS.samples,
    jumps: int = DEFAULTS.jumps,
    seed: int = DEFAULTS.seed,
    init: InitField = "random",
    threads: int | None = None,
    tol: float = 0.0,
    return_stats: bool = False,
) -> NNField | tuple[NNField, PatchMatchStats]:
    """HyperPatch-Match in pure NumPy: the specification of, and fallback for, :func:`patchmatch`.

    Same parameters, validation and result as :func:`patchmatch` (``threads`` is validated and
    ignored). Vectorised over the rows of a row pass and the columns of a column pass; similarities
    are computed in float64, so they may differ from the kernel's float32 ones in the last bits.
    """
    p = validate(queries, layer, images, iterations=iterations, samples=samples, jumps=jumps,
                 seed=seed, init=init, threads=threads, tol=tol)
    return run_reference(p, return_stats)


def upsample_field(field: NNField, shape: tuple[int, int], scale: float, *, layer: LayerVectors) -> NNField:
    """Map a coarse NN field onto a finer query grid (to initialise HyperPatch-Match).

    Fine position ``(y, x)`` takes the coarse match at ``(floor(y / scale), floor(x / scale))``
    (clipped to the coarse grid) and keeps its offset inside that cell:
    ``my' = floor(my * scale + y - cy * scale)`` (same for x), clipped to the matched image's grid.

    Parameters
    ----------
    field : NNField
        Coarse field.
    shape : (int, int)
        Fine query grid ``(Hq, Wq)``.
    scale : float
        Fine positions per coarse position (e.g. 2 from a stride-4 to a stride-2 layer).
    layer : LayerVectors
        The fine layer (its per-image grids clip the positions).

    Returns
    -------
    NNField
        Similarity is NaN (unknown until recomputed by the search).
    """
    if not isinstance(field, NNField):
        raise QueryError(f"Expected field to be an NNField, but it is a {type(field).__name__}")
    if len(shape) != 2 or min(int(shape[0]), int(shape[1])) < 1:
        raise QueryError(f"Expected shape = (Hq, Wq) with both >= 1, but shape = {tuple(shape)}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.integer, np.floating)) or not (
        math.isfinite(scale) and scale > 0
    ):
        raise QueryError(f"Expected scale > 0, but scale = {scale!r}")
    if not isinstance(layer, LayerVectors):
        raise QueryError(f"Expected layer to be a LayerVectors, but it is a {type(layer).__name__}")
    grids = layer.grids
    if field.image.size and (field.image.min() < 0 or field.image.max() >= grids.shape[0]):
        raise QueryError(
            f"Expected field image ids in [0, {grids.shape[0]}), but the field has ids "
            f"{field.image.min()}..{field.image.max()}"
        )
    hq, wq = int(shape[0]), int(shape[1])
    hc, wc = field.shape
    fy = np.arange(hq)
    fx = np.arange(wq)
    cy = np.minimum(np.floor(fy / scale).astype(np.int64), hc - 1)
    cx = np.minimum(np.floor(fx / scale).astype(np.int64), wc - 1)
    image = field.image[cy[:, None], cx[None, :]]
    my = field.y[cy[:, None], cx[None, :]].astype(np.float64)
    mx = field.x[cy[:, None], cx[None, :]].astype(np.float64)
    y = np.floor(my * scale + (fy - cy * scale)[:, None]).astype(np.int64)
    x = np.floor(mx * scale + (fx - cx * scale)[None, :]).astype(np.int64)
    y = np.clip(y, 0, grids[image, 0] - 1)
    x = np.clip(x, 0, grids[image, 1] - 1)
    return NNField(image, y, x, np.full((hq, wq), np.nan, dtype=np.float32))


