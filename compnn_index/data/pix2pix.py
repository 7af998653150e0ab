"""pix2pix "AB" folders: ``DIR/{train,val,test}/*.jpg|png``, each file two halves side by side."""
from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..errors import DataError
from .base import PairedDataset
from .images import check_multiple, header_size, read_photo, resize_labels, resize_photo, to_network
from .palette import FACADES_CLASSES, FACADES_PALETTE, labels_from_colors

#: Optional file in the dataset folder giving the label maps' classes, one ``name R G B`` per line
#: (as for image + annotation folders); without it, segmentation reads the Facades palette.
CLASSES_FILE = "classes.txt"
#: A label half whose pixels are on average further than this (RGB units) from their nearest
#: palette colour is not drawn in that palette: Facades' own JPEG label maps measure 14-33, their
#: photo halves ~100.
MAX_PALETTE_DISTANCE = 50.0


def label_palette(root: Path) -> tuple[np.ndarray, tuple[str, ...], Path | None]:
    """The label maps' palette and class names: ``root/classes.txt`` when present (every line
    with its colour), else the Facades palette; and the file they came from (None: Facades)."""
    from .annotated import read_classes

    path = root / CLASSES_FILE
    if not path.is_file():
        return FACADES_PALETTE, FACADES_CLASSES, None
    names, palette = read_classes(path)
    if palette is None:
        raise DataError(f"{path}: a pix2pix label half is read by colour, so every class line needs one "
                        f"('name R G B'); {names[0]!r} has none")
    return palette, names, path


def _check_ab_width(path: Path, h: int, w: int) -> None:
    if w % 2 or w < 2:
        raise DataError(f"{path}: expected an AB image, two halves of equal width side by side (an even "
                        f"width), got {h}×{w} (H×W)")


def ab_halves(img, direction: str = "AtoB"):
    """A pix2pix AB image's (input, target) halves, each ``H × W/2`` (pix2pix splits the width in
    two whatever the aspect): (A, B) for AtoB, (B, A) for BtoA."""
    w, h = img.size
    a, b = img.crop((0, 0, w // 2, h)), img.crop((w // 2, 0, 2 * (w // 2), h))
    return (a, b) if direction == "AtoB" else (b, a)


class InputLabels(NamedTuple):
    """Whether a translation network's *inputs* are label maps: their palette and class names
    (None when they are not), and why, in words."""

    palette: np.ndarray | None
    names: tuple[str, ...] | None
    reason: str


def network_rgb(image: np.ndarray) -> np.ndarray:
    """A network input, float ``(3, H, W)`` in ``[-1, 1]``, as uint8 ``(H, W, 3)`` colours."""
    x = np.asarray(image, dtype=np.float32)
    return np.clip(np.rint((x.transpose(1, 2, 0) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def input_label_palette(identity: dict | None, first_input: np.ndarray | None) -> InputLabels:
    """The palette a dataset's inputs are label maps in, or None and why not.

    The candidate palette is the one its label maps are read with (a pix2pix folder's
    ``classes.txt``, else the Facades palette); the inputs are label maps when the first one lies
    within :data:`MAX_PALETTE_DISTANCE` of it (Facades labels → photo: ~27; a photo: ~100).
    ``identity`` is a dataset's identity (``ds.identity``, or the one a store recorded).
    """
    identity = identity or {}
    palette, names, source = FACADES_PALETTE, FACADES_CLASSES, None
    if identity.get("kind") == "pix2pix" and identity.get("path") and Path(identity["path"]).is_dir():
        palette, names, source = label_palette(Path(identity["path"]))
    if first_input is None:
        return InputLabels(None, None, "no input images")
    first = np.asarray(first_input)
    if first.ndim != 3 or first.shape[0] != 3:
        return InputLabels(None, None, f"the inputs are not RGB images (shape {first.shape})")
    d = palette_distance(network_rgb(first), palette)
    which = f"the colours of {source}" if source else "the Facades palette"
    if d > MAX_PALETTE_DISTANCE:
        return InputLabels(None, None, f"the inputs are not label maps in {which} (mean distance {d:.0f} RGB "
                                       f"units to the nearest colour; a label map: under {MAX_PALETTE_DISTANCE:.0f})")
    return InputLabels(np.asarray(palette, dtype=np.uint8), tuple(names), f"label maps in {which} (mean distance {d:.0f})")


def palette_distance(rgb: np.ndarray, palette: np.ndarray) -> float:
    """Mean RGB distance of an image's pixels (up to 16,384 of them, evenly spaced) to their
    nearest ``palette`` colour: small for a label map drawn in it, large for a photo."""
    rgb = np.asarray(rgb)
    pixels = rgb.reshape(-1, 3)[:: max(1, rgb.size // 3 // 16384)].astype(np.float32)
    pal = np.asarray(palette).astype(np.float32)
    d2 = (pixels * pixels).sum(1, keepdims=True) - 2.0 * pixels @ pal.T + (pal * pal).sum(1)
    return float(np.sqrt(np.maximum(d2.min(1), 0.0)).mean())


def check_label_colours(file: Path, rgb: np.ndarray, palette: np.ndarray, source: Path | None) -> None:
    """Refuse a label half that is not drawn in ``palette`` (another dataset's colours, or a photo
    half read as labels), instead of snapping every pixel to the nearest palette colour."""
    mean = palette_distance(rgb, palette)
    if mean > MAX_PALETTE_DISTANCE:
        which = f"the colours of {source}" if source else "the Facades palette (12 classes)"
        raise DataError(
            f"{file}: its label half is on average {mean:.0f} RGB units from the nearest colour of {which} "
            f"(a label map drawn in it: under {MAX_PALETTE_DISTANCE:.0f}). Is the direction right (the "
            f"label half is the target)? For another label palette add {CLASSES_FILE} to the dataset "
            "folder, one 'name R G B' line per class")


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
        _check_ab_width(files[0], h, w)
        if size is None:
            check_multiple(files[0], h, w // 2, "each half")
        palette, names, self._classes_file = label_palette(root) if task == "segment" else (None, None, None)
        self._palette = palette
        if task == "segment":
            img = read_photo(files[0])
            check_label_colours(files[0], np.asarray(self._halves(img)[1]), palette, self._classes_file)
        super().__init__(
            names=[f.name for f in files],
            task=task,
            num_classes=len(palette) if task == "segment" else None,
            ignore_index=ignore_index,
            image_size=size if size is not None else (h, w // 2),
            identity={
                "kind": self.kind, "path": str(root.resolve()), "split": split,
                "direction": direction, "task": task, "size": None if size is None else list(size),
                "limit": limit, "seed": seed, "ignore_index": ignore_index,
                "source_size": [h, w],  # the AB files' geometry: queries of it are preprocessed alike
            },
            palette=palette,
            class_names=names,
        )

    def _read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        path = self._files[i]
        img = read_photo(path)
        w, h = img.size
        _check_ab_width(path, h, w)
        if self._size is None and (h, w // 2) != self.image_size:
            eh, ew = self.image_size
            raise DataError(
                f"{path}: expected halves of {eh}×{ew} (H×W) like {self._files[0].name}, got {h}×{w // 2}; "
                "pass size= to resize every image"
            )
        source, dest = self._halves(img)
        inp = to_network(resize_photo(source, self.image_size))
        if self.task == "segment":
            labels = labels_from_colors(np.asarray(dest), self._palette)
            return inp, np.ascontiguousarray(resize_labels(labels, self.image_size))
        return inp, to_network(resize_photo(dest, self.image_size))

    def _halves(self, img):
        """An AB image's (input, target) halves: (A, B) for AtoB, (B, A) for BtoA."""
        return ab_halves(img, self._direction)

    def _meta(self, i: int) -> dict[str, Any]:
        return {"file": f"{self.identity['split']}/{self._files[i].name}"}
