"""Sharded index stores: the layers split by contiguous image ranges into shard sub-stores.

Layout::

    store/
      manifest.json            the top manifest (format version 2): images, layers, global,
                               arrays as in an unsharded store, "shards" listing every shard
      global.faiss             the global-descriptor index, whole (one vector per image)
      shards/000/ ...          shard 0: an ordinary store (its own manifest, layers/*.faiss,
      shards/001/ ...          arrays/*.npy and global.faiss) over images [start, stop)

The top manifest's ``"shards"`` is a list of ``{"index", "path", "images": [start, stop],
"manifest_sha256", "layers": {name: ntotal}, "bytes"}``; its layer and array entries keep
``spec``/``grid``/``dim``/``ntotal`` and ``dtype``/``shape`` of the whole store but ``"file":
null`` (their data lives in the shards). :class:`ShardedStore` opens it: every shard's manifest
hash, image count, layers and model are checked against the top manifest at open, and a shard
that differs is refused with the exact mismatch.

Building (:func:`build_sharded`): everything is written into ``.<name>.sharded-building`` beside
``out``; each shard is an ordinary :func:`~compnn_index.index.build.build_index` run (atomic:
temporary folder, renamed when complete), the global index and the top manifest are written
last, then the folder is renamed to ``out``. An interrupted build leaves ``out`` as it was and a
hidden folder without a top manifest (nothing that loads); running the same build again resumes
it, keeping every complete shard. How the shard builds run is the caller's ``runner``: one
after another here, as Ray tasks in :mod:`compnn_index.distributed`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import IndexStoreError
from .layer import LayerVectors
from .manifest import MANIFEST_NAME, read_manifest
from .store import IndexStore



# ---------------------------------------------------------------------------- planning
from .sharded_build import PLAN_NAME, SHARD_DIR, plan_shards, file_sha256, ShardView, ShardTask, build_shard, run_sequentially, _shard_complete, build_sharded, assemble  # noqa: F401  (re-exported)


@dataclass(frozen=True)
class ShardInfo:
    """One shard of a sharded store: images ``[start, stop)`` in folder ``path``."""

    index: int
    path: Path
    start: int
    stop: int
    manifest_sha256: str

    @property
    def label(self) -> str:
        return f"shard {self.index} (images {self.start}..{self.stop - 1}, {os.fspath(self.path)})"


def shard_infos(root: Path, manifest: Mapping[str, Any]) -> list[ShardInfo]:
    """The shard list of a top manifest, checked to cover images ``0..n-1`` in order."""
    out, expect = [], 0
    for i, s in enumerate(manifest["shards"]):
        try:
            a, b = (int(v) for v in s["images"])
            info = ShardInfo(i, root / s["path"], a, b, str(s["manifest_sha256"]))
        except (KeyError, TypeError, ValueError):
            raise IndexStoreError(f"{os.fspath(root / MANIFEST_NAME)}: shard entry {i} is malformed: {s!r}") from None
        if a != expect or b <= a:
            raise IndexStoreError(
                f"{os.fspath(root / MANIFEST_NAME)}: shard {i} covers images [{a}, {b}), expected it to "
                f"start at image {expect} and hold at least one image")
        out.append(info)
        expect = b
    if expect != len(manifest["images"]):
        raise IndexStoreError(f"{os.fspath(root / MANIFEST_NAME)}: the shards cover {expect} images, "
                              f"the store has {len(manifest['images'])}")
    return out


def verify_shard(info: ShardInfo, top: Mapping[str, Any], *, mmap: bool = True) -> IndexStore:
    """Open one shard and check it against the top manifest; IndexStoreError names the mismatch."""
    file = info.path / MANIFEST_NAME
    if not file.is_file():
        raise IndexStoreError(f"{info.label}: {os.fspath(file)!r} is missing")
    digest = file_sha256(file)
    man = read_manifest(info.path)
    problems = []
    if len(man["images"]) != info.stop - info.start:
        problems.append(f"it holds {len(man['images'])} images, the top manifest says {info.stop - info.start}")
    if man["model"].get("hash") != top["model"].get("hash"):
        problems.append(f"model hash {str(man['model'].get('hash'))[:12]}… vs the top manifest's "
                        f"{str(top['model'].get('hash'))[:12]}…")
    if list(man["layers"]) != list(top["layers"]):
        problems.append(f"layers {list(man['layers'])} vs the top manifest's {list(top['layers'])}")
    else:
        for name, entry in top["layers"].items():
            for key in ("grid", "dim", "spec"):
                if man["layers"][name].get(key) != entry.get(key):
                    problems.append(f"layer {name!r} {key} {man['layers'][name].get(key)!r} vs the top "
                                    f"manifest's {entry.get(key)!r}")
    names = [im["name"] for im in top["images"][info.start:info.stop]]
    if not problems and [im["name"] for im in man["images"]] != names:
        problems.append("its image names differ from the top manifest's")
    if digest != info.manifest_sha256:
        problems.append(f"manifest sha256 {digest[:16]}… vs the top manifest's {info.manifest_sha256[:16]}… "
                        "(the shard was rebuilt or modified after the store was assembled)")
    if problems:
        raise IndexStoreError(f"{info.label} does not match the top manifest: " + "; ".join(problems))
    return IndexStore.open(info.path, mmap=mmap)


class ShardedArray:
    """A sidecar array (``inputs``, ``targets``, ``outputs``) spread over the shards.

    Looks like a read-only ndarray to its readers (``shape``, ``dtype``, ``ndim``, indexing by an
    int, a slice or an array of image ids): only the rows asked for are read, each from the
    shard that owns it, through ``read(shard, local_ids) -> rows``.
    """

    def __init__(self, name: str, shape: Sequence[int], dtype: Any, bounds: np.ndarray,
                 read: Callable[[int, np.ndarray], np.ndarray]) -> None:
        self.name, self.shape, self.dtype = name, tuple(int(s) for s in shape), np.dtype(dtype)
        self._bounds = np.asarray(bounds, dtype=np.int64)  # shard starts, then n
        self._read = read

    ndim = property(lambda self: len(self.shape))
    size = property(lambda self: int(np.prod(self.shape)))

    def __len__(self) -> int:
        return self.shape[0]

    def take(self, ids: Any) -> np.ndarray:
        """Rows ``ids`` (any order, repeats allowed) as one array."""
        ids = np.asarray(ids, dtype=np.int64).ravel()
        n = self.shape[0]
        if ids.size and (ids.min() < -n or ids.max() >= n):
            raise IndexError(f"{self.name}: index out of range for {n} images")
        ids = np.where(ids < 0, ids + n, ids)
        out = np.empty((ids.size,) + self.shape[1:], dtype=self.dtype)
        shard = np.searchsorted(self._bounds, ids, side="right") - 1
        for s in np.unique(shard):
            sel = np.flatnonzero(shard == s)
            uniq, inv = np.unique(ids[sel], return_inverse=True)
            rows = np.asarray(self._read(int(s), uniq - self._bounds[s]))
            out[sel] = rows[inv]
        return out

    def __getitem__(self, key: Any) -> np.ndarray:
        rest: tuple = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            out = self.take([key])[0]
        elif isinstance(key, slice):
            out = self.take(np.arange(self.shape[0])[key])
        else:
            arr = np.asarray(key)
            if arr.dtype == bool:
                arr = np.flatnonzero(arr)
            if any(isinstance(r, np.ndarray) or isinstance(r, list) for r in rest):
                # advanced indexing across axes (compose.paste's source[img, y, x]): read each
                # named image once, then index the gathered rows elementwise
                uniq, inv = np.unique(arr, return_inverse=True)
                return self.take(uniq)[(inv.reshape(arr.shape),) + tuple(rest)]
            out = self.take(arr).reshape(arr.shape + self.shape[1:])
        return out[rest] if rest else out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.take(np.arange(self.shape[0]))
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return f"ShardedArray({self.name!r}, shape={self.shape}, dtype={self.dtype}, shards={len(self._bounds) - 1})"


class ShardedStore(IndexStore):
    """An opened sharded index store; works like :class:`IndexStore` (same fields, same arrays).

    Every shard is verified at open (:func:`verify_shard`) and opened as an ordinary
    :class:`IndexStore` (memory-mapped), reachable as :meth:`shard`. :meth:`layer` returns a
    :class:`LayerVectors` over the whole store whose vectors are decoded, block by block, from
    the owning shards (``codec="sharded"``: there is no one zero-copy array across shards); the
    query path instead searches every shard's own layer and merges the fields
    (:mod:`compnn_index.distributed`).
    """

    CODEC = "sharded"

    def __init__(self, path: Path, manifest: dict[str, Any], *, mmap: bool) -> None:
        super().__init__(path, manifest, mmap=mmap)
        self.shards = shard_infos(path, manifest)
        self.bounds = np.asarray([s.start for s in self.shards] + [self.shards[-1].stop], dtype=np.int64)
        self._shard_stores: dict[int, IndexStore] = {}

    def _checked(self) -> "ShardedStore":
        self._check_files()
        return self

    def _check_files(self) -> None:
        n = self.num_images
        if n < 1:
            raise IndexStoreError(f"{self._manifest_path}: expected at least one image")
        g = self.manifest["global"]
        self._check_flat_file(g["file"], g["ntotal"], g["dim"])
        for info in self.shards:
            self._shard_stores[info.index] = verify_shard(info, self.manifest, mmap=self.mmap)

    # ------------------------------------------------------------------ shards
    @property
    def num_shards(self) -> int:
        return len(self.shards)

    def shard(self, i: int) -> IndexStore:
        """Shard ``i`` as an ordinary (verified, memory-mapped) store over its own image ids."""
        return self._shard_stores[int(i)]

    def locate(self, ids: Any) -> list[tuple[int, np.ndarray]]:
        """Split image ids (keeping their order) by shard: ``[(shard, local ids), ...]``."""
        ids = np.asarray(ids, dtype=np.int64).ravel()
        shard = np.searchsorted(self.bounds, ids, side="right") - 1
        return [(int(s), ids[shard == s] - self.bounds[s]) for s in range(self.num_shards)
                if np.any(shard == s)]

    # ------------------------------------------------------------------ layers
    def layer(self, layer: str) -> LayerVectors:
        lv = self._layer_vectors.get(layer)
        if lv is None:
            entry = self._layer(layer)
            hp, wp = entry["grid"]
            grids = np.tile(np.asarray((hp, wp), dtype=np.int64), (self.num_images, 1))
            parts = [self.shard(s.index).layer(layer) for s in self.shards]
            starts = np.cumsum([0] + [p.ntotal for p in parts])

            def decode(start: int, stop: int, out: np.ndarray) -> np.ndarray:
                for k, part in enumerate(parts):
                    a, b = max(start, starts[k]), min(stop, starts[k + 1])
                    for first, block in part.blocks(int(a - starts[k]), int(b - starts[k])):
                        at = first + starts[k] - start
                        out[at: at + len(block)] = block
                return out

            lv = LayerVectors(layer, self.spec(layer), grids, raw=np.empty((int(starts[-1]), 0), np.uint8),
                              dim=int(entry["dim"]), codec=self.CODEC, decoder=decode, owner=parts)
            self._layer_vectors[layer] = lv
        return lv

    def layer_index(self, layer: str):
        raise IndexStoreError(
            f"index store {os.fspath(self.path)!r} is sharded ({self.num_shards} shards): its layer "
            f"{layer!r} is not one FAISS index; use shard(i).layer_index({layer!r}) or layer({layer!r})")

    def vectors(self, layer: str) -> np.ndarray:
        raise IndexStoreError(
            f"index store {os.fspath(self.path)!r} is sharded ({self.num_shards} shards): its layer "
            f"{layer!r} is not one array; read it with layer({layer!r}).blocks() or per shard")

    # ------------------------------------------------------------------ arrays
    def array(self, name: str, read: Callable[[int, np.ndarray], np.ndarray] | None = None) -> ShardedArray:
        """A sidecar array over the shards (rows read from the owning shard on demand)."""
        entries = self.manifest["arrays"]
        if name not in entries:
            raise IndexStoreError(f"unknown array {name!r}: the index store has arrays {', '.join(entries)}")
        if read is None:
            if name not in self._arrays:
                self._arrays[name] = ShardedArray(name, entries[name]["shape"], entries[name]["dtype"],
                                                  self.bounds, lambda s, ids: self.shard(s).array(name)[ids])
            return self._arrays[name]
        return ShardedArray(name, entries[name]["shape"], entries[name]["dtype"], self.bounds, read)

    def __repr__(self) -> str:
        return (f"ShardedStore({os.fspath(self.path)!r}, images={self.num_images}, shards={self.num_shards}, "
                f"layers={self.layers}, mmap={self.mmap})")


def open_sharded(path: Path, manifest: dict[str, Any], *, mmap: bool) -> ShardedStore:
    return ShardedStore(path, manifest, mmap=mmap)._checked()


__all__ = ["ShardInfo", "ShardTask", "ShardView", "ShardedArray", "ShardedStore", "assemble",
           "build_shard", "build_sharded", "plan_shards", "run_sequentially", "verify_shard"]
