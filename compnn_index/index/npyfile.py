"""Stream a ``.npy`` file batch by batch (header first, then C-order rows).

The sidecar arrays of a large store (inputs, targets, outputs: ~0.3 GB each for 400 images at
256×256) are written sequentially instead of through a writable ``np.memmap``, whose dirty
file-backed pages would count towards the build's resident memory until written back.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import IndexStoreError
from .writeback import Writeback


class NpyWriter:
    """Append rows to a ``.npy`` file of known final shape and dtype.

    Parameters
    ----------
    path : path-like
        File to create.
    shape : tuple of int
        Final shape; rows are appended along axis 0.
    dtype : dtype
        Element type; appended rows are converted to it.
    """

    def __init__(self, path: str | os.PathLike, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path = Path(path)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.rows = 0
        self._file = open(self.path, "wb")
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": self.shape}
        np.lib.format.write_array_header_1_0(self._file, header)
        self._writeback = Writeback(self._file)

    def add(self, rows: np.ndarray) -> None:
        """Append ``rows`` of shape ``(m,) + shape[1:]``."""
        x = np.ascontiguousarray(rows, dtype=self.dtype)
        if x.shape[1:] != self.shape[1:] or self.rows + x.shape[0] > self.shape[0]:
            raise IndexStoreError(
                f"{self.path.name}: expected rows of shape (m,) + {self.shape[1:]} with at most "
                f"{self.shape[0] - self.rows} rows left, but got {x.shape}"
            )
        self._writeback.wrote(self._file.write(memoryview(x).cast("B")))
        self.rows += x.shape[0]

    def close(self) -> None:
        """Flush and close; raise :class:`IndexStoreError` if rows are missing."""
        if self._file.closed:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        if self.rows != self.shape[0]:
            raise IndexStoreError(
                f"{self.path.name}: wrote {self.rows} rows, expected {self.shape[0]}"
            )

    def abort(self) -> None:
        """Close without checks (used when a build fails)."""
        if not self._file.closed:
            self._file.close()
