"""Screening sidecar: a 32-byte bound per stored vector that lets HyperPatch-Match skip most reads.

HyperPatch-Match spends its time reading candidate vectors (2 KB each at decoder2 in fp32) that
it then rejects: a random-search or jump candidate is nearly always far worse than the match the
position already holds. The screen lets the kernel reject those from 32 bytes, *without changing
the result*.

For an orthonormal basis ``P`` (``d × m``, the top principal directions of the layer's
uncentred second moment) every inner product splits as ``q·v = (Pᵀq)·(Pᵀv) + q⊥·v⊥``, and by
Cauchy–Schwarz ``|q⊥·v⊥| <= |q⊥| |v⊥|``. So, with the row ``s(v) = [Pᵀv, |v⊥|]`` stored per
vector and ``t(q) = [Pᵀq, |q⊥|]`` computed per query,

    q·v <= t(q)·s(v) + margin,

and a candidate whose bound is not above the position's current similarity cannot be accepted
(acceptance is "strictly better"): the kernel skips reading it. Fields are identical with and
without the screen; only the work differs. ``v`` here is the vector whose similarity the kernel
reports — the stored fp32 vector, or the decoded, re-normalised vector of an fp16 / sq8 layer —
so the screen of a compressed store is computed from its decoded vectors.

Row layout: :data:`WIDTH` IEEE half floats (32 bytes), components ``0..WIDTH-2`` the projection
(rounded to nearest) and the last ``|v⊥|`` rounded *up*, so the stored residual never
understates the true one. :data:`MARGIN` covers the projection's half-float rounding
(``|Σ t_i δ_i| <= |t| |δ| <= 2**-11``) and float32 accumulation, with a wide safety factor.

Measured on Facades decoder2 (photo→labels, D = 512, 15 components hold 90% of the energy):
random candidates have mean similarity 0.05 against a current best of 0.94, and the bound rejects
97–99% of them (``docs/results/codecs_facades.md``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import IndexStoreError
from .npyfile import NpyWriter

#: Half floats per screen row: WIDTH - 1 projected components and the residual norm (32 bytes).
WIDTH = 16
#: Added to every bound (see the module docstring): far above the rounding it covers (~5e-4).
MARGIN = 2e-3
#: Vectors sampled to fit the basis (as contiguous chunks spread over the layer). Measured on Facades
#: decoder2 (held-out energy of the 15 components): 200,000 rows 0.8734, 65,536 rows 0.8729, 16,384
#: rows 0.8718, while a build's fixed cost (the sample's forward passes, the fit) shrinks 3x.
FIT_ROWS = 65_536
#: Vectors per block while encoding a layer.
ENCODE_ROWS = 16384
#: Queries projected per float64 block.
_PROJECT_ROWS = 512


@dataclass(frozen=True)
class Screen:
    """A layer's screen: the basis and the per-vector rows (memory-mapped).

    Attributes
    ----------
    basis : ndarray of float32, shape (d, WIDTH - 1)
        Orthonormal columns.
    rows : ndarray of float16, shape (ntotal, WIDTH)
        ``[Pᵀv, |v⊥| rounded up]`` per stored vector, read-only.
    margin : float
        Added to every bound.
    """

    basis: np.ndarray
    rows: np.ndarray
    margin: float = MARGIN

    @property
    def width(self) -> int:
        return int(self.rows.shape[1])

    def project(self, queries: np.ndarray) -> np.ndarray:
        """``t(q) = [Pᵀq, |q⊥|]`` per query, float32 ``(Q, WIDTH)`` (computed in float64)."""
        q32 = np.asarray(queries, dtype=np.float32).reshape(-1, self.basis.shape[0])
        b = self.basis.astype(np.float64)
        out = np.empty((q32.shape[0], self.width), dtype=np.float32)
        for a in range(0, q32.shape[0], _PROJECT_ROWS):  # float64 in blocks: no query-sized copy
            q = q32[a: a + _PROJECT_ROWS].astype(np.float64)
            p = q @ b
            out[a: a + len(q), :-1] = p
            resid = np.maximum(np.einsum("ij,ij->i", q, q) - np.einsum("ij,ij->i", p, p), 0.0)
            # float32 rounding of |q⊥| could understate it by one ulp: step up once
            out[a: a + len(q), -1] = np.nextafter(np.sqrt(resid).astype(np.float32), np.float32(np.inf))
        return out


def screen_bytes(ntotal: int, width: int = WIDTH) -> int:
    """Disk bytes of one layer's screen rows (plus the small basis and headers)."""
    return 128 + int(ntotal) * int(width) * 2 + 128 + 4 * 1024 * int(width)


def check_screen_width(width: Any) -> int:
    """``width`` as an int: 0 (no screen) or 2..256 half floats per row."""
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or not (
            int(width) == 0 or 2 <= int(width) <= 256):
        raise IndexStoreError(f"Expected screen width 0 (none) or 2..256 half floats per vector "
                              f"(default {WIDTH}), but screen = {width!r}")
    return int(width)


def fit_basis(sample: np.ndarray, width: int = WIDTH) -> np.ndarray:
    """Top ``width - 1`` eigenvectors of the uncentred second moment of ``sample`` (rows are
    normalised first, as the kernel scores normalised vectors), float32 ``(d, width - 1)``.

    Uncentred because the bound is on raw inner products: these directions maximise the mean
    captured energy ``|Pᵀv|²``, which is what shrinks the residual term. The moment is summed in
    float32 (BLAS; 12x faster than float64 on 200,000 rows, the same held-out energy to 5 digits)
    and decomposed in float64: any orthonormal basis gives a valid bound, its accuracy only decides
    how tight.
    """
    x = np.asarray(sample)
    if x.ndim != 2 or x.shape[0] < 1:
        raise IndexStoreError(f"screen: expected a (n, d) sample with n >= 1, got shape {x.shape}")
    m = width - 1
    if not 1 <= m <= x.shape[1]:
        raise IndexStoreError(f"screen: expected 2 <= width <= d + 1 = {x.shape[1] + 1}, got {width}")
    x = _normalise32(x)
    _, vecs = np.linalg.eigh((x.T @ x).astype(np.float64))
    basis = vecs[:, ::-1][:, :m]
    q, _ = np.linalg.qr(basis)  # re-orthonormalise in float64 before rounding to float32
    return np.ascontiguousarray((q * np.sign(np.sum(q * basis, axis=0))).astype(np.float32))


def _normalise32(x: np.ndarray) -> np.ndarray:
    """Rows as float32 unit vectors (norms taken in float64; zero rows stay zero)."""
    x = np.array(x, dtype=np.float32)
    n = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
    n[n == 0] = 1.0
    x /= n[:, None].astype(np.float32)
    return x


def _normalise(x: np.ndarray) -> np.ndarray:
    n = np.sqrt(np.einsum("ij,ij->i", x, x))
    n[n == 0] = 1.0
    return x / n[:, None]


def encode(block: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """Screen rows of ``block`` (float32 ``(n, d)`` vectors, normalised here), float16 ``(n, WIDTH)``."""
    x = _normalise(np.asarray(block, dtype=np.float64))
    b = basis.astype(np.float64)
    p = x @ b
    out = np.empty((x.shape[0], b.shape[1] + 1), dtype=np.float16)
    out[:, :-1] = p
    resid = np.sqrt(np.maximum(1.0 - np.einsum("ij,ij->i", p, p), 0.0))
    r = resid.astype(np.float16)
    low = r.astype(np.float64) < resid
    r[low] = np.nextafter(r[low], np.float16(np.inf))
    out[:, -1] = r
    return out


def sample_rows(blocks: Callable[[int, int], Any], ntotal: int, rows: int = FIT_ROWS,
                chunks: int = 32) -> np.ndarray:
    """Up to ``rows`` vectors as ``chunks`` contiguous runs spread over ``[0, ntotal)``
    (sequential reads); ``blocks(start, stop)`` yields ``(first id, float32 block)`` pairs."""
    per = max(1, min(ntotal, rows) // chunks)
    starts = np.unique(np.linspace(0, max(ntotal - per, 0), chunks).astype(np.int64))
    parts = [np.array(b, dtype=np.float32) for a in starts for _, b in blocks(int(a), int(min(a + per, ntotal)))]
    return np.concatenate(parts)


def fit_subsample(sample: np.ndarray) -> np.ndarray:
    """The rows of ``sample`` the basis is fitted on: every k-th, at most :data:`FIT_ROWS` (an
    sq8 build samples more rows, for its ranges). Rows are independent, so a caller may take
    them before decoding the sample (:func:`compnn_index.index.codecs.roundtrip` is per row)."""
    sample = np.asarray(sample)
    return sample[:: max(1, len(sample) // FIT_ROWS)][:FIT_ROWS]


def fit_screen(sample: np.ndarray, width: int = WIDTH) -> tuple[np.ndarray, float]:
    """``(basis, energy)`` of a screen fitted on ``sample`` (:func:`fit_subsample` of it):
    :func:`fit_basis` and the mean fraction of a sampled row's energy the basis holds."""
    sample = fit_subsample(sample)
    basis = fit_basis(sample, width)
    p = _normalise32(sample) @ basis
    return basis, float(np.mean(np.einsum("ij,ij->i", p, p, dtype=np.float64)))


class ScreenWriter:
    """Stream a layer's screen rows while the layer itself is written (build, compress): no
    second pass over the layer file. ``add(vectors)`` takes the vectors *as the layer will hold
    them* (:func:`compnn_index.index.codecs.roundtrip`); ``close()`` also writes the basis and
    returns the manifest entry (``rows``/``basis`` relative to ``root``).

    The basis is fitted here on ``sample``, or given already fitted (``basis`` and ``energy``,
    from :func:`fit_screen`): a sharded build fits it once for all its shards
    (:mod:`compnn_index.index.fit`)."""

    def __init__(self, root: str | os.PathLike, rows_rel: str, basis_rel: str, ntotal: int,
                 sample: np.ndarray | None = None, width: int = WIDTH, *, basis: np.ndarray | None = None,
                 energy: float | None = None) -> None:
        self.root, self.rows_rel, self.basis_rel = Path(root), rows_rel, basis_rel
        if basis is None:
            if sample is None:
                raise IndexStoreError("screen: give a sample to fit the basis on, or the fitted basis")
            self.basis, self.energy = fit_screen(sample, width)
        else:
            basis = np.ascontiguousarray(basis, dtype=np.float32)
            if basis.ndim != 2 or basis.shape[1] != width - 1 or energy is None:
                raise IndexStoreError(f"screen: a fitted basis of shape {basis.shape} (energy {energy}) "
                                      f"does not make rows of width {width}: expected (d, {width - 1}) "
                                      "and its energy")
            self.basis, self.energy = basis, float(energy)
        self._writer = NpyWriter(self.root / rows_rel, (int(ntotal), width), np.dtype(np.float16))

    def add(self, vectors: np.ndarray) -> None:
        self._writer.add(encode(vectors, self.basis))

    def close(self) -> dict:
        self._writer.close()
        np.save(self.root / self.basis_rel, self.basis, allow_pickle=False)
        return {"rows": self.rows_rel, "basis": self.basis_rel, "width": int(self.basis.shape[1] + 1),
                "energy": round(self.energy, 6)}

    def abort(self) -> None:
        self._writer.abort()


def write_screen(layer: Any, path: str | os.PathLike, basis_path: str | os.PathLike, *,
                 width: int = WIDTH, progress: Callable[[int], None] | None = None) -> dict:
    """Fit a basis on ``layer`` (a :class:`~compnn_index.index.layer.LayerVectors`) and stream its
    screen rows to ``path`` (``.npy`` float16 ``(ntotal, width)``) and the basis to ``basis_path``.

    Reads the layer block by block (one decoded tile in RAM). Returns what was measured: the
    fraction of energy the basis holds on its sample.
    """
    path, basis_path = Path(path), Path(basis_path)
    writer = ScreenWriter(path.parent, path.name, basis_path.name, layer.ntotal,
                          sample_rows(layer.blocks, layer.ntotal), width)
    try:
        for a in range(0, layer.ntotal, ENCODE_ROWS):
            b = min(a + ENCODE_ROWS, layer.ntotal)
            for _, block in layer.blocks(a, b):
                writer.add(block)
            if progress is not None:
                progress(b - a)
        entry = writer.close()
    finally:
        writer.abort()
    return {"width": entry["width"], "energy": entry["energy"]}


def compute_screen(layer: Any, *, width: int = WIDTH) -> Screen:
    """The screen of ``layer`` in memory (for in-memory layers and tests; stores write theirs
    with :func:`write_screen`)."""
    basis = fit_basis(sample_rows(layer.blocks, layer.ntotal), width)
    rows = np.concatenate([encode(b, basis) for a in range(0, layer.ntotal, ENCODE_ROWS)
                           for _, b in layer.blocks(a, min(a + ENCODE_ROWS, layer.ntotal))])
    rows.flags.writeable = False
    return Screen(basis, rows)


def load_screen(path: str | os.PathLike, basis_path: str | os.PathLike, *, ntotal: int, dim: int) -> Screen:
    """Memory-map a layer's screen rows and read its basis, checking shapes and dtypes."""
    path, basis_path = Path(path), Path(basis_path)
    try:
        rows = np.load(path, mmap_mode="r", allow_pickle=False)
        basis = np.load(basis_path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise IndexStoreError(f"screen file {os.fspath(path)!r} or {os.fspath(basis_path)!r} cannot be read: {exc}") from None
    if rows.dtype != np.float16 or rows.ndim != 2 or rows.shape[0] != ntotal or rows.shape[1] < 2:
        raise IndexStoreError(f"screen file {os.fspath(path)!r}: expected float16 ({ntotal}, width >= 2), "
                              f"but found {rows.dtype} {rows.shape}")
    if basis.dtype != np.float32 or basis.shape != (dim, rows.shape[1] - 1):
        raise IndexStoreError(f"screen basis {os.fspath(basis_path)!r}: expected float32 ({dim}, {rows.shape[1] - 1}), "
                              f"but found {basis.dtype} {basis.shape}")
    return Screen(np.ascontiguousarray(basis), rows)
