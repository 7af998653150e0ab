"""Layer-store codecs: how a layer's L2-normalised hyperpatches are stored on disk.

``fp32``
    ``faiss.IndexFlatIP`` (:mod:`compnn_index.index.flatfile`): 4 bytes per dimension.
``fp16``
    ``faiss.IndexScalarQuantizer(d, QT_fp16, METRIC_INNER_PRODUCT)``: 2 bytes per dimension,
    exactly half of ``fp32`` (plus a 36-byte larger header).
``sq8``
    ``faiss.IndexScalarQuantizer(d, QT_8bit, METRIC_INNER_PRODUCT)``: 1 byte per dimension, with
    per-dimension ranges ``vmin``, ``vdiff`` trained (FAISS ``RS_minmax``) on a sample of the
    layer's vectors and stored in the FAISS file itself.

Every codec file is FAISS's own format (``faiss.read_index`` reads it, memory-mapped with
``faiss.IO_FLAG_MMAP_IFC``: FAISS maps the codes in place, checked by :func:`check_sq_format`),
written here incrementally (:class:`SQWriter`) so a build or a compression never holds a layer in
RAM. An ``IndexScalarQuantizer`` file, as ``faiss/impl/index_write.cpp`` writes it::

    "IxSQ" | int32 d | int64 ntotal | int64 1<<20 | int64 1<<20 | bool is_trained | int32 metric
           | int32 qtype | int32 rangestat | float32 rangestat_arg | uint64 d | uint64 code_size
           | uint64 n_trained | float32 trained[n_trained] | uint64 n_code_bytes | uint8 codes[]

so the codes start at byte 81 for ``fp16`` (no trained values) and ``81 + 8 d`` for ``sq8``
(``vmin[d]`` then ``vdiff[d]``): not aligned, and every reader here is unaligned-safe.

Decoding ("the decoded vector"). ``fp16``: the IEEE half values as float32. ``sq8``: component
``i`` of code ``c`` is ``c * scale[i] + bias[i]`` with ``scale = vdiff / 255`` and
``bias = vmin + 0.5 * scale`` (float32; FAISS's ``vmin + (c + 0.5) / 255 * vdiff`` rearranged, at
most ~1e-6 from ``sa_decode`` while the quantisation step is ``vdiff / 255``). Then, on every
codec other than ``fp32``, the decoded vector is **re-normalised to unit length**: searches report
the cosine between the query and the decoded database vector, so the range distortions of 8-bit
codes cannot inflate a similarity above 1 or favour long codes. The NumPy decoders here
(:class:`CodecDecoder`), the exact search (which reads them through :meth:`LayerVectors.blocks`)
and the native HyperPatch-Match kernel (which decodes in place) all use this definition.
"""
from __future__ import annotations

import functools
import os
import struct
from typing import Any

import faiss
import numpy as np

from ..errors import IndexStoreError
from .flatfile import StreamingIndexWriter, HEADER_BYTES as FLAT_HEADER_BYTES

#: Codecs a layer can be stored with (the manifest's per-layer ``"codec"``).
CODECS = ("fp32", "fp16", "sq8")
#: Rows of a layer sampled to train the ``sq8`` ranges.
SQ_TRAIN_ROWS = 131072

_QTYPES = {"fp16": faiss.ScalarQuantizer.QT_fp16, "sq8": faiss.ScalarQuantizer.QT_8bit}
_CODEC_OF_QTYPE = {int(v): k for k, v in _QTYPES.items()}
_FOURCC_SQ = b"IxSQ"
_DUMMY = 1 << 20
_HEAD = struct.Struct("<4siqqq?i")          # IndexScalarQuantizer's Index header (37 bytes)
_SQ = struct.Struct("<iifQQQ")               # qtype, rangestat, rangestat_arg, d, code_size, n_trained
_U64 = struct.Struct("<Q")
_QTYPE_OFFSET = _HEAD.size                   # 37: where the qtype sits in an IxSQ file


def check_codec(codec: Any) -> str:
    """``codec`` if it is one of :data:`CODECS`, else :class:`IndexStoreError`."""
    if codec not in CODECS:
        raise IndexStoreError(f"Expected codec to be one of {', '.join(CODECS)}, but codec = {codec!r}")
    return codec


def code_size(codec: str, d: int) -> int:
    """Bytes per stored vector."""
    return {"fp32": 4, "fp16": 2, "sq8": 1}[check_codec(codec)] * int(d)


def n_trained(codec: str, d: int) -> int:
    """Trained float32 values stored in the file (the ``sq8`` ranges)."""
    return 2 * int(d) if check_codec(codec) == "sq8" else 0


def codes_offset(codec: str, d: int) -> int:
    """Byte offset of the first code in a layer file of this codec."""
    if check_codec(codec) == "fp32":
        return FLAT_HEADER_BYTES
    return _HEAD.size + _SQ.size + 4 * n_trained(codec, d) + _U64.size


def file_bytes(codec: str, d: int, ntotal: int) -> int:
    """Size of a layer file holding ``ntotal`` vectors of dimension ``d``."""
    return codes_offset(codec, d) + int(ntotal) * code_size(codec, d)


def sq_header(codec: str, d: int, ntotal: int, trained: np.ndarray) -> bytes:
    """Every byte of an ``IndexScalarQuantizer`` file before its codes."""
    trained = np.ascontiguousarray(trained, dtype="<f4").ravel()
    if trained.size != n_trained(codec, d):
        raise IndexStoreError(
            f"codec {codec}: expected {n_trained(codec, d)} trained values, got {trained.size}")
    cs = code_size(codec, d)
    return (_HEAD.pack(_FOURCC_SQ, int(d), int(ntotal), _DUMMY, _DUMMY, True, 0)
            + _SQ.pack(int(_QTYPES[codec]), 0, 0.0, int(d), cs, trained.size)
            + trained.tobytes() + _U64.pack(int(ntotal) * cs))


def sniff_codec(path: str | os.PathLike) -> str:
    """The codec a layer file holds, from its first bytes (``"IxFI"`` fp32, ``"IxSQ"`` + qtype)."""
    with open(path, "rb") as f:
        head = f.read(_QTYPE_OFFSET + 4)
    if head[:4] == b"IxFI":
        return "fp32"
    if head[:4] == _FOURCC_SQ and len(head) == _QTYPE_OFFSET + 4:
        qtype = struct.unpack_from("<i", head, _QTYPE_OFFSET)[0]
        return _CODEC_OF_QTYPE.get(qtype, f"IndexScalarQuantizer qtype {qtype}")
    return f"unknown (file starts with {head[:4]!r})"


def empty_sq_index(codec: str, d: int, trained: np.ndarray | None = None) -> faiss.IndexScalarQuantizer:
    """An empty FAISS index of the codec, with ``trained`` ranges set (it is the encoder)."""
    index = faiss.IndexScalarQuantizer(int(d), _QTYPES[check_codec(codec)], faiss.METRIC_INNER_PRODUCT)
    if n_trained(codec, d):
        if trained is None:
            raise IndexStoreError(f"codec {codec} needs trained ranges")
        faiss.copy_array_to_vector(np.ascontiguousarray(trained, dtype=np.float32).ravel(), index.sq.trained)
    index.is_trained = True
    return index


def train_codec(codec: str, sample: np.ndarray) -> np.ndarray:
    """Trained values of ``codec`` from ``sample`` (n, d): the ``sq8`` ranges, empty for others."""
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    if n_trained(codec, sample.shape[1]) == 0:
        return np.zeros(0, dtype=np.float32)
    index = faiss.IndexScalarQuantizer(sample.shape[1], _QTYPES[codec], faiss.METRIC_INNER_PRODUCT)
    index.train(sample)
    return faiss.vector_to_array(index.sq.trained).astype(np.float32)


def sq8_affine(trained: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    """``(scale, bias)`` float32 ``(d,)``: component ``i`` of code ``c`` decodes to ``c*scale + bias``."""
    trained = np.asarray(trained, dtype=np.float32).ravel()
    vmin, vdiff = trained[:d], trained[d: 2 * d]
    scale = (vdiff / np.float32(255)).astype(np.float32)
    bias = (vmin + np.float32(0.5) * scale).astype(np.float32)
    return scale, bias


@functools.cache
def check_sq_format(codec: str) -> None:
    """Raise :class:`IndexStoreError` if FAISS serialises the codec differently from :func:`sq_header`."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 8)).astype(np.float32)
    trained = train_codec(codec, x)
    index = empty_sq_index(codec, 8, trained)
    index.add(x)
    expected = faiss.serialize_index(index).tobytes()
    ours = sq_header(codec, 8, 5, trained) + encode(index, x).tobytes()
    if expected != ours:
        raise IndexStoreError(
            f"faiss {faiss.__version__} serialises IndexScalarQuantizer ({codec}) differently from the "
            f"streaming writer; the store cannot be written with this FAISS version")


def encode(index: faiss.Index, x: np.ndarray) -> np.ndarray:
    """FAISS's own codes of ``x`` (n, d) under ``index``'s quantiser, ``(n, code_size)`` uint8."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    return index.sa_encode(x)


class SQWriter(StreamingIndexWriter):
    """Append vectors to an ``IndexScalarQuantizer`` file without holding them in memory.

    Encodes with FAISS's own encoder (so the codes are FAISS's, byte for byte) and writes the
    format of :func:`sq_header`; the rest is :class:`~compnn_index.index.flatfile.StreamingIndexWriter`.
    """

    def __init__(self, path: str | os.PathLike, d: int, codec: str, trained: np.ndarray | None = None) -> None:
        check_sq_format(codec)
        self.codec = codec
        self.trained = np.zeros(0, np.float32) if trained is None else np.asarray(trained, np.float32).ravel()
        self._index = empty_sq_index(codec, int(d), self.trained)
        super().__init__(path, d)

    def _header(self, ntotal: int) -> bytes:
        return sq_header(self.codec, self.d, ntotal, self.trained)

    def _encode(self, x: np.ndarray) -> np.ndarray:
        return encode(self._index, x)


def layer_writer(path: str | os.PathLike, d: int, codec: str, trained: np.ndarray | None = None):
    """The streaming writer of a layer file of ``codec``."""
    from .flatfile import FlatIPWriter

    if check_codec(codec) == "fp32":
        return FlatIPWriter(path, d)
    return SQWriter(path, d, codec, trained)


# ------------------------------------------------------------------------------------------------
# Reading


class _CodesOwner:
    """Exposes an index's code buffer ``(ntotal, code_size)`` uint8 to NumPy; keeps it alive."""

    def __init__(self, index: faiss.Index, shape: tuple[int, int]) -> None:
        self.index = index
        ptr = faiss.rev_swig_ptr(index.codes.data(), 1).ctypes.data
        self.__array_interface__ = {"data": (ptr, True), "shape": shape, "typestr": "|u1", "version": 3}


def codes_view(index: faiss.Index) -> np.ndarray:
    """Zero-copy read-only view of an ``IndexScalarQuantizer``'s codes (memory-mapped in place)."""
    return np.asarray(_CodesOwner(index, (int(index.ntotal), int(index.code_size))))


def trained_of(index: faiss.Index) -> np.ndarray:
    return faiss.vector_to_array(index.sq.trained).astype(np.float32)


class CodecDecoder:
    """Decoder of one layer's codes (see the module doc for the definition of "decoded").

    ``decoder(start, stop, out)`` writes the decoded, re-normalised float32 vectors
    ``start..stop-1`` into ``out`` and returns it (the :class:`LayerVectors` decoder protocol);
    :meth:`gather` does the same for arbitrary ids.
    """

    def __init__(self, codec: str, raw: np.ndarray, d: int, trained: np.ndarray | None = None) -> None:
        self.codec = check_codec(codec)
        if codec == "fp32":
            raise IndexStoreError("fp32 layers are read in place; they need no decoder")
        self.raw = raw
        self.d = int(d)
        self.trained = np.zeros(0, np.float32) if trained is None else np.asarray(trained, np.float32)
        if codec == "sq8":
            self.scale, self.bias = sq8_affine(self.trained, self.d)

    def params(self) -> dict[str, Any]:
        """What the native kernel needs to decode in place."""
        if self.codec == "sq8":
            return {"scale": self.scale, "bias": self.bias, "trained": self.trained}
        return {}

    def _decode(self, codes: np.ndarray, out: np.ndarray) -> np.ndarray:
        if self.codec == "fp16":
            np.copyto(out, codes.view(np.float16), casting="unsafe")
        else:
            np.copyto(out, codes, casting="unsafe")
            out *= self.scale
            out += self.bias
        return normalise_rows(out)

    def __call__(self, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        return self._decode(self.raw[start:stop], out)

    def gather(self, ids: np.ndarray, out: np.ndarray) -> np.ndarray:
        return self._decode(self.raw[np.asarray(ids, dtype=np.int64)], out)


def roundtrip(codec: str, x: np.ndarray, trained: np.ndarray | None = None) -> np.ndarray:
    """The vectors a ``codec`` layer holds for ``x`` (n, d), as readers decode them: FAISS's codes,
    decoded and re-normalised like :class:`CodecDecoder` (fp32: ``x`` itself). What the screen of a
    layer being written is computed from."""
    if check_codec(codec) == "fp32":
        return x
    x = np.ascontiguousarray(x, dtype=np.float32)
    codes = encode(empty_sq_index(codec, x.shape[1], trained), x)
    return CodecDecoder(codec, codes, x.shape[1], trained)(0, len(x), np.empty(x.shape, np.float32))


def normalise_rows(out: np.ndarray) -> np.ndarray:
    """Scale every row of the float32 ``out`` to unit length in place (zero rows stay zero)."""
    if out.shape[0] == 0:
        return out
    if out.flags.c_contiguous and out.flags.aligned and out.dtype == np.float32:
        faiss.fvec_renorm_L2(out.shape[1], out.shape[0], faiss.swig_ptr(out))  # zero rows stay zero
        return out
    norms = np.sqrt(np.einsum("ij,ij->i", out, out))
    norms[norms == 0] = 1.0
    out /= norms[:, None]
    return out
