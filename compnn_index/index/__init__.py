"""The index store: per-layer FAISS ``IndexFlatIP`` files of L2-normalised hyperpatches, a
global-descriptor index, sidecar arrays and a manifest, built once and opened read-only.

``build_index`` streams a model's hyperpatches over a dataset to disk (atomically);
``IndexStore.open`` loads it (memory-mapped by default); ``IndexStore.layer(name)`` returns a
:class:`LayerVectors`, the one holder of the id ↔ (image, y, x) arithmetic: image ``n``'s
positions occupy ids ``offsets[n] .. offsets[n+1]-1``, row-major.
"""
from .build import build_index
from .codecs import CODECS
from .compress import compress_store
from .layer import LayerVectors
from .manifest import FORMAT_VERSION
from .store import IndexStore, ReadOnlyFlatIndex

__all__ = ["CODECS", "FORMAT_VERSION", "compress_store", "IndexStore", "LayerVectors", "ReadOnlyFlatIndex", "build_index"]
