"""What both HyperPatch-Match implementations share: the validated problem and the run stats."""
from __future__ import annotations

from dataclasses import dataclass, field as dataclass_field
from typing import Any

import numpy as np

from ..checks import MAX_ITERATIONS, MAX_JUMPS, MAX_SAMPLES, check_int, check_number, current_threads, check_threads
from ..errors import QueryError
from ..index.layer import LayerVectors
from .exact import check_search_inputs
from .field import NNField


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
    screened : int
        Screen bounds computed (:mod:`compnn_index.index.screen`; 0 without a screen).
        ``candidates`` counts only the similarities computed after screening.
    """

    iterations: int
    mean_similarity: list[float] = dataclass_field(default_factory=list)
    candidates: int = 0
    native: bool = True
    screened: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the fields."""
        return {
            "iterations": self.iterations,
            "mean_similarity": [float(v) for v in self.mean_similarity],
            "candidates": int(self.candidates),
            "native": self.native,
            "screened": int(self.screened),
        }



@dataclass
class Problem:
    """A validated HyperPatch-Match call (both implementations read only this)."""

    queries: np.ndarray  # float32 (Hq, Wq, D), C-contiguous
    layer: LayerVectors
    images: np.ndarray  # int64 (M,) sorted unique
    init: NNField | None
    iterations: int
    samples: int
    jumps: int
    seed: int
    threads: int
    tol: float


def validate(queries: np.ndarray, layer: LayerVectors, images: Any, *, iterations: Any, samples: Any,
             jumps: Any, seed: Any, init: Any, threads: Any, tol: Any) -> Problem:
    """Check every argument (QueryError naming the bad one) and return the :class:`Problem`."""
    queries, images = check_search_inputs(queries, layer, images)
    grids = layer.grids
    sizes = grids[images, 0] * grids[images, 1]
    if (sizes == 0).any():
        raise QueryError(
            f"Expected database images with a non-empty grid, but image {int(images[sizes == 0][0])} has 0 positions"
        )
    iterations = check_int(iterations, "iterations", low=0, high=MAX_ITERATIONS)
    samples = check_int(samples, "samples", low=0, high=MAX_SAMPLES)
    jumps = check_int(jumps, "jumps", low=0, high=MAX_JUMPS)
    seed = check_int(seed, "seed", low=0, high=2**64 - 1)
    threads = check_threads(threads) or current_threads()
    tol = check_number(tol, "tol", low=0)
    return Problem(queries, layer, images, _check_init(init, queries.shape[:2], images, grids),
                   iterations, samples, jumps, seed, threads, tol)


def _check_init(init: Any, shape: tuple[int, int], images: np.ndarray, grids: np.ndarray) -> NNField | None:
    hq, wq = shape
    if isinstance(init, str):
        if init != "random":
            raise QueryError(f"Expected init = 'random' or an NNField, but init = {init!r}")
        return None
    if not isinstance(init, NNField):
        raise QueryError(f"Expected init = 'random' or an NNField, but init is a {type(init).__name__}")
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
    return init
