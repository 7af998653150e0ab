"""pix2pix "AB" folders: ``DIR/{train,val,test}/*.jpg|png``, each file two halves side by side."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .base import PairedDataset
from .images import check_multiple, header_size, read_photo, resize_labels, resize_photo, to_network
from .palette import FACADES_CLASSES, FACADES_PALETTE, labels_from_colors


class Pix2PixDataset(PairedDataset):
    """Paired images stored as one ``2H × H`` file: left half A, right half B.

    ``direction="AtoB"`` reads A as the input and B as the target. With ``task="segment"`` the
    target half is a colour label map and becomes class indices by nearest
    :data:`~compnn_index.data.palette.FACADES_PALETTE` colour (12 classes), at native resolution
    and then resized nearest. Photos and image targets are resized bilinear.

    Use :func:`compnn_index.data.open_dataset` rather than constructing this directly.
    """

    kind = "pix2pix"

    def __init__(
        self,
        files: list[Path],
        *,
        root: Path,
        split: str,
        direction: str,
        task: str,
        size: tuple[int, int] | None,
        limit: int | None,
        seed: int,
        ignore_index: int | None,
    ) -> None:
        self._files = files
        self._direction = direction
        self._size = size
        w, h = header_size(files[0])
        if w != 2 * h:
            raise DataError(f"{files[0]}: expected an AB image of width 2 × height, got {h}×{w} (H×W)")
        if size is None:
            check_multiple(files[0], h, h, "each half")
        super().__init__(
            names=[f.name for f in files],
            task=task,
            num_classes=len(FACADES_PALETTE) if task == "segment" else None,
            ignore_index=ignore_index,
            image_size=size if size is not None else (h, h),
            identity={
                "kind": self.kind, "path": str(root.resolve()), "split": split,
                "direction": direction, "task": task, "size": None if size is None else list(size),
                "limit": limit, "seed": seed, "ignore_index": ignore_index,
                "source_size": [h, w],  # the AB files' geometry: queries of it are preprocessed alike
            },
            palette=FACADES_PALETTE if task == "segment" else None,
            class_names=FACADES_CLASSES if task == "segment" else None,
        )

    def _read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        path = self._files[i]
        img = read_photo(path)
        w, h = img.size
        if w != 2 * h:
            raise DataError(f"{path}: expected an AB image of width 2 × height, got {h}×{w} (H×W)")
        if self._size is None and (h, h) != self.image_size:
            eh, ew = self.image_size
            raise DataError(
                f"{path}: expected halves of {eh}×{ew} (H×W) like {self._files[0].name}, got {h}×{h}; "
                "pass size= to resize every image"
            )
        a, b = img.crop((0, 0, h, h)), img.crop((h, 0, 2 * h, h))
        source, dest = (a, b) if self._direction == "AtoB" else (b, a)
        inp = to_network(resize_photo(source, self.image_size))
        if self.task == "segment":
            labels = labels_from_colors(np.asarray(dest), FACADES_PALETTE)
            return inp, np.ascontiguousarray(resize_labels(labels, self.image_size))
        return inp, to_network(resize_photo(dest, self.image_size))

    def _meta(self, i: int) -> dict[str, Any]:
        return {"file": f"{self.identity['split']}/{self._files[i].name}"}
