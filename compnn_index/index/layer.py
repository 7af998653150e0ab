"""``LayerVectors``: one layer of an index store, as every search method sees it.

A layer is its :class:`LayerSpec`, the per-image feature grids, the id offsets (image ``n``
owns ids ``offsets[n] .. offsets[n+1]-1``, row-major over its grid) and the stored vectors.
This is the one place where database ids and ``(image, y, x)`` positions are converted.

The vectors are reached through the codec they are stored in. Searches either ask for
:meth:`LayerVectors.blocks` — float32 blocks of a contiguous id range, which for the ``fp32``
codec are zero-copy views of the FAISS storage and for other codecs are decoded into a reused
tile — or, for native code that decodes in place, for :attr:`LayerVectors.raw` and
:attr:`LayerVectors.codec`. Nothing else may assume float32 vectors in one array:
:attr:`LayerVectors.vectors` exists only for the ``fp32`` codec and says so otherwise.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..errors import IndexStoreError, QueryError
from ..features import LayerSpec

#: Rows per decoded block when a codec has to decode (a 4096 × 512 float32 tile is 8 MiB).
DECODE_BLOCK_ROWS = 4096

Decoder = Callable[[int, int, np.ndarray], np.ndarray]


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.int64)
    if a.flags.writeable:
        a = a.copy()
        a.flags.writeable = False
    return a


class LayerVectors:
    """Geometry and vectors of one layer.

    Parameters
    ----------
    name : str
        Layer name.
    spec : LayerSpec or None
        The layer's geometry (None for ad-hoc layers such as one image's own hyperpatches).
    grids : array_like of int, shape (n_images, 2)
        ``(Hp, Wp)`` of every image.
    raw : ndarray, shape (ntotal, code_size)
        The stored codes, read in place (float32 ``(ntotal, d)`` for ``fp32``).
    dim : int
        Vector dimension ``d``.
    codec : str
        ``"fp32"`` or the name of another codec whose ``decoder`` is given.
    decoder : callable, optional
        ``decoder(start, stop, out)`` writes decoded float32 vectors ``start..stop-1`` into
        ``out`` (shape ``(stop-start, d)``) and returns it. Required unless ``codec == "fp32"``.
    codec_params : dict, optional
        What native code needs to decode ``raw`` in place (e.g. scalar-quantizer ranges).
    owner : object, optional
        Kept alive as long as this object (the FAISS index that owns ``raw``).
    norms : ndarray of float32, shape (ntotal,), optional
        Every stored hyperpatch's norm before normalisation (the store's norms sidecar, read in
        place); None when the store has none. Fused exact search needs it.
    screen : Screen, optional
        The layer's screening sidecar (:mod:`compnn_index.index.screen`): lets HyperPatch-Match
        skip candidates that cannot be accepted, without changing its result. None: no screening.
    """

    def __init__(self, name: str, spec: LayerSpec | None, grids: Any, *, raw: np.ndarray, dim: int,
                 codec: str = "fp32", decoder: Decoder | None = None,
                 codec_params: dict[str, Any] | None = None, owner: Any = None,
                 norms: np.ndarray | None = None, screen: Any = None) -> None:
        self.name = name
        self.spec = spec
        self.grids = _readonly(np.asarray(grids).reshape(-1, 2))
        offsets = np.zeros(self.grids.shape[0] + 1, dtype=np.int64)
        np.cumsum(self.grids[:, 0] * self.grids[:, 1], out=offsets[1:])
        offsets.flags.writeable = False
        self.offsets = offsets
        self.raw = raw
        self.dim = int(dim)
        self.codec = codec
        self.codec_params = dict(codec_params or {})
        self._decoder = decoder
        self._owner = owner
        #: Where the codes live on disk (a ``readahead.LayerSource``; None for arrays in memory).
        self.source = None
        #: Where the screen rows live on disk (likewise; None without a screen or in memory).
        self.screen_source = None
        if raw.ndim != 2 or raw.shape[0] != offsets[-1]:
            raise IndexStoreError(
                f"layer {name!r}: expected {offsets[-1]} stored vectors (the images' grids), but "
                f"the storage holds {raw.shape[0] if raw.ndim else 0}"
            )
        if codec == "fp32":
            if raw.dtype != np.float32 or raw.shape[1] != self.dim:
                raise IndexStoreError(
                    f"layer {name!r}: fp32 storage must be float32 (ntotal, {self.dim}), got "
                    f"{raw.dtype} {raw.shape}")
        elif decoder is None:
            raise IndexStoreError(f"layer {name!r}: codec {codec!r} needs a decoder")
        self.norms = self._check_norms(norms)
        if screen is not None and (screen.rows.shape[0] != self.ntotal or screen.basis.shape[0] != self.dim):
            raise IndexStoreError(
                f"layer {name!r}: expected a screen of {self.ntotal} rows and basis dimension {self.dim}, "
                f"but got rows {screen.rows.shape} and basis {screen.basis.shape}")
        self.screen = screen

    def _check_norms(self, norms: np.ndarray | None) -> np.ndarray | None:
        """The norms sidecar as a read-only float32 (ntotal,) view, or None."""
        if norms is None:
            return None
        if (not isinstance(norms, np.ndarray) or norms.dtype != np.float32 or norms.shape != (self.ntotal,)
                or not norms.flags.c_contiguous):
            raise IndexStoreError(
                f"layer {self.name!r}: expected norms as a C-contiguous float32 array of shape "
                f"({self.ntotal},), but got {getattr(norms, 'dtype', type(norms).__name__)} "
                f"{getattr(norms, 'shape', None)}")
        if norms.flags.writeable:
            norms = norms.view()
            norms.flags.writeable = False
        return norms

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_array(cls, vectors: np.ndarray, *, grids: Any = None, offsets: Any = None,
                   name: str = "layer", spec: LayerSpec | None = None,
                   norms: np.ndarray | None = None, screen: Any = None) -> "LayerVectors":
        """A float32 layer over an array in memory (used for correspondences and in tests).

        Give ``grids`` (``(n, 2)`` or one ``(Hp, Wp)`` for a single image); ``offsets``, if also
        given, must agree with them. The array is read in place, never copied: it must already
        be C-contiguous float32. ``norms`` (float32 ``(N,)``, the hyperpatch norms before
        normalisation) and a ``spec`` (its ``k``) let fused exact search run on it; a ``screen``
        (:func:`compnn_index.index.screen.compute_screen`) lets HyperPatch-Match skip reads.
        """
        if not isinstance(vectors, np.ndarray) or vectors.ndim != 2:
            raise QueryError(
                "Expected vectors to be a 2-D ndarray (N, D), but got "
                f"{type(vectors).__name__} with shape {getattr(vectors, 'shape', None)}")
        if vectors.dtype != np.float32 or not vectors.flags.c_contiguous:
            raise QueryError(
                "Expected vectors to be a C-contiguous float32 array (it is read in place, never "
                f"copied), but vectors.dtype = {vectors.dtype}, C-contiguous = "
                f"{vectors.flags.c_contiguous}")
        if grids is None:
            raise QueryError("LayerVectors.from_array needs grids: (n_images, 2) or (Hp, Wp)")
        g = np.asarray(grids)
        if g.ndim == 1 and g.shape == (2,):
            g = g[None]
        if g.ndim != 2 or g.shape[1] != 2 or not np.issubdtype(g.dtype, np.integer):
            raise QueryError(f"Expected integer grids of shape (n, 2), but grids.shape = {g.shape}")
        if (g < 0).any():
            raise QueryError(f"Expected grids >= 0, but grids contains {g[(g < 0).any(1)][0].tolist()}")
        sizes = g[:, 0].astype(np.int64) * g[:, 1]
        if offsets is not None:
            offs = np.asarray(offsets)
            expect = np.concatenate([[0], np.cumsum(sizes)])
            if offs.shape != expect.shape or not np.array_equal(offs, expect):
                bad = "shape" if offs.shape != expect.shape else "values"
                raise QueryError(
                    f"Expected offsets to be the running sum of the grids' sizes (n + 1 = "
                    f"{expect.size} values, ending at {expect[-1]}), but their {bad} differ")
        if int(sizes.sum()) != vectors.shape[0]:
            raise QueryError(
                f"Expected the grids to hold len(vectors) = {vectors.shape[0]} positions, but they "
                f"hold {int(sizes.sum())}")
        return cls(name, spec, g, raw=vectors, dim=vectors.shape[1], owner=vectors, norms=norms, screen=screen)

    # ------------------------------------------------------------------ description
    @property
    def num_images(self) -> int:
        return int(self.grids.shape[0])

    @property
    def ntotal(self) -> int:
        return int(self.offsets[-1])

    @property
    def vectors(self) -> np.ndarray:
        """The float32 ``(ntotal, d)`` storage itself (zero copy) — ``fp32`` codec only."""
        if self.codec != "fp32":
            raise IndexStoreError(
                f"layer {self.name!r} is stored as {self.codec}; read it with blocks() (decoded) "
                "or raw (codes), not as float32 vectors")
        return self.raw

    def image_range(self, image: int) -> tuple[int, int]:
        """Ids ``[start, stop)`` of one image."""
        return int(self.offsets[image]), int(self.offsets[image + 1])

    def __repr__(self) -> str:
        return (f"LayerVectors({self.name!r}, images={self.num_images}, ntotal={self.ntotal}, "
                f"d={self.dim}, codec={self.codec!r})")

    # ------------------------------------------------------------------ reading vectors
    def blocks(self, start: int, stop: int, *, rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """``(first id, float32 block)`` pairs covering ids ``[start, stop)``.

        ``fp32``: one zero-copy view of the whole range. Other codecs: decoded blocks of ``rows``
        (default :data:`DECODE_BLOCK_ROWS`) into one reused tile — consume each block before
        asking for the next.
        """
        if self.codec == "fp32":
            if stop > start:
                yield start, self.raw[start:stop]
            return
        rows = rows or DECODE_BLOCK_ROWS
        tile = np.empty((min(rows, max(stop - start, 0)), self.dim), dtype=np.float32)
        for a in range(start, stop, rows):
            b = min(a + rows, stop)
            yield a, self._decoder(a, b, tile[: b - a])

    def decode(self, ids: np.ndarray) -> np.ndarray:
        """float32 vectors of arbitrary ids (a copy), ``(len(ids), d)``."""
        ids = np.asarray(ids, dtype=np.int64).ravel()
        if self.codec == "fp32":
            return np.asarray(self.raw[ids], dtype=np.float32)
        out = np.empty((ids.size, self.dim), dtype=np.float32)
        gather = getattr(self._decoder, "gather", None)
        if gather is not None:
            return gather(ids, out)
        for j, i in enumerate(ids):
            self._decoder(int(i), int(i) + 1, out[j: j + 1])
        return out

    def prefetch(self, images: Sequence[int] | np.ndarray, *, min_resident: float = 0.95) -> dict:
        """Read the images' id ranges into memory sequentially where they are not cached yet.

        A no-op for layers without an on-disk :attr:`source` (see :mod:`.readahead`); returns
        what was checked and read.
        """
        if self.source is None:
            return {}
        runs = self.runs(self.check_images(images))
        out = self.source.prefetch(self.raw, runs, min_resident=min_resident)
        if self.screen is not None and self.screen_source is not None:  # its reads are random too
            out["screen"] = self.screen_source.prefetch(self.screen.rows, runs, min_resident=min_resident)
        return out

    # ------------------------------------------------------------------ images and ids
    def check_images(self, images: Sequence[int] | np.ndarray) -> np.ndarray:
        """Sorted unique int64 image ids, each ``0 <= id < num_images``; else QueryError."""
        ids = np.asarray(images)
        if ids.size == 0:
            raise QueryError("Expected at least one database image to search, but images is empty")
        if not np.issubdtype(ids.dtype, np.integer):
            raise QueryError(f"Expected integer image ids, but images.dtype = {ids.dtype}")
        ids = np.unique(ids.astype(np.int64).ravel())
        if ids[0] < 0 or ids[-1] >= self.num_images:
            bad = ids[(ids < 0) | (ids >= self.num_images)]
            raise QueryError(
                f"Expected image ids 0 <= id < {self.num_images}, but images contains {bad[:8].tolist()}")
        return ids

    def runs(self, images: np.ndarray) -> list[tuple[int, int]]:
        """Sorted unique image ids merged into maximal contiguous id ranges ``[start, stop)``."""
        breaks = np.flatnonzero(np.diff(images) != 1) + 1
        out = []
        for group in np.split(np.asarray(images, dtype=np.int64), breaks):
            start, stop = int(self.offsets[group[0]]), int(self.offsets[group[-1] + 1])
            if stop > start:
                out.append((start, stop))
        return out

    def positions(self, images: np.ndarray) -> int:
        """Number of database positions in the given images."""
        images = np.asarray(images, dtype=np.int64)
        return int(np.sum(self.offsets[images + 1] - self.offsets[images]))

    def ids_to_positions(self, ids: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Database ids → ``(image, y, x)`` int64 arrays shaped like ``ids``."""
        ids = np.asarray(ids)
        if ids.size and not np.issubdtype(ids.dtype, np.integer):
            raise QueryError(f"Expected integer ids, but ids.dtype = {ids.dtype}")
        ids = ids.astype(np.int64)
        bad = (ids < 0) | (ids >= self.ntotal)
        if bad.any():
            raise QueryError(
                f"layer {self.name!r}: expected ids 0 <= id < {self.ntotal}, but ids contains "
                f"{ids[bad][:8].tolist()}")
        image = np.searchsorted(self.offsets, ids, side="right") - 1
        local = ids - self.offsets[image]
        wp = self.grids[image, 1]
        return image, local // wp, local % wp

    def positions_to_ids(self, image: Any, y: Any, x: Any) -> np.ndarray:
        """``(image, y, x)`` (broadcast together) → int64 database ids."""
        image, y, x = (np.asarray(v).astype(np.int64) for v in np.broadcast_arrays(image, y, x))
        n = self.num_images
        if image.size and (image.min() < 0 or image.max() >= n):
            bad = np.unique(image[(image < 0) | (image >= n)])[:8].tolist()
            raise QueryError(f"Expected image ids 0 <= image < {n}, but got {bad}")
        g = self.grids[image]
        bad = (y < 0) | (y >= g[..., 0]) | (x < 0) | (x >= g[..., 1])
        if bad.any():
            i = tuple(np.argwhere(bad)[0])
            raise QueryError(
                f"layer {self.name!r}: position (y, x) = ({y[i]}, {x[i]}) is outside image "
                f"{image[i]}'s grid {tuple(int(v) for v in g[i])}")
        return self.offsets[image] + y * g[..., 1] + x
