"""Stream a ``faiss.IndexFlatIP`` to disk batch by batch, in the exact ``faiss.write_index`` format.

Why: a layer index at 256×256 Decoder 2 over 400 images is ~13 GB. Adding batches to an
in-memory ``IndexFlatIP`` grows a ``std::vector`` (reallocation copies, up to twice the size at
peak) and ``write_index`` then needs the whole index in RAM. Writing the file ourselves keeps the
build's peak memory at one batch, and the result loads with ``faiss.read_index`` (or memory-mapped
with ``faiss.IO_FLAG_MMAP_IFC``) like any other index.

The format, as ``faiss/impl/index_write.cpp`` writes an ``IndexFlatIP``::

    "IxFI" | int32 d | int64 ntotal | int64 1<<20 | int64 1<<20 | bool is_trained
           | int32 metric_type (0 = inner product) | uint64 n_floats | float32 data[ntotal*d]

(little endian, no padding: 45 header bytes). :func:`check_format` compares this layout with what
the installed FAISS writes, once per process, so a future format change fails loudly.
"""
from __future__ import annotations

import functools
import os
import struct
from pathlib import Path

import faiss
import numpy as np

from ..errors import IndexStoreError
from .writeback import Writeback

_FOURCC_IP = b"IxFI"
_DUMMY = 1 << 20
_METRIC_INNER_PRODUCT = 0
_HEADER = struct.Struct("<4siqqq?iQ")

#: Byte offset of the first vector in a flat inner-product index file.
HEADER_BYTES = _HEADER.size


def flat_ip_header(d: int, ntotal: int) -> bytes:
    """Header bytes of an ``IndexFlatIP`` file holding ``ntotal`` vectors of dimension ``d``."""
    return _HEADER.pack(_FOURCC_IP, d, ntotal, _DUMMY, _DUMMY, True, _METRIC_INNER_PRODUCT, ntotal * d)


@functools.cache
def check_format() -> None:
    """Raise :class:`IndexStoreError` if the installed FAISS writes ``IndexFlatIP`` differently.

    Serialises a 2×3 index with FAISS and with :func:`flat_ip_header`, and compares the bytes.
    """
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    index = faiss.IndexFlatIP(3)
    index.add(x)
    expected = faiss.serialize_index(index).tobytes()
    ours = flat_ip_header(3, 2) + x.tobytes()
    if expected != ours:
        raise IndexStoreError(
            f"faiss {faiss.__version__} serialises IndexFlatIP differently from the streaming "
            f"writer (expected {expected[:HEADER_BYTES].hex()}, writer {ours[:HEADER_BYTES].hex()}); "
            "the index store cannot be built with this FAISS version"
        )


class StreamingIndexWriter:
    """Append vectors to a FAISS index file without holding them in memory.

    Subclasses say how the header looks for ``ntotal`` vectors (:meth:`_header`) and how a block
    of float32 vectors is stored (:meth:`_encode`). The header is written with ``ntotal = 0``
    first and rewritten on close, so an unclosed file does not load as an index of the right
    size. Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike, d: int) -> None:
        if int(d) < 1:
            raise IndexStoreError(f"Expected vector dimension d >= 1, but d = {d}")
        self.path = Path(path)
        self.d = int(d)
        self.ntotal = 0
        self._file = open(self.path, "wb")
        self._file.write(self._header(0))
        self._writeback = Writeback(self._file)

    def _header(self, ntotal: int) -> bytes:
        raise NotImplementedError

    def _encode(self, x: np.ndarray) -> np.ndarray:
        return x

    def add(self, vectors: np.ndarray) -> None:
        """Append ``vectors`` (n, d); converted to C-contiguous float32, then encoded."""
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.d:
            raise IndexStoreError(
                f"{self.path.name}: expected vectors of shape (n, {self.d}), but got {x.shape}"
            )
        self._writeback.wrote(self._file.write(memoryview(np.ascontiguousarray(self._encode(x))).cast("B")))
        self.ntotal += x.shape[0]

    def close(self) -> int:
        """Write the final header, flush to disk, close; return the number of vectors."""
        if not self._file.closed:
            self._file.seek(0)
            self._file.write(self._header(self.ntotal))
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        return self.ntotal

    def abort(self) -> None:
        """Close the file without finalising it (used when a build fails)."""
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> "StreamingIndexWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class FlatIPWriter(StreamingIndexWriter):
    """Append float32 vectors to an ``IndexFlatIP`` file (see :class:`StreamingIndexWriter`)."""

    def __init__(self, path: str | os.PathLike, d: int) -> None:
        check_format()
        super().__init__(path, d)

    def _header(self, ntotal: int) -> bytes:
        return flat_ip_header(self.d, ntotal)
