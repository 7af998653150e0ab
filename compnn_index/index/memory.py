"""Size estimates for an index store, checked against free disk space and RAM before a build."""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from typing import Mapping

import numpy as np
import psutil

from ..errors import IndexStoreError
from .codecs import file_bytes
from .flatfile import HEADER_BYTES
from .screen import screen_bytes

_GB = 1e9


def gb(nbytes: float) -> str:
    """``nbytes`` as a short decimal-gigabyte string, e.g. ``"13.21 GB"``."""
    return f"{nbytes / _GB:.2f} GB"


@dataclass
class StoreSize:
    """Bytes an index store will occupy on disk.

    Attributes
    ----------
    layers : dict of str to int
        Per layer: ``ntotal * dim * 4`` plus the FAISS header.
    global_bytes : int
        The global-descriptor index.
    arrays : dict of str to int
        Sidecar ``.npy`` arrays.
    """

    layers: dict[str, int] = field(default_factory=dict)
    global_bytes: int = 0
    arrays: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.layers.values()) + self.global_bytes + sum(self.arrays.values())

    def describe(self) -> str:
        """One line: total and the per-part breakdown."""
        parts = [f"layer {k} {gb(v)}" for k, v in self.layers.items()]
        parts.append(f"global {gb(self.global_bytes)}")
        parts += [f"{k} {gb(v)}" for k, v in self.arrays.items()]
        return f"{gb(self.total)} ({', '.join(parts)})"


def free_disk_bytes(directory: str | os.PathLike) -> int:
    """Free bytes on the file system holding ``directory`` (or its nearest existing parent)."""
    path = Path(directory).resolve()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def available_memory_bytes() -> int:
    """RAM available to a new allocation without swapping (``psutil.virtual_memory().available``)."""
    return int(psutil.virtual_memory().available)


def check_disk(size: StoreSize, directory: str | os.PathLike, *, margin: float = 1.05) -> None:
    """Raise :class:`IndexStoreError` unless ``size`` (plus ``margin``) fits on ``directory``'s disk."""
    free = free_disk_bytes(directory)
    if size.total * margin > free:
        raise IndexStoreError(
            f"the index store needs {size.describe()} on disk, but only {gb(free)} is free in "
            f"{os.fspath(directory)!r}; build fewer layers or images (limit), or choose another out"
        )


def check_memory(needed: int, *, what: str) -> None:
    """Raise :class:`IndexStoreError` unless ``needed`` bytes of RAM are available for ``what``."""
    available = available_memory_bytes()
    if needed > available:
        raise IndexStoreError(
            f"{what} needs {gb(needed)} of RAM, but only {gb(available)} is available; "
            "lower batch_size"
        )


def store_size(
    shapes: Mapping[str, tuple[int, int, int]], gdim: int, n: int,
    arrays: Mapping[str, tuple[tuple, np.dtype]], codec: str = "fp32", screen: int = 0,
) -> StoreSize:
    """Bytes a store of these layers (plus norms and screen sidecars), global descriptors and
    arrays will take on disk."""
    return StoreSize(
        layers={name: file_bytes(codec, d, n * hp * wp) + 128 + n * hp * wp * 4  # + norms sidecar
                + (screen_bytes(n * hp * wp, screen) if screen else 0)
                for name, (hp, wp, d) in shapes.items()},
        global_bytes=HEADER_BYTES + n * gdim * 4,
        arrays={k: int(np.prod(shape)) * dtype.itemsize for k, (shape, dtype) in arrays.items()},
    )


def batch_bytes(shapes: Mapping[str, tuple[int, int, int]], gdim: int, per_image_arrays: int,
                 batch_size: int) -> int:
    """Rough peak RAM of one batch: hyperpatches (plus their construction) and activations."""
    per_image = sum(hp * wp * d * 4 for hp, wp, d in shapes.values())
    return batch_size * (3 * per_image + 2 * gdim * 4 + 2 * per_image_arrays)
