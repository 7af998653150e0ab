"""Activation prediction geometry: a (source tap, target tap) pair and its padded windows.

The papers' "predicting activations" experiment matches a k×k window of a *source* layer
(e.g. decoder4) against the training set and pastes the matched position's *target* layer
(e.g. decoder3) activation vectors. This module fixes which target positions each source window
pastes, so that every target position is predicted exactly once.

Geometry. Let ``r`` be the source stride over the target stride (2 for consecutive U-Net and
SegNet decoders) and ``k`` the window side. The source map is zero-padded by ``pad_lo`` cells on
the top/left and ``pad_hi`` on the bottom/right, and window ``j`` (0 <= j < G along each axis)
covers source cells ``j - pad_lo .. j - pad_lo + k - 1``. Its centre, in continuous source
coordinates, is ``c = j - pad_lo + k/2``; it pastes the ``r × r`` target block under that centre,
rows ``r*j + offset .. r*j + offset + r - 1`` with ``offset = r*(k-1)/2 - r*pad_lo`` and
``pad_lo = ceil((k-1)/2)`` (so ``-r < offset <= 0``). Consecutive windows' blocks are adjacent,
so the blocks tile the target map: target row ``t`` is predicted by window
``j = (t - offset) // r`` and no other. ``G = ceil((r*h - offset) / r)`` windows per axis cover
all ``r*h`` target rows; blocks reaching past the border are clipped.

Examples (r = 2): k = 2 → pad 1/1, offset -1: window j covers cells {j-1, j} and pastes target
rows {2j-1, 2j} — for a stride-2 4×4 transposed convolution (padding 1) exactly the outputs that
those two input cells determine; k = 4 → pad 2/2, offset -1: cells j-2 .. j+1, rows {2j-1, 2j};
k = 1 → no padding, offset 0; k = 3 → pad 1/1, offset 0.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np
import torch

from ..errors import ModelError
from .taps import ArrayLike, _as_activation, _inverse_norm


@dataclass(frozen=True)
class PairGeometry:
    """Where the windows of a (source, target) pair sit and what each pastes.

    Attributes
    ----------
    source, target : tap names.
    k : window side in source cells.
    ratio : source stride / target stride (target cells per source cell).
    pad_lo, pad_hi : zero padding of the source map (cells) before / after, both axes.
    offset : first target row (column) of window 0's block (``-ratio < offset <= 0``).
    grid : windows per axis ``(G_h, G_w)``.
    target_shape : target activation ``(C, H, W)``; source_shape likewise.
    """

    source: str
    target: str
    k: int
    ratio: int
    pad_lo: int
    pad_hi: tuple[int, int]
    offset: int
    grid: tuple[int, int]
    source_shape: tuple[int, int, int]
    target_shape: tuple[int, int, int]

    @property
    def key(self) -> str:
        return pair_key(self.source, self.target, self.k)

    @property
    def dim(self) -> int:
        return self.k * self.k * self.source_shape[0]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["pad_hi"], d["grid"] = list(self.pad_hi), list(self.grid)
        d["source_shape"], d["target_shape"] = list(self.source_shape), list(self.target_shape)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PairGeometry":
        keys = ("source", "target", "k", "ratio", "pad_lo", "pad_hi", "offset", "grid",
                "source_shape", "target_shape")
        return cls(**{k: tuple(d[k]) if isinstance(d[k], list) else d[k] for k in keys})


def pair_key(source: str, target: str, k: int) -> str:
    """Manifest key of a pair: ``"decoder4>decoder3@k4"``."""
    return f"{source}>{target}@k{int(k)}"


def pair_geometry(source: str, target: str, k: int, source_shape, target_shape) -> PairGeometry:
    """The :class:`PairGeometry` of a source map ``(C, h, w)`` and a target map ``(C', H, W)``.

    Raises
    ------
    ModelError
        If the target is not an integer multiple of the source in both axes (the same one), or
        ``ratio * (k - 1)`` is odd (no block is centred under the window).
    """
    cs, h, w = (int(v) for v in source_shape)
    ct, th, tw = (int(v) for v in target_shape)
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ModelError(f"activation prediction {source}->{target}: expected a window k >= 1, got {k!r}")
    if th % h or tw % w or th // h != tw // w:
        raise ModelError(
            f"activation prediction {source}->{target}: the target map {th}×{tw} is not the same "
            f"integer multiple of the source map {h}×{w} in both axes")
    r = th // h
    if (r * (k - 1)) % 2:
        raise ModelError(
            f"activation prediction {source}->{target}: with {r} target cells per source cell the "
            f"window k = {k} has no centred target block; use an odd k")
    pad_lo = (k - 1 + 1) // 2  # ceil((k-1)/2)
    offset = r * (k - 1) // 2 - r * pad_lo
    grid = tuple(-(-(r * n - offset) // r) for n in (h, w))
    pad_hi = tuple(g + k - 1 - pad_lo - n for g, n in zip(grid, (h, w)))
    return PairGeometry(source, target, int(k), r, pad_lo, pad_hi, offset, grid, (cs, h, w), (ct, th, tw))


def window_vectors(act: ArrayLike, geom: PairGeometry) -> np.ndarray:
    """The pair's padded k×k windows of a source activation, flattened and L2-normalised.

    Parameters
    ----------
    act : (B, C, h, w) source activations.
    geom : the pair's geometry.

    Returns
    -------
    ndarray of float32, shape (B, G_h, G_w, k*k*C)
        Layout as :func:`~compnn_index.features.hyperpatches` (``(dy, dx, c)`` row-major);
        padded cells are zeros.
    """
    t = _as_activation(act)
    b, c, h, w = t.shape
    if (c, h, w) != tuple(geom.source_shape):
        raise ModelError(f"layer {geom.source!r}: expected activations {tuple(geom.source_shape)}, "
                         f"got {(c, h, w)}")
    k, (gh, gw) = geom.k, geom.grid
    pix = torch.nn.functional.pad(t, (geom.pad_lo, geom.pad_hi[1], geom.pad_lo, geom.pad_hi[0]))
    pix = pix.permute(0, 2, 3, 1).contiguous()
    out = torch.empty((b, gh, gw, k * k * c), dtype=torch.float32)
    sq = pix.square().sum(-1)
    norm2 = torch.zeros((b, gh, gw), dtype=torch.float32)
    for dy in range(k):
        for dx in range(k):
            j = dy * k + dx
            out[..., j * c:(j + 1) * c] = pix[:, dy:dy + gh, dx:dx + gw, :]
            norm2 += sq[:, dy:dy + gh, dx:dx + gw]
    out *= _inverse_norm(norm2).unsqueeze(-1)
    return out.numpy()


def target_index(geom: PairGeometry) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For every target row and column: the window that predicts it and the offset in its block.

    Returns ``(jy, dy, jx, dx)``: target row ``t`` is predicted by window row ``jy[t]`` at row
    ``dy[t]`` of its ``ratio × ratio`` block (``t = ratio*jy + offset + dy``); likewise columns.
    """
    _, th, tw = geom.target_shape
    out = []
    for n in (th, tw):
        t = np.arange(n) - geom.offset
        out += [t // geom.ratio, t % geom.ratio]
    return tuple(o.astype(np.int64) for o in out)  # type: ignore[return-value]
