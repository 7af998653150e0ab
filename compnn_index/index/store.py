"""``IndexStore``: read-only access to an index store written by ``build_index``.

Layer indexes are loaded lazily, memory-mapped by default (``faiss.IO_FLAG_MMAP_IFC``: the
vectors stay in the page cache, shared between processes, and opening a 13 GB store is instant).
A mapped FAISS index aborts the process on ``add``/``reset``, so the store never hands out the
raw index: :meth:`IndexStore.layer_index` returns a :class:`ReadOnlyFlatIndex` exposing only the
search side, and :meth:`IndexStore.vectors` a read-only NumPy view of the index's own storage.

Lifetime of views: every array returned by :meth:`IndexStore.vectors` /
:meth:`IndexStore.global_vectors` has as its ``base`` a small owner object that references the
FAISS index, so the view (and any slice or ``torch.from_numpy`` of it) keeps the index — and its
memory map — alive on its own, even after the store is garbage-collected.

Alignment: in a memory-mapped store the vectors start at byte 45 of the file (the FAISS header),
so the view is not 4-byte aligned. Torch and FAISS handle that at full speed; NumPy's ``matmul``
does not use BLAS for unaligned operands (use ``torch.from_numpy`` or ``faiss.knn``).
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from ..errors import IndexStoreError
from ..features import LayerSpec
from .codecs import CODECS, CodecDecoder, code_size, codes_offset, codes_view, file_bytes, sniff_codec, trained_of
from . import integrity
from .layer import LayerVectors
from .screen import load_screen
from .readahead import LayerSource
from .manifest import read_manifest
from .flatindex import ReadOnlyFlatIndex, _readonly_view  # noqa: F401  (re-exported)


class IndexStore:
    """An opened index store (see :mod:`compnn_index.index.manifest` for the layout).

    Use :meth:`open`. Layer indexes load on first use and are cached for the store's lifetime.

    Attributes
    ----------
    path : Path
        The store's folder.
    manifest : dict
        The parsed ``manifest.json``.
    mmap : bool
        Whether FAISS files are memory-mapped.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], *, mmap: bool) -> None:
        self.path = path
        self.manifest = manifest
        self.mmap = mmap
        self._indexes: dict[str, faiss.Index] = {}
        self._views: dict[str, np.ndarray] = {}
        self._arrays: dict[str, np.ndarray] = {}
        self._layer_vectors: dict[str, LayerVectors] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | os.PathLike, *, mmap: bool = True, verify: bool = False) -> "IndexStore":
        """Open the index store in ``path``.

        Parameters
        ----------
        path : path-like
            Folder written by :func:`build_index`.
        mmap : bool, default True
            Memory-map the FAISS files (read-only) instead of reading them into RAM.
        verify : bool, default False
            Verify every file against the manifest's checksums (reads the whole store). Files
            of at most ``integrity.VERIFY_ON_OPEN_BYTES`` are verified on every open.

        A store whose manifest lists ``"shards"`` opens as a
        :class:`~compnn_index.index.sharded.ShardedStore` (every shard verified).

        Raises
        ------
        IndexStoreError
            Missing folder, manifest or file, corrupt manifest, other format version, a file
            whose size, header or checksum does not match the manifest (the message names it).
        """
        path = Path(path)
        manifest = read_manifest(path)
        if manifest.get("shards") and cls is IndexStore:  # a sharded store (index/sharded.py)
            from .sharded import open_sharded

            return open_sharded(path, manifest, mmap=bool(mmap))
        store = cls(path, manifest, mmap=bool(mmap))
        store._check_files()
        integrity.verify_checksums(path, manifest.get("checksums"),
                                   max_bytes=None if verify else integrity.VERIFY_ON_OPEN_BYTES)
        return store

    def _check_files(self) -> None:
        """Every file the manifest names exists, and FAISS files have the expected size."""
        n = self.num_images
        if len(self.manifest["images"]) != n or n < 1:
            raise IndexStoreError(f"{self._manifest_path}: expected at least one image")
        for name, entry in self.manifest["layers"].items():
            codec = entry.get("codec", "fp32")
            if codec not in CODECS:
                raise IndexStoreError(
                    f"{self._manifest_path}: layer {name!r} is stored with codec {codec!r}, which this "
                    f"version of compnn-index cannot read (it reads {', '.join(CODECS)})"
                )
            hp, wp = entry["grid"]
            if entry["ntotal"] != n * hp * wp:
                raise IndexStoreError(
                    f"{self._manifest_path}: layer {name!r} has ntotal {entry['ntotal']}, expected "
                    f"{n} images × {hp} × {wp} = {n * hp * wp}"
                )
            self._check_flat_file(entry["file"], entry["ntotal"], entry["dim"], codec)
            if entry.get("norms") and not (self.path / entry["norms"]).is_file():
                raise IndexStoreError(f"layer {name!r}: norms file {os.fspath(self.path / entry['norms'])!r} is missing")
            for rel in [(entry.get("screen") or {}).get(k) for k in ("rows", "basis")]:
                if rel and not (self.path / rel).is_file():
                    raise IndexStoreError(
                        f"layer {name!r}: screen file {os.fspath(self.path / rel)!r} is missing (compnn upgrade "
                        f"{os.fspath(self.path)} writes it again)")
        g = self.manifest["global"]
        self._check_flat_file(g["file"], g["ntotal"], g["dim"])
        for name, entry in self.manifest["arrays"].items():
            if not (self.path / entry["file"]).is_file():
                raise IndexStoreError(f"array {name!r}: file {os.fspath(self.path / entry['file'])!r} is missing")
            integrity.check_npy_file(self.path / entry["file"], entry["dtype"], entry["shape"])

    def _check_flat_file(self, rel: str, ntotal: int, dim: int, codec: str = "fp32") -> None:
        file = self.path / rel
        if not file.is_file():
            raise IndexStoreError(f"index file {os.fspath(file)!r} is missing")
        found = sniff_codec(file)
        if found != codec:
            raise IndexStoreError(
                f"index file {os.fspath(file)!r} holds codec {found}, but the manifest records codec "
                f"{codec!r} for it; the store is inconsistent (rebuild it, or compress it again with "
                "`compnn compress`)"
            )
        expected = file_bytes(codec, dim, ntotal)
        actual = file.stat().st_size
        if actual != expected:
            raise IndexStoreError(
                f"index file {os.fspath(file)!r} has {actual} bytes, expected {expected} "
                f"({ntotal} vectors of dimension {dim}, codec {codec}); the store is incomplete or corrupt"
            )

    @property
    def _manifest_path(self) -> str:
        return os.fspath(self.path / "manifest.json")

    def _read_faiss(self, file: str) -> faiss.Index:
        """``faiss.read_index``, memory-mapped when the store is; FAISS's errors name the file."""
        try:
            return faiss.read_index(file, faiss.IO_FLAG_MMAP_IFC if self.mmap else 0)
        except RuntimeError as exc:
            raise IndexStoreError(f"index file {file!r} cannot be read by FAISS: {str(exc).splitlines()[0]}") from None

    def _load(self, key: str, rel: str, ntotal: int, dim: int, codec: str = "fp32") -> faiss.Index:
        """Load (memory-map) a layer or global file once; its storage view goes to ``_views``."""
        with self._lock:
            index = self._indexes.get(key)
            if index is not None:
                return index
            file = os.fspath(self.path / rel)
            index = self._read_faiss(file)
            if codec == "fp32":
                expected = isinstance(index, faiss.IndexFlat)
                kind = "an IndexFlatIP"
            else:
                expected = (isinstance(index, faiss.IndexScalarQuantizer)
                            and index.code_size == code_size(codec, dim))
                kind = f"a {codec} IndexScalarQuantizer"
            if (not expected or index.metric_type != faiss.METRIC_INNER_PRODUCT
                    or index.ntotal != ntotal or index.d != dim):
                raise IndexStoreError(
                    f"index file {file!r}: expected {kind} of {ntotal} × {dim}, but found "
                    f"{type(index).__name__} of {index.ntotal} × {index.d}")
            view = _readonly_view(index) if codec == "fp32" else codes_view(index)
            if key == "\0global":  # small (one vector per image): a NaN-poisoned file is refused
                integrity.check_finite(view, f"global descriptors in {file!r}")
            self._indexes[key] = index
            self._views[key] = view
            return index

    def layer_file(self, layer: str) -> Path:
        """Path of the layer's FAISS file."""
        return self.path / self._layer(layer)["file"]

    def codec(self, layer: str) -> str:
        """The codec ``layer`` is stored with (``fp32``, ``fp16`` or ``sq8``)."""
        return str(self._layer(layer).get("codec", "fp32"))

    # ------------------------------------------------------------------ description
    @property
    def layers(self) -> list[str]:
        """Indexed layer names, in build order."""
        return list(self.manifest["layers"])

    @property
    def num_images(self) -> int:
        return len(self.manifest["images"])

    @property
    def image_names(self) -> list[str]:
        return [im["name"] for im in self.manifest["images"]]

    @property
    def image_meta(self) -> list[dict[str, Any]]:
        """Per-image metadata dicts, indexed by image id."""
        return [dict(im.get("meta") or {}) for im in self.manifest["images"]]

    @property
    def image_size(self) -> tuple[int, int]:
        h, w = self.manifest["image_size"]
        return int(h), int(w)

    def _layer(self, layer: str) -> dict[str, Any]:
        entry = self.manifest["layers"].get(layer) if isinstance(layer, str) else None
        if entry is None:
            raise IndexStoreError(
                f"unknown layer {layer!r}: the index store {os.fspath(self.path)!r} has layers "
                f"{', '.join(self.layers)}"
            )
        return entry

    def spec(self, layer: str) -> LayerSpec:
        """The layer's :class:`LayerSpec`."""
        return LayerSpec.from_dict(self._layer(layer)["spec"])

    def dim(self, layer: str) -> int:
        """Hyperpatch dimension ``k * k * C`` of ``layer``."""
        return int(self._layer(layer)["dim"])

    def grid(self, layer: str) -> tuple[int, int]:
        """Feature grid ``(Hp, Wp)`` of ``layer`` (the same for every image)."""
        hp, wp = self._layer(layer)["grid"]
        return int(hp), int(wp)

    def layer(self, layer: str) -> LayerVectors:
        """The layer as a :class:`LayerVectors` (geometry, id arithmetic, zero-copy vectors).

        Loads (memory-maps) the layer's FAISS file on first use; the object keeps the index, and
        so its memory map, alive.
        """
        lv = self._layer_vectors.get(layer)
        if lv is None:
            entry = self._layer(layer)
            codec = entry.get("codec", "fp32")
            index = self._load(layer, entry["file"], entry["ntotal"], entry["dim"], codec)
            hp, wp = entry["grid"]
            grids = np.tile(np.asarray((hp, wp), dtype=np.int64), (self.num_images, 1))
            decoder = None
            if codec != "fp32":
                decoder = CodecDecoder(codec, self._views[layer], int(entry["dim"]), trained_of(index))
            lv = LayerVectors(layer, self.spec(layer), grids, raw=self._views[layer],
                              dim=int(entry["dim"]), codec=codec, owner=index, decoder=decoder,
                              codec_params=None if decoder is None else decoder.params(),
                              norms=self._norms(layer, entry), screen=self._screen(layer, entry))
            lv.source = LayerSource(self.layer_file(layer), codes_offset(codec, entry["dim"]),
                                    code_size(codec, entry["dim"]))
            if lv.screen is not None and isinstance(lv.screen.rows, np.memmap):
                rows = lv.screen.rows
                lv.screen_source = LayerSource(self.path / entry["screen"]["rows"], int(rows.offset),
                                               int(rows.strides[0]))
            self._layer_vectors[layer] = lv
        return lv

    def _screen(self, layer: str, entry: dict[str, Any]):
        """The layer's screen (:mod:`.screen`), rows memory-mapped read-only; None if it has none."""
        sc = entry.get("screen")
        if not sc:
            return None
        return load_screen(self.path / sc["rows"], self.path / sc["basis"], ntotal=int(entry["ntotal"]),
                           dim=int(entry["dim"]))

    def _norms(self, layer: str, entry: dict[str, Any]) -> np.ndarray | None:
        """The layer's norms sidecar, memory-mapped read-only (None if the store has none)."""
        if not entry.get("norms"):
            return None
        file = self.path / entry["norms"]
        try:
            norms = np.load(file, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise IndexStoreError(f"norms file {os.fspath(file)!r} cannot be read: {exc}") from None
        if norms.dtype != np.float32 or norms.shape != (int(entry["ntotal"]),):
            raise IndexStoreError(
                f"norms file {os.fspath(file)!r}: expected float32 ({entry['ntotal']},), but found "
                f"{norms.dtype} {norms.shape}")
        return norms

    def grids(self, layer: str) -> np.ndarray:
        """Per-image grids, read-only int64 ``(num_images, 2)`` (``layer(name).grids``)."""
        return self.layer(layer).grids

    def offsets(self, layer: str) -> np.ndarray:
        """Id offsets, read-only int64 ``(num_images + 1,)`` (``layer(name).offsets``)."""
        return self.layer(layer).offsets

    # ------------------------------------------------------------------ vectors
    def layer_index(self, layer: str) -> ReadOnlyFlatIndex:
        """The layer's index, wrapped read-only (search, reconstruct, ``d``, ``ntotal``)."""
        entry = self._layer(layer)
        return ReadOnlyFlatIndex(self._load(layer, entry["file"], entry["ntotal"], entry["dim"],
                                            entry.get("codec", "fp32")), layer)

    def vectors(self, layer: str) -> np.ndarray:
        """Read-only zero-copy ``(ntotal, d)`` float32 view of the layer index's storage.

        The view keeps the FAISS index (and its memory map) alive through its ``base``.
        """
        entry = self._layer(layer)
        if entry.get("codec", "fp32") != "fp32":
            return self.layer(layer).vectors  # raises: the codes are not float32 vectors
        self._load(layer, entry["file"], entry["ntotal"], entry["dim"])
        return self._views[layer]

    def global_index(self) -> ReadOnlyFlatIndex:
        """The global-descriptor index (one vector per image), wrapped read-only."""
        g = self.manifest["global"]
        return ReadOnlyFlatIndex(self._load("\0global", g["file"], g["ntotal"], g["dim"]), "global")

    def global_vectors(self) -> np.ndarray:
        """Read-only ``(num_images, Dg)`` float32 view of the global descriptors."""
        self.global_index()
        return self._views["\0global"]

    def array(self, name: str) -> np.ndarray:
        """A sidecar array (``inputs``, ``targets``, ``outputs``), memory-mapped read-only.

        Raises
        ------
        IndexStoreError
            Unknown name (the message lists the available arrays) or unreadable file.
        """
        entries = self.manifest["arrays"]
        if name not in entries:
            raise IndexStoreError(
                f"unknown array {name!r}: the index store has arrays {', '.join(entries)}"
            )
        if name not in self._arrays:
            file = self.path / entries[name]["file"]
            try:
                arr = np.load(file, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise IndexStoreError(f"array file {os.fspath(file)!r} cannot be read: {exc}") from None
            expected = tuple(entries[name]["shape"])
            if arr.shape != expected or str(arr.dtype) != entries[name]["dtype"]:
                raise IndexStoreError(
                    f"array file {os.fspath(file)!r}: expected {entries[name]['dtype']} {expected}, "
                    f"but found {arr.dtype} {arr.shape}"
                )
            self._arrays[name] = arr
        return self._arrays[name]

    # ------------------------------------------------------------------ model check
    def check_model(self, model: torch.nn.Module) -> None:
        """Raise :class:`IndexStoreError` listing every way ``model`` differs from the manifest.

        Compares ``model_hash(model)``, ``model.arch`` and every key of ``model.config``.
        """
        from ..models import model_hash

        recorded = self.manifest["model"]
        problems = []
        arch = getattr(model, "arch", type(model).__name__)
        if arch != recorded.get("arch"):
            problems.append(f"arch {arch!r} vs {recorded.get('arch')!r}")
        config = json.loads(json.dumps(dict(getattr(model, "config", {}) or {}), default=str))
        stored = recorded.get("config") or {}
        for key in sorted((set(config) | set(stored)) - {"arch"}):  # arch is compared above
            if config.get(key, "<missing>") != stored.get(key, "<missing>"):
                problems.append(f"config {key} {config.get(key, '<missing>')!r} vs {stored.get(key, '<missing>')!r}")
        digest = model_hash(model)
        if digest != recorded.get("hash"):
            problems.insert(0, f"model hash {digest[:12]}… differs from the index's {str(recorded.get('hash'))[:12]}…")
        if problems:
            raise IndexStoreError(
                f"the model does not match index store {os.fspath(self.path)!r} (model vs index): "
                + "; ".join(problems)
            )

    def __repr__(self) -> str:
        return (
            f"IndexStore({os.fspath(self.path)!r}, images={self.num_images}, layers={self.layers}, "
            f"mmap={self.mmap})"
        )
