"""The build option for activation prediction: a (source, target) tap pair's stored arrays.

For each pair ``(source, target, k)`` the store holds, as ordinary sidecar arrays,

- ``pair_<source>_<target>_k<k>``: float32 ``(N * G_h * G_w, k*k*C)``, every training image's
  padded source windows (:func:`compnn_index.features.window_vectors`), L2-normalised, image
  ``n``'s windows at rows ``n*G_h*G_w ..`` row-major — the layout of a layer index, so a
  :class:`~compnn_index.index.LayerVectors` reads it in place;
- ``act_<target>``: float32 ``(N, C', H, W)``, the target tap's activations (the pasted source),
  shared by pairs with the same target;

and the manifest an optional top-level ``"predictions"`` entry (stores without it still load)::

    "predictions": {"decoder4>decoder3@k4": {...PairGeometry.to_dict()...,
                    "vectors": "pair_decoder4_decoder3_k4", "targets": "act_decoder3"}}
"""
from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from ..errors import IndexStoreError, ModelError
from ..features import LayerSpec, PairGeometry, capture, pair_geometry, window_vectors

_SAFE = re.compile(r"[^A-Za-z0-9_]+")

Pair = tuple[str, str, int]


def parse_pairs(pairs: Sequence[Any] | None) -> list[Pair]:
    """``[("decoder4", "decoder3", 4), ...]`` from tuples or ``"decoder4:decoder3[:k]"`` text."""
    out: list[Pair] = []
    for p in pairs or ():
        if isinstance(p, str):
            parts = p.split(":")
            if len(parts) not in (2, 3) or not all(parts) or (len(parts) == 3 and not parts[2].isdigit()):
                raise IndexStoreError(f"activation pair {p!r}: expected SOURCE:TARGET or SOURCE:TARGET:K")
            p = (parts[0], parts[1], int(parts[2]) if len(parts) == 3 else 4)
        if len(p) == 2:
            p = (p[0], p[1], 4)
        src, tgt, k = p
        out.append((str(src), str(tgt), int(k)))
    if len(set(out)) != len(out):
        raise IndexStoreError(f"activation pairs must be distinct, got {out}")
    return out


def vectors_name(geom: PairGeometry) -> str:
    return f"pair_{_SAFE.sub('_', geom.source)}_{_SAFE.sub('_', geom.target)}_k{geom.k}"


def targets_name(target: str) -> str:
    return f"act_{_SAFE.sub('_', target)}"


def plan_pairs(model: torch.nn.Module, pairs: Sequence[Pair], specs: Mapping[str, LayerSpec],
               first_input: np.ndarray, n: int
               ) -> tuple[dict[str, PairGeometry], dict[str, tuple[tuple, np.dtype]], Callable]:
    """Geometry, sidecar-array layouts and the per-batch extractor of the requested pairs.

    Returns ``(geometries by key, {array name: (shape, dtype)}, extract)`` where
    ``extract(batch) -> {array name: rows}``.
    """
    taps = sorted({t for s, tg, _ in pairs for t in (s, tg)})
    unknown = [t for t in taps if t not in specs]
    if unknown:
        raise ModelError(f"activation pairs name unknown taps {unknown}: expected names among "
                         f"{', '.join(specs)}")
    tap_specs = [specs[t] for t in taps]
    _, acts = capture(model, first_input[None], tap_specs)
    geoms: dict[str, PairGeometry] = {}
    layouts: dict[str, tuple[tuple, np.dtype]] = {}
    for src, tgt, k in pairs:
        g = pair_geometry(src, tgt, k, acts[src].shape[1:], acts[tgt].shape[1:])
        geoms[g.key] = g
        layouts[vectors_name(g)] = ((n * g.grid[0] * g.grid[1], g.dim), np.dtype(np.float32))
        layouts[targets_name(tgt)] = ((n,) + tuple(g.target_shape), np.dtype(np.float32))

    def extract(batch: np.ndarray) -> dict[str, np.ndarray]:
        _, a = capture(model, batch, tap_specs)
        rows = {targets_name(tgt): a[tgt].numpy() for _, tgt, _ in pairs}
        for g in geoms.values():
            v = window_vectors(a[g.source], g)
            rows[vectors_name(g)] = v.reshape(-1, v.shape[-1])
        return rows

    return geoms, layouts, extract


def manifest_entries(geoms: Mapping[str, PairGeometry]) -> dict[str, dict]:
    """The manifest's ``"predictions"`` entry."""
    return {key: {**g.to_dict(), "vectors": vectors_name(g), "targets": targets_name(g.target)}
            for key, g in geoms.items()}
