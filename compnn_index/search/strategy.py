"""How a query is searched: exact, or HyperPatch-Match with a random, staged or coarse start.

:func:`search_field` is the one entry point the API calls to turn a query's hyperpatches into an
:class:`NNField`. It owns the search *strategy* — which images a first stage runs over, which
coarser layers seed a finer one — while the methods themselves (:func:`exact_search`,
:func:`patchmatch`) know only one layer and one shortlist.
"""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Callable, Mapping, Sequence, Union

import numpy as np

from ..checks import current_threads
from ..index.layer import LayerVectors
from ..options import QueryOptions
from .exact import exact_search
from .field import NNField
from .hyperpatchmatch import patchmatch, upsample_field
from .start import screen_start

#: layer name -> LayerVectors (the store's ``layer`` method, or a dict in tests).
LayerLookup = Union[Callable[[str], LayerVectors], Mapping[str, LayerVectors]]


def search_field(
    feats: Mapping[str, np.ndarray],
    layers: LayerLookup,
    ids: np.ndarray,
    *,
    layer: str,
    options: QueryOptions,
    init: Union[str, NNField, None] = None,
    pyramid: Sequence[str] = (),
    threads: int | None = None,
    norms: Mapping[str, np.ndarray] | None = None,
    info: dict | None = None,
) -> NNField:
    """Search ``feats[layer]`` against the database images ``ids`` (shortlist order, best first).

    Parameters
    ----------
    feats : mapping
        Query hyperpatches per layer, ``(Hq, Wq, D)``.
    layers : callable or mapping
        Layer name → :class:`LayerVectors`.
    ids : ndarray of int
        Shortlisted image ids, best-ranked first (the staged start relies on this order).
    layer : str
        The layer to search.
    options : QueryOptions
        ``search``, HyperPatch-Match parameters, ``init``, ``seed_images``, ``coarse_exact_gflop``.
    init : str or NNField, optional
        Overrides ``options.init`` (an NNField starts HyperPatch-Match from that field).
    pyramid : sequence of str
        ``init="coarse"``: ``layer`` and the coarser indexed layers, coarsest last.
    threads : int, optional
        Worker threads of the native kernel (default: the limit in force).
    norms : mapping, optional
        The query's window norms per layer, ``(Hq, Wq)`` (fused exact search needs them).
    info : dict, optional
        Filled by every exact search that runs (``"exact_method"``: see :func:`exact_search`).

    Notes
    -----
    ``init="random"`` starts from a random field over all of ``ids``. ``init="staged"`` does the
    same with at most ``seed_images`` images; with more (a whole-set search) it first runs over
    the ``seed_images`` best-ranked images and lets that field seed a run over all of ``ids``,
    whose jumps explore the rest — a random start rarely lands on the right image among hundreds.
    ``init="coarse"`` runs coarse to fine down ``pyramid``: the coarsest level is searched exactly
    when that costs under ``coarse_exact_gflop`` GFLOP (else by HyperPatch-Match from a random
    field), and each finer level starts from the upsampled field of the level above; it is staged
    like ``"staged"`` for large ``ids``. (Measured on Facades decoder2, top-16: the pyramid did not
    beat a random start at equal time.)
    """
    get = layers.__getitem__ if isinstance(layers, Mapping) else layers
    ids = np.asarray(ids, dtype=np.int64)
    q = feats[layer]
    norms = norms or {}
    if options.search == "exact":
        return exact_search(q, get(layer), ids, method=options.exact_method, query_norms=norms.get(layer),
                            info=info)
    field, projected = _patchmatch_field(feats, layers, get, ids, layer=layer, options=options, init=init,
                                         pyramid=pyramid, threads=threads, norms=norms, info=info)
    return polish_field(q, get(layer), ids, field, polish=options.polish, threads=threads, info=info,
                        projected=projected)


def polish_field(queries: np.ndarray, layer: LayerVectors, ids: np.ndarray, field: NNField, *,
                 polish: float | None, threads: int | None = None, info: dict | None = None,
                 projected: np.ndarray | None = None) -> NNField:
    """HyperPatch-Match's last step: a relaxed bounded search seeded by its field.

    HyperPatch-Match's field is within ~1.5% of the exact similarity but names the exact match at
    only 20-40% of the positions (a near-duplicate patch, often of another image). The bounded
    search (:func:`compnn_index.search.bounded.bounded_search`) scores every candidate whose
    screen bound reaches the field's similarity; with the bound's residual term scaled by
    ``polish`` (< 1) it skips most of them and is no longer certified (Facades decoder2, top-16:
    recall@1 0.33 → 0.84 / 0.94 / 0.98 at 0.7 / 0.8 / 0.9, at 4-6x the time). The result is never
    worse than ``field`` (every position keeps its match unless a better one is scored).

    ``polish=None`` returns ``field``; a layer the bounded kernel cannot read (no screen) too,
    with the reason in ``info["polish"]``. Otherwise ``info["polish"]`` gets the residual scale,
    the seconds, the fraction of pairs scored and the fraction of positions whose match changed.
    """
    if polish is None:
        return field
    from .bounded import bounded_search, bounded_unsupported  # lazily: bounded imports patchmatch

    reason = bounded_unsupported(layer)
    if reason is not None:
        if info is not None:
            info["polish"] = f"off: {reason}"
        return field
    t0 = time.perf_counter()
    binfo: dict = {}
    out = bounded_search(queries, layer, np.unique(np.asarray(ids, dtype=np.int64)), seed=field,
                         projected=projected, residual_scale=float(polish), threads=threads, info=binfo)
    if info is not None:
        changed = (out.image != field.image) | (out.y != field.y) | (out.x != field.x)
        info["polish"] = {"residual_scale": float(polish), "seconds": round(time.perf_counter() - t0, 4),
                          "scored": binfo["bounded_pruned"]["scored"], "changed": round(float(changed.mean()), 4)}
    return out


def _patchmatch_field(feats, layers, get, ids, *, layer, options, init, pyramid, threads, norms,
                      info) -> tuple[NNField, np.ndarray | None]:
    """HyperPatch-Match's field before the polish, and the screen projection when it made one."""
    q = feats[layer]
    init = options.init if init is None else init
    pm = dict(options.patchmatch_params(), threads=threads)
    if isinstance(init, NNField):
        return patchmatch(q, get(layer), ids, **pm, init=init), None
    if init == "screen":
        lv = get(layer)
        if lv.screen is not None:
            t = lv.screen.project(q.reshape(-1, q.shape[-1]))  # once, for the start, the search, the polish
            start = screen_start(q, lv, ids, candidates=options.start_candidates,
                                 threads=threads or current_threads(), info=info, projected=t)
            return patchmatch(q, lv, ids, **pm, init=start, screen_q=t), t
        init = "staged"  # a layer without a screen (an older store): the staged start
        if info is not None:
            info["start"] = "staged (the layer has no screen: compnn upgrade adds one)"
    if init in ("staged", "coarse") and len(ids) > options.seed_images:
        first = "random" if init == "staged" else "coarse"
        start = search_field(feats, layers, ids[: options.seed_images], layer=layer,
                             options=replace(options, polish=None), init=first, pyramid=pyramid,
                             threads=threads, norms=norms, info=info)
        return patchmatch(q, get(layer), ids, **pm, init=start), None
    if init == "coarse":
        return _coarse_to_fine(feats, get, ids, layer=layer, options=options, pyramid=pyramid,
                               threads=threads, norms=norms, info=info), None
    return patchmatch(q, get(layer), ids, **pm, init="random"), None


def _coarse_to_fine(feats: Mapping[str, np.ndarray], get: Callable[[str], LayerVectors],
                    ids: np.ndarray, *, layer: str, options: QueryOptions, pyramid: Sequence[str],
                    threads: int | None, norms: Mapping[str, np.ndarray] | None = None,
                    info: dict | None = None) -> NNField:
    pm = dict(options.patchmatch_params(), threads=threads)
    levels = [n for n in (pyramid or [layer]) if n in feats][::-1]  # coarsest first
    field, prev_stride = None, None
    for level in levels:
        lq, lv = feats[level], get(level)
        stride = lv.spec.stride if lv.spec is not None else 1
        if field is None:
            gflop = 2.0 * lq.shape[0] * lq.shape[1] * lv.positions(ids) * lq.shape[2] / 1e9
            if level != layer and gflop <= options.coarse_exact_gflop:
                field = exact_search(lq, lv, ids, method=options.exact_method,
                                     query_norms=(norms or {}).get(level), info=info)
            else:
                field = patchmatch(lq, lv, ids, **pm, init="random")
        else:
            start = upsample_field(field, lq.shape[:2], prev_stride / stride, layer=lv)
            field = patchmatch(lq, lv, ids, **pm, init=start)
        prev_stride = stride
    return field
