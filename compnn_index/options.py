"""Query options and their defaults, defined once for the API, the CLI, the service and the jobs.

The HyperPatch-Match defaults come from the Facades decoder2 measurements
(``docs/results/hpm_screen_facades.md``): the ``screen`` start (every position starts at the
strided shortlisted position most similar in the layer screen's projection), then 12 iterations
of 8 random-search samples and 48 jumps per position. Top-16, 5 queries: 109x faster than FAISS
exact search, similarity ratio 0.986, fidelity equal to exact's (photo→labels, 3 epochs; 103x,
0.991, -0.006 for a 2-epoch model on 100 images); whole set (400 images): 0.80-0.83 s, ratio
0.976-0.985, fidelity -0.001 / +0.013. Stores without a screen start ``staged`` instead (random
over the 16 best-ranked images, whose field seeds the whole shortlist).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from .errors import QueryError
from .checks import QUERY_INT_BOUNDS, check_choice, check_int, check_number

SEARCHES = ("exact", "patchmatch")
#: How exact search runs: ``auto`` = bounded where the layer has a screen, else fused, else FAISS.
EXACT_METHODS = ("auto", "bounded", "fused", "faiss")
INITS = ("random", "staged", "coarse", "screen")
SOURCES = ("target", "input", "self")
#: Shortlist size when ``top_k`` is not given (or every candidate image, when fewer).
DEFAULT_TOP_K = 16
#: HyperPatch-Match's polish: the residual scale of its relaxed bounded search (see QueryOptions).
DEFAULT_POLISH: float | None = None


@dataclass(frozen=True)
class QueryOptions:
    """How a query searches. Every surface reads its defaults and bounds from here.

    Parameters
    ----------
    search : {"exact", "patchmatch"}
        Exhaustive cosine search, or HyperPatch-Match.
    top_k : int, optional
        Shortlist size; None means :data:`DEFAULT_TOP_K`, or every candidate image when fewer.
    iterations, samples, jumps : int
        HyperPatch-Match rounds, random-search samples and jumps to other images per position
        and round.
    seed : int
        Seed of HyperPatch-Match's counter-based random numbers.
    init : {"screen", "staged", "random", "coarse"}
        HyperPatch-Match start (see :func:`compnn_index.search.strategy.search_field`).
    seed_images : int
        Images of the first stage of a staged whole-set search.
    start_candidates : int
        ``init="screen"``: about how many strided database positions the screen start compares
        every query position with (:func:`compnn_index.search.start.screen_start`).
    coarse_exact_gflop : float
        ``init="coarse"``: the coarsest level is searched exactly under this many GFLOP.
    exact_method : {"auto", "bounded", "fused", "faiss"}
        How exact search runs (:func:`compnn_index.search.exact.exact_search`): ``auto`` uses
        the bounded search where the layer has a screen, else the fused pixel-level kernel where
        the layer allows it, else FAISS. Every method gives the exact field.
    polish : float or None
        HyperPatch-Match's last step (:func:`compnn_index.search.strategy.polish_field`): the
        bounded search seeded by its field, with the residual term of the screen bound scaled by
        ``polish`` (0 to 1; 1 is the certified exact search). None: no polish (the field of the
        iterations alone). Layers without a screen are not polished (``params`` says so).
    """

    search: str = "exact"
    top_k: int | None = None
    iterations: int = 12
    samples: int = 8
    jumps: int = 48
    seed: int = 0
    init: str = "screen"
    seed_images: int = 16
    start_candidates: int = 16384
    coarse_exact_gflop: float = 40.0
    exact_method: str = "auto"
    polish: float | None = DEFAULT_POLISH

    def __post_init__(self) -> None:
        check_choice(self.search, "search", SEARCHES)
        if self.top_k is not None:
            check_int(self.top_k, "top_k")  # bounds depend on the database: resolve_top_k
        for name, (low, high) in QUERY_INT_BOUNDS.items():
            check_int(getattr(self, name), name, low=low, high=high)
        check_choice(self.init, "init", INITS)
        # library-only (not on the CLI or HTTP): the native argmax takes fewer than 2**24 rows
        check_int(self.start_candidates, "start_candidates", low=1, high=1 << 23)
        check_number(self.coarse_exact_gflop, "coarse_exact_gflop", low=0)
        check_choice(self.exact_method, "exact_method", EXACT_METHODS)
        if self.polish is not None:
            check_number(self.polish, "polish", low=0, high=1)

    def with_(self, **changes: Any) -> "QueryOptions":
        """A copy with ``changes`` applied (None values are ignored: keep the default)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def resolve_top_k(self, candidates: int) -> int:
        """The shortlist size for ``candidates`` database images, checked against it."""
        if self.top_k is None:
            return min(DEFAULT_TOP_K, candidates)
        if not 1 <= self.top_k <= candidates:
            raise QueryError(f"Expected 1 <= top_k <= number of database images ({candidates}), "
                             f"but top_k = {self.top_k}")
        return self.top_k

    def patchmatch_params(self) -> dict[str, Any]:
        """The kernel's own parameters (iterations, samples, jumps, seed)."""
        return {"iterations": self.iterations, "samples": self.samples, "jumps": self.jumps,
                "seed": self.seed}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


DEFAULTS = QueryOptions()
