"""HyperPatch-Match: PatchMatch across a database of images (CompNN's approximate search).

For every query hyperpatch, find a database hyperpatch of high inner product without comparing
against all of them: cost is ``iterations * Q * candidates * D``, independent of the database
size. :func:`patchmatch` runs the native kernel (``compnn_index._hpm``, C++);
:func:`patchmatch_reference` is the same algorithm in NumPy, used as the fallback and as the
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
import os
import warnings
from dataclasses import dataclass, field as dataclass_field
from typing import Any, Union

import numpy as np

from ..errors import QueryError
from .exact import check_search_inputs
from .field import NNField

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
    "patchmatch",
    "patchmatch_reference",
    "upsample_field",
]

InitField = Union[str, NNField]

_FALLBACK_MESSAGE = (
    "The native HyperPatch-Match kernel compnn_index._hpm could not be imported ({error}); "
    "falling back to patchmatch_reference (pure NumPy, same results, much slower). "
    "Rebuild it with `.venv/bin/pip install --no-build-isolation -e .` from the repository root."
)


@dataclass
class PatchMatchStats:
    """What a HyperPatch-Match run did.

    Attributes
    ----------
    iterations : int
        Iterations run (fewer than asked when ``tol`` stopped early).
    mean_similarity : list of float
        Mean similarity over the query grid after the initial field (entry 0) and after each
        iteration.
    candidates : int
        Similarities computed (dot products), the initial field's included.
    native : bool
        True for the C++ kernel, False for the NumPy reference.
    """

    iterations: int
    mean_similarity: list[float] = dataclass_field(default_factory=list)
    candidates: int = 0
    native: bool = True

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the fields."""
        return {
            "iterations": self.iterations,
            "mean_similarity": [float(v) for v in self.mean_similarity],
            "candidates": int(self.candidates),
            "native": self.native,
        }


def native_available() -> bool:
    """Whether the native kernel ``compnn_index._hpm`` imported (else the NumPy fallback runs)."""
    return _hpm is not None


# ------------------------------------------------------------------------------------------------
# Validation shared by both implementations.


@dataclass
class _Problem:
    queries: np.ndarray  # float32 (Hq, Wq, D), C-contiguous
    vectors: np.ndarray  # float32 (N, D), C-contiguous, the caller's array itself
    images: np.ndarray  # int64 (M,)
    offsets: np.ndarray  # int64 (n_images + 1,)
    grids: np.ndarray  # int64 (n_images, 2)
    init: NNField | None
    iterations: int
    samples: int
    jumps: int
    seed: int
    threads: int
    tol: float


def _check_int(name: str, value: Any, *, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise QueryError(f"Expected {name} to be an integer, but {name} = {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"{low} <= {name}" + (f" <= {high}" if high is not None else "")
        raise QueryError(f"Expected {bound}, but {name} = {value}")
    return int(value)


def _validate(
    queries: np.ndarray,
    vectors: np.ndarray,
    images: Any,
    offsets: Any,
    grids: Any,
    iterations: Any,
    samples: Any,
    jumps: Any,
    seed: Any,
    init: Any,
    threads: Any,
    tol: Any,
) -> _Problem:
    queries, images, offsets, grids = check_search_inputs(queries, vectors, images, offsets=offsets, grids=grids)
    sizes = grids[images, 0] * grids[images, 1]
    if (sizes == 0).any():
        raise QueryError(
            f"Expected database images with a non-empty grid, but image {int(images[sizes == 0][0])} has 0 positions"
        )

    iterations = _check_int("iterations", iterations, low=0)
    samples = _check_int("samples", samples, low=0, high=1_000_000)
    jumps = _check_int("jumps", jumps, low=0, high=1_000_000)
    seed = _check_int("seed", seed, low=0, high=2**64 - 1)
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = _check_int("threads", threads, low=1)
    if isinstance(tol, bool) or not isinstance(tol, (int, float, np.floating, np.integer)) or not math.isfinite(tol):
        raise QueryError(f"Expected tol to be a finite number >= 0, but tol = {tol!r}")
    if tol < 0:
        raise QueryError(f"Expected tol >= 0, but tol = {tol}")

    hq, wq = queries.shape[:2]
    if isinstance(init, str):
        if init != "random":
            raise QueryError(f"Expected init = 'random' or an NNField, but init = {init!r}")
        init_field = None
    elif isinstance(init, NNField):
        if init.shape != (hq, wq):
            raise QueryError(
                f"Expected an initial NNField of the query grid's shape {(hq, wq)}, but init.shape = {init.shape}"
            )
        inside = np.isin(init.image, images)
        if not inside.all():
            raise QueryError(
                "Expected initial-field images among the searched images, but init.image contains "
                f"{int(init.image[~inside][0])}"
            )
        hp, wp = grids[init.image, 0], grids[init.image, 1]
        bad = (init.y < 0) | (init.y >= hp) | (init.x < 0) | (init.x >= wp)
        if bad.any():
            y, x = (int(v[0]) for v in np.nonzero(bad))
            raise QueryError(
                f"Expected initial-field positions inside their image's grid, but init at ({y}, {x}) is "
                f"(y, x) = ({init.y[y, x]}, {init.x[y, x]}) in image {init.image[y, x]} of grid "
                f"{hp[y, x]} x {wp[y, x]}"
            )
        init_field = init
    else:
        raise QueryError(f"Expected init = 'random' or an NNField, but init is a {type(init).__name__}")
    return _Problem(queries, vectors, images, offsets, grids, init_field, iterations, samples, jumps, seed,
                    threads, float(tol))


# ------------------------------------------------------------------------------------------------
# Public entry points.


def patchmatch(
    queries: np.ndarray,
    vectors: np.ndarray,
    images: np.ndarray,
    *,
    offsets: np.ndarray,
    grids: np.ndarray,
    iterations: int = 8,
    samples: int = 4,
    jumps: int = 2,
    seed: int = 0,
    init: InitField = "random",
    threads: int | None = None,
    tol: float = 0.0,
    return_stats: bool = False,
) -> NNField | tuple[NNField, PatchMatchStats]:
    """HyperPatch-Match with the native kernel: an approximate NN field over ``images``.

    Parameters
    ----------
    queries : ndarray of float32, shape (Hq, Wq, D)
        Query hyperpatches (unit vectors).
    vectors : ndarray of float32, shape (N, D), C-contiguous
        The database vectors, typically a read-only view of a FAISS ``IndexFlatIP`` storage
        (``IndexStore.vectors(layer)``). Read in place; anything not float32 C-contiguous is
        refused rather than copied.
    images : ndarray of int, shape (M,)
        Database image ids to search (the shortlist; duplicates are searched once).
    offsets : ndarray of int, shape (n_images + 1,)
        Image ``n`` owns ids ``offsets[n] .. offsets[n+1]-1``, row-major over its grid.
    grids : ndarray of int, shape (n_images, 2)
        ``(Hp, Wp)`` feature grid of every image of the store.
    iterations : int, default 8
        Propagation / random-search rounds (0 returns the initial field).
    samples : int, default 4
        Random-search samples per position and iteration.
    jumps : int, default 2
        Candidates per position and iteration at random positions of other shortlisted images.
    seed : int, default 0
        Seed of the counter-based random numbers.
    init : "random" or NNField, default "random"
        Initial field; an NNField must have the query grid's shape and match only ``images``.
    threads : int, optional
        Worker threads (default: the CPUs this process may use). Does not change the result.
    tol : float, default 0.0
        Stop after an iteration whose mean-similarity gain is below ``tol``.
    return_stats : bool, default False
        Also return a :class:`PatchMatchStats`.

    Returns
    -------
    NNField or (NNField, PatchMatchStats)

    Raises
    ------
    QueryError
        On invalid arguments (shapes, dtypes, image ids, options).
    """
    p = _validate(queries, vectors, images, offsets, grids, iterations, samples, jumps, seed, init, threads, tol)
    if _hpm is None:
        warnings.warn(_FALLBACK_MESSAGE.format(error=_NATIVE_ERROR), RuntimeWarning, stacklevel=2)
        return _run_reference(p, return_stats)
    init_arrays = (None, None, None) if p.init is None else (p.init.image, p.init.y, p.init.x)
    image, y, x, sim, raw = _hpm.patchmatch(
        p.queries, p.vectors, p.images, p.offsets, p.grids, *init_arrays,
        p.iterations, p.samples, p.jumps, p.seed, p.threads, p.tol,
    )
    result = NNField(image, y, x, sim)
    if not return_stats:
        return result
    return result, PatchMatchStats(raw["iterations"], list(raw["mean_similarity"]), raw["candidates"], True)


def patchmatch_reference(
    queries: np.ndarray,
    vectors: np.ndarray,
    images: np.ndarray,
    *,
    offsets: np.ndarray,
    grids: np.ndarray,
    iterations: int = 8,
    samples: int = 4,
    jumps: int = 2,
    seed: int = 0,
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
    p = _validate(queries, vectors, images, offsets, grids, iterations, samples, jumps, seed, init, threads, tol)
    return _run_reference(p, return_stats)


def upsample_field(field: NNField, shape: tuple[int, int], scale: float, *, grids: np.ndarray) -> NNField:
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
    grids : ndarray of int, shape (n_images, 2)
        Fine-layer ``(Hp, Wp)`` of every database image, for clipping.

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
    grids = np.asarray(grids, dtype=np.int64)
    if grids.ndim != 2 or grids.shape[1] != 2:
        raise QueryError(f"Expected grids of shape (n_images, 2), but grids.shape = {grids.shape}")
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


# ------------------------------------------------------------------------------------------------
# NumPy reference. Mirrors compnn_index/csrc/hyperpatchmatch.cpp step by step.

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_INIT_ITERATION = np.uint64(0xFFFFFFFFFFFFFFFF)
_JUMP_STREAM = 1 << 32


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _position_key(seed: int, iteration: np.uint64 | int, positions: np.ndarray) -> np.ndarray:
    s = _mix64(np.array([seed], dtype=np.uint64))
    s = _mix64(s ^ np.uint64(iteration))
    return _mix64(s ^ positions.astype(np.uint64))


def _draw(key: np.ndarray, stream: int) -> np.ndarray:
    return _mix64(key ^ np.uint64(stream))


def _below(r: np.ndarray, n: np.ndarray | int) -> np.ndarray:
    """Integer in [0, n) from the high 32 bits of r (n < 2**31)."""
    n = np.asarray(n, dtype=np.uint64)
    return (((r >> np.uint64(32)) * n) >> np.uint64(32)).astype(np.int64)


def _uniform_around(r: np.ndarray, c: np.ndarray, radius: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Uniform integer in the window [c - radius, c + radius] clipped to [0, n - 1]."""
    lo = np.maximum(0, c - radius)
    hi = np.minimum(n - 1, c + radius)
    return lo + _below(r, hi - lo + 1)


class _Reference:
    """State and steps of the NumPy HyperPatch-Match (slot = index into ``images``)."""

    def __init__(self, p: _Problem) -> None:
        self.p = p
        self.hq, self.wq, self.d = p.queries.shape
        self.q = p.queries.reshape(-1, self.d)
        self.base = p.offsets[p.images]
        self.h = p.grids[p.images, 0]
        self.w = p.grids[p.images, 1]
        self.radius = np.maximum(self.h, self.w)
        self.levels = np.array([int(r).bit_length() for r in self.radius], dtype=np.int64)
        n = self.hq * self.wq
        self.slot = np.zeros(n, dtype=np.int64)
        self.y = np.zeros(n, dtype=np.int64)
        self.x = np.zeros(n, dtype=np.int64)
        self.sim = np.zeros(n, dtype=np.float32)
        self.candidates = 0

    def similarity(self, pos: np.ndarray, slot: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        ids = self.base[slot] + y * self.w[slot] + x
        a = self.q[pos].astype(np.float64)
        b = self.p.vectors[ids].astype(np.float64)
        self.candidates += int(pos.size)
        return np.einsum("ij,ij->i", a, b).astype(np.float32)

    def offer(self, pos: np.ndarray, slot: np.ndarray, y: np.ndarray, x: np.ndarray) -> None:
        """Evaluate candidates (skipping those equal to the current match); keep strict gains."""
        new = (slot != self.slot[pos]) | (y != self.y[pos]) | (x != self.x[pos])
        pos, slot, y, x = pos[new], slot[new], y[new], x[new]
        if pos.size == 0:
            return
        s = self.similarity(pos, slot, y, x)
        better = s > self.sim[pos]
        pos = pos[better]
        self.slot[pos], self.y[pos], self.x[pos], self.sim[pos] = slot[better], y[better], x[better], s[better]

    def initialise(self) -> None:
        p = self.p
        pos = np.arange(self.hq * self.wq)
        if p.init is None:
            key = _position_key(p.seed, _INIT_ITERATION, pos)
            self.slot = _below(_draw(key, 0), len(p.images))
            self.y = _below(_draw(key, 1), self.h[self.slot])
            self.x = _below(_draw(key, 2), self.w[self.slot])
        else:
            lookup = np.full(p.grids.shape[0], -1, dtype=np.int64)
            lookup[p.images] = np.arange(len(p.images))
            self.slot = lookup[p.init.image.reshape(-1)]
            self.y = p.init.y.reshape(-1).astype(np.int64)
            self.x = p.init.x.reshape(-1).astype(np.int64)
        self.sim = self.similarity(pos, self.slot, self.y, self.x)

    def random_search(self, pos: np.ndarray, t: int) -> None:
        p = self.p
        slot, cy, cx = self.slot[pos].copy(), self.y[pos].copy(), self.x[pos].copy()
        key = _position_key(p.seed, t, pos)
        radius, levels, h, w = self.radius[slot], self.levels[slot], self.h[slot], self.w[slot]
        cand: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for i in range(p.samples):
            r = radius >> ((t * p.samples + i) % levels)
            cand.append((slot, _uniform_around(_draw(key, 2 * i), cy, r, h),
                         _uniform_around(_draw(key, 2 * i + 1), cx, r, w)))
        m = len(p.images)
        for j in range(p.jumps):
            stream = _JUMP_STREAM + 3 * j
            if m > 1:
                s = _below(_draw(key, stream), m - 1)
                s = s + (s >= slot)
            else:
                s = np.zeros_like(slot)
            cand.append((s, _below(_draw(key, stream + 1), self.h[s]), _below(_draw(key, stream + 2), self.w[s])))
        # All candidates are drawn around the match held before this step, then accepted in order.
        sims = []
        for s, y, x in cand:
            new = (s != slot) | (y != cy) | (x != cx)
            sim = np.full(pos.size, -np.inf, dtype=np.float32)
            if new.any():
                sim[new] = self.similarity(pos[new], s[new], y[new], x[new])
            sims.append(sim)
        for (s, y, x), sim in zip(cand, sims):
            better = sim > self.sim[pos]
            b = pos[better]
            self.slot[b], self.y[b], self.x[b], self.sim[b] = s[better], y[better], x[better], sim[better]

    def iterate(self, t: int) -> None:
        forward = t % 2 == 0
        step = 1 if forward else -1
        rows = np.arange(self.hq) * self.wq
        for i in range(self.wq):
            x = i if forward else self.wq - 1 - i
            pos = rows + x
            if i > 0:
                nb = pos - step
                s = self.slot[nb]
                self.offer(pos, s, self.y[nb], np.clip(self.x[nb] + step, 0, self.w[s] - 1))
            self.random_search(pos, t)
        cols = np.arange(self.wq)
        for i in range(1, self.hq):
            y = i if forward else self.hq - 1 - i
            pos = y * self.wq + cols
            nb = pos - step * self.wq
            s = self.slot[nb]
            self.offer(pos, s, np.clip(self.y[nb] + step, 0, self.h[s] - 1), self.x[nb])

    def field(self) -> NNField:
        shape = (self.hq, self.wq)
        return NNField(
            self.p.images[self.slot].reshape(shape),
            self.y.reshape(shape),
            self.x.reshape(shape),
            self.sim.reshape(shape),
        )


def _run_reference(p: _Problem, return_stats: bool) -> NNField | tuple[NNField, PatchMatchStats]:
    ref = _Reference(p)
    ref.initialise()
    means = [float(np.mean(ref.sim, dtype=np.float64))]
    run = 0
    for t in range(p.iterations):
        ref.iterate(t)
        means.append(float(np.mean(ref.sim, dtype=np.float64)))
        run += 1
        if means[-1] - means[-2] < p.tol:
            break
    result = ref.field()
    if not return_stats:
        return result
    return result, PatchMatchStats(run, means, ref.candidates, False)
