"""Synthetic facades: the built-in dataset that needs no download.

Each image is a pix2pix-style pair: A = a rendered photo, B = its label map drawn with
:data:`~compnn_index.data.palette.FACADES_PALETTE` (the 12 Facades classes, indices as in
:mod:`~compnn_index.data.facade_layout`). Image ``i`` of a split depends only on
``(seed, split, i)``: its layout and colours come from ``numpy.random.default_rng([seed, s, i, 0])``
and its texture and noise from ``default_rng([seed, s, i, 1])`` (``s`` = 0 train, 1 val, 2 test),
so it is the same whatever ``limit`` is, and train and test never share an image.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..checks import check_choice
from ..errors import DataError
from .base import PairedDataset
from .facade_layout import facade_layout
from .facade_params import FacadeParams, draw_params
from .facade_render import render_photo
from .images import SIZE_MULTIPLE, to_network
from .palette import FACADES_CLASSES, FACADES_PALETTE, colorize

#: Seed-stream number of each split, and its default number of images.
SPLIT_STREAMS = {"train": 0, "val": 1, "test": 2}
DEFAULT_LIMITS = {"train": 400, "val": 100, "test": 100}
DEFAULT_SIZE = 256


class SyntheticFacades(PairedDataset):
    """Deterministic synthetic facades (photo A, label map B) generated on access.

    Use :func:`compnn_index.data.open_dataset` with ``data="synthetic"``. ``task="segment"``
    gives int64 class targets and needs ``direction="AtoB"`` (the label map is B).
    """

    kind = "synthetic"

    def __init__(
        self,
        *,
        split: str,
        direction: str,
        task: str,
        size: tuple[int, int] | None,
        limit: int | None,
        seed: int,
        ignore_index: int | None,
    ) -> None:
        check_choice(split, "split", sorted(SPLIT_STREAMS), error=DataError)
        if task == "segment" and direction != "AtoB":
            raise DataError(
                "task='segment' reads the label map (B) as the target, so it needs "
                f"direction='AtoB', but direction = {direction!r}"
            )
        shape = size if size is not None else (DEFAULT_SIZE, DEFAULT_SIZE)
        if shape[0] % SIZE_MULTIPLE or shape[1] % SIZE_MULTIPLE:
            raise DataError(
                f"Expected a synthetic size that is a multiple of {SIZE_MULTIPLE}, but size = {size}"
            )
        n = DEFAULT_LIMITS[split] if limit is None else limit
        self._seed = seed
        self._stream = SPLIT_STREAMS[split]
        self._direction = direction
        super().__init__(
            names=[f"{split}_{i:05d}" for i in range(n)],
            task=task,
            num_classes=len(FACADES_PALETTE) if task == "segment" else None,
            ignore_index=ignore_index,
            image_size=shape,
            identity={
                "kind": self.kind, "path": None, "split": split, "direction": direction,
                "task": task, "size": list(shape), "limit": n, "seed": seed,
                "ignore_index": ignore_index,
            },
            palette=FACADES_PALETTE if task == "segment" else None,
            class_names=FACADES_CLASSES if task == "segment" else None,
        )

    def params(self, i: int) -> FacadeParams:
        """The random parameters of image ``i`` (cheap: no pixels are drawn)."""
        i = self._check_index(i)
        return draw_params(np.random.default_rng([self._seed, self._stream, i, 0]))

    def generate(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Render image ``i``.

        Returns
        -------
        photo : ndarray of uint8, shape (H, W, 3)
        labels : ndarray of int64, shape (H, W)
            Facades class indices.
        """
        params = self.params(i)
        labels, detail = facade_layout(params, self.image_size)
        photo = render_photo(labels, detail, params,
                             np.random.default_rng([self._seed, self._stream, i, 1]))
        return photo, labels.astype(np.int64)

    def _read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        photo, labels = self.generate(i)
        if self.task == "segment":
            return to_network(photo), labels
        label_map = to_network(colorize(labels, FACADES_PALETTE))
        photo_in = to_network(photo)
        return (photo_in, label_map) if self._direction == "AtoB" else (label_map, photo_in)

    def _meta(self, i: int) -> dict[str, Any]:
        return self.params(i).to_meta()
