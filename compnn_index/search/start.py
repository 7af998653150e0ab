"""The ``screen`` start of HyperPatch-Match: a global first guess for every query position.

A random start knows nothing of where a position's match lies; HyperPatch-Match must find the
right image and region by random jumps, and on Facades decoder2 that is what costs fidelity (the
field converges in similarity while its matches sit in other images than exact search's). The
screen start asks every query position, in one pass, which of a spatially strided subset of the
shortlisted positions has the largest similarity *in the screen's projection* (the top principal
directions of the layer, :mod:`compnn_index.index.screen`): ``Q x C x (W - 1)`` multiply-adds
over ``C`` (:data:`DEFAULT_CANDIDATES`) candidates whose projected rows fit in the L2 cache,
exact in that space (native ``_hpm.screen_argmax``). HyperPatch-Match then refines from there.

Measured on Facades decoder2, top-16, 2 queries: the start alone has similarity ratio 0.73 to
exact search, yet 8 iterations from it reach 0.987 with fidelity 0.009 below exact's, where 16
iterations from a random start reach 0.978 and 0.024 below (``docs/results/codecs_facades.md``).
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import QueryError
from ..index.layer import LayerVectors
from .field import NNField

try:
    from . import _hpm
except ImportError:  # pragma: no cover - the NumPy path below serves
    _hpm = None

#: Candidates of the screen start (16384 projected rows of 16 floats: 1 MiB).
DEFAULT_CANDIDATES = 16384


def start_stride(layer: LayerVectors, images: np.ndarray, candidates: int) -> int:
    """Grid stride that leaves at most about ``candidates`` positions of ``images``."""
    total = layer.positions(np.asarray(images, dtype=np.int64))
    return max(1, math.ceil(math.sqrt(total / max(int(candidates), 1))))


def strided_ids(layer: LayerVectors, images: np.ndarray, stride: int) -> np.ndarray:
    """Database ids of positions ``(y, x)`` with ``y % stride == x % stride == stride // 2``
    (centred in each cell; ``0`` when an image is smaller), image by image."""
    out = []
    for i in np.asarray(images, dtype=np.int64):
        h, w = (int(v) for v in layer.grids[i])
        ys = np.arange(min(stride // 2, h - 1), h, stride)
        xs = np.arange(min(stride // 2, w - 1), w, stride)
        out.append(int(layer.offsets[i]) + (ys[:, None] * w + xs[None, :]).ravel())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def screen_start(queries: np.ndarray, layer: LayerVectors, images: np.ndarray, *,
                 candidates: int = DEFAULT_CANDIDATES, threads: int = 1,
                 info: dict | None = None, projected: np.ndarray | None = None) -> NNField:
    """For every query position, the strided database position of largest projected similarity.

    Parameters
    ----------
    queries : ndarray of float32, shape (Hq, Wq, D)
    layer : LayerVectors
        Must carry a screen (``layer.screen``).
    images : ndarray of int
        The shortlist.
    candidates : int
        About how many strided positions to compare against (the stride follows from it).
    threads : int
    info : dict, optional
        Receives ``"start"`` (stride and candidate count).
    projected : ndarray of float32, shape (Hq * Wq, W), optional
        ``layer.screen.project(queries)``, when the caller computes it once for this start and
        the search after it; computed here otherwise.

    Returns
    -------
    NNField
        Similarity NaN (HyperPatch-Match computes it).
    """
    if layer.screen is None:
        raise QueryError(f"layer {layer.name!r} has no screen for the screen start; add one with "
                         "`compnn upgrade STORE` or use init='staged'")
    images = layer.check_images(images)
    stride = start_stride(layer, images, candidates)
    ids = strided_ids(layer, images, stride)
    rows = np.array(layer.screen.rows[ids], dtype=np.float32)
    rows[:, -1] = 0.0  # rank by the projection alone: the residual term only loosens the bound
    hq, wq, d = queries.shape
    t = layer.screen.project(queries.reshape(-1, d)) if projected is None else projected
    if _hpm is not None:
        arg, _ = _hpm.screen_argmax(t, rows, int(threads))
    else:  # pragma: no cover
        arg = np.concatenate([(t[a: a + 1024] @ rows.T).argmax(1) for a in range(0, len(t), 1024)])
    image, y, x = layer.ids_to_positions(ids[arg])
    if info is not None:
        info["start"] = f"screen (stride {stride}, {len(ids)} candidates)"
    return NNField(image.reshape(hq, wq), y.reshape(hq, wq).astype(np.int32),
                   x.reshape(hq, wq).astype(np.int32), np.full((hq, wq), np.nan, dtype=np.float32))
