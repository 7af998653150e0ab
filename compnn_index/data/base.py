"""The dataset interface every reader implements: :class:`Sample` and :class:`PairedDataset`."""
from __future__ import annotations

import abc
import operator
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np


@dataclass(frozen=True)
class Sample:
    """One training or query example.

    Attributes
    ----------
    id : int
        Position in the dataset, ``0 .. len-1`` in sorted-name order.
    name : str
        File name (or synthetic name such as ``"train_00007"``).
    input : ndarray of float32, shape (3, H, W)
        Network input in ``[-1, 1]``.
    target : ndarray
        float32 ``(3, H, W)`` in ``[-1, 1]`` for ``task="translate"``; int64 ``(H, W)`` class
        indices for ``task="segment"``.
    meta : dict
        JSON-able per-image information (see :meth:`PairedDataset.meta`).
    """

    id: int
    name: str
    input: np.ndarray
    target: np.ndarray
    meta: dict = field(default_factory=dict)


class PairedDataset(abc.ABC):
    """A lazily read sequence of (input, target) pairs of one fixed size.

    Attributes
    ----------
    task : {"translate", "segment"}
    in_channels : int
        Always 3 (RGB inputs).
    out_channels : int
        3 for translate, ``num_classes`` for segment.
    num_classes : int or None
        Number of classes (None for translate).
    ignore_index : int or None
        Target label that losses and metrics skip.
    names : list of str
        Sample names in id order.
    image_size : tuple of int
        ``(H, W)`` of every input and target.
    identity : dict
        JSON-able description recorded in an index manifest: kind, path, split, direction, task,
        size, limit, seed, ignore_index.
    palette : ndarray of uint8, shape (K, 3), or None
        Colours for drawing class labels (None for translate).
    class_names : tuple of str or None
        Names of the classes when known.
    """

    in_channels: int = 3

    def __init__(
        self,
        *,
        names: list[str],
        task: str,
        num_classes: int | None,
        ignore_index: int | None,
        image_size: tuple[int, int],
        identity: dict[str, Any],
        palette: np.ndarray | None,
        class_names: tuple[str, ...] | None = None,
    ) -> None:
        self.names = list(names)
        self.task = task
        self.num_classes = num_classes
        self.out_channels = 3 if task == "translate" else int(num_classes)
        self.ignore_index = ignore_index
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.identity = dict(identity)
        self.palette = palette
        self.class_names = class_names

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> Sample:
        i = self._check_index(i)
        inp, target = self._read(i)
        return Sample(id=i, name=self.names[i], input=inp, target=target, meta=self._meta(i))

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        h, w = self.image_size
        return (
            f"{type(self).__name__}({len(self)} images {h}×{w}, task={self.task!r}, "
            f"split={self.identity.get('split')!r}, path={self.identity.get('path')!r})"
        )

    def _check_index(self, i: int) -> int:
        try:
            i = operator.index(i)
        except TypeError:
            raise TypeError(
                f"dataset indices must be integers, got {type(i).__name__}"
            ) from None
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"dataset index {i} out of range for {n} images")
        return i % n

    @abc.abstractmethod
    def _read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(input, target)`` of image ``i`` (a valid non-negative id)."""

    def meta(self, i: int) -> dict[str, Any]:
        """JSON-able information about image ``i`` without reading its pixels.

        Folder datasets give ``{"file": ...}`` (and ``"annotation"``); the synthetic set gives its
        generation parameters, e.g. ``{"material": "brick", "floors": 4, ...}``.
        """
        return self._meta(self._check_index(i))

    @abc.abstractmethod
    def _meta(self, i: int) -> dict[str, Any]:
        """:meth:`meta` for a valid non-negative id."""
