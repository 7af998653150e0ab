"""Image + annotation folders (SegNet / CamVid): ``DIR/{split}/`` and ``DIR/{split}annot/``."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .base import PairedDataset
from .images import (
    check_multiple,
    header_size,
    read_annotation,
    read_photo,
    resize_labels,
    resize_photo,
    to_network,
)
from .palette import jet_palette

#: Default label skipped by losses and metrics in this layout (CamVid's "void" is 11).
DEFAULT_IGNORE_INDEX = 11
#: Optional file in the dataset folder naming one class per line (its line count is K), each
#: optionally followed by its colour (``name R G B``), which pictures then use.
CLASSES_FILE = "classes.txt"


def annotation_path(image: Path, annot_dir: Path) -> Path:
    """The annotation of ``image``: a PNG with the same stem in ``annot_dir``."""
    return annot_dir / (image.stem + ".png")


def read_class_names(path: Path) -> tuple[str, ...]:
    """Class names from ``classes.txt``: one per non-empty line (see :func:`read_classes`)."""
    return read_classes(path)[0]


def read_classes(path: Path) -> tuple[tuple[str, ...], np.ndarray | None]:
    """Class names, and colours when given, from ``classes.txt``.

    One class per non-empty line: ``name`` or ``name R G B`` (0..255; the name may contain
    spaces). Either every line has a colour or none does.

    Returns
    -------
    names : tuple of str
    palette : ndarray of uint8, shape (K, 3), or None
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read class names ({exc})") from exc
    names, colours = [], []
    for n, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        rgb = parts[-3:] if len(parts) >= 4 else []
        if rgb and all(p.isascii() and p.isdigit() for p in rgb):
            values = [int(p) for p in rgb]
            if max(values) > 255:
                raise DataError(f"{path}:{n}: colour {' '.join(rgb)} is not in 0..255")
            names.append(" ".join(parts[:-3]))
            colours.append(values)
        else:
            names.append(line.strip())
            colours.append(None)
    if not names:
        raise DataError(f"{path}: expected one class name per line, found none")
    given = [c is not None for c in colours]
    if any(given) and not all(given):
        line = given.index(False) + 1 if given[0] else given.index(True) + 1
        raise DataError(
            f"{path}: either every class line has a colour ('name R G B') or none does; "
            f"class {line} ({names[line - 1]!r}) differs from class 1"
        )
    palette = np.asarray(colours, dtype=np.uint8) if all(given) else None
    return tuple(names), palette


def scan_num_classes(root: Path, ignore_index: int) -> int:
    """Largest label in every ``*annot/*.png`` under ``root`` (all splits), excluding the ignore
    label, plus one; so train, val and test agree on the number of classes."""
    top = -1
    files = sorted(p for d in root.glob("*annot") if d.is_dir() for p in d.glob("*.png"))
    for path in files:
        labels = read_annotation(path)
        values = labels[labels != ignore_index]
        if values.size:
            top = max(top, int(values.max()))
    if top < 0:
        raise DataError(
            f"{root}: cannot infer the number of classes: annotations hold only the ignore label "
            f"{ignore_index}; add a {CLASSES_FILE} naming one class per line"
        )
    return top + 1


class AnnotatedDataset(PairedDataset):
    """Photos with single-channel annotation PNGs of class indices (task is always "segment").

    The number of classes comes from ``DIR/classes.txt`` (one name per line) when present;
    otherwise it is the largest label found in the annotations of every split, excluding
    ``ignore_index``, plus one (read once at construction). Photos may be any size; without
    ``size=`` their sides must be multiples of 32. Labels are resized nearest.

    Use :func:`compnn_index.data.open_dataset` rather than constructing this directly.
    """

    kind = "annotated"

    def __init__(
        self,
        files: list[Path],
        *,
        root: Path,
        split: str,
        size: tuple[int, int] | None,
        limit: int | None,
        seed: int,
        ignore_index: int | None,
    ) -> None:
        annot_dir = root / f"{split}annot"
        self._files = files
        self._annotations = [annotation_path(f, annot_dir) for f in files]
        self._size = size
        missing = [f.name for f, a in zip(files, self._annotations) if not a.is_file()]
        if missing:
            shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
            raise DataError(
                f"{len(missing)} of {len(files)} images in {root / split} have no annotation in "
                f"{annot_dir} (expected a PNG with the same stem): {shown}"
            )
        ignore = DEFAULT_IGNORE_INDEX if ignore_index is None else ignore_index
        classes_file = root / CLASSES_FILE
        palette = None
        if classes_file.is_file():
            class_names, palette = read_classes(classes_file)
            num_classes = len(class_names)
        else:
            class_names = None
            num_classes = scan_num_classes(root, ignore)
        w, h = header_size(files[0])
        if size is None:
            check_multiple(files[0], h, w, "image")
        super().__init__(
            names=[f.name for f in files],
            task="segment",
            num_classes=num_classes,
            ignore_index=ignore,
            image_size=size if size is not None else (h, w),
            identity={
                "kind": self.kind, "path": str(root.resolve()), "split": split,
                "direction": "AtoB", "task": "segment",
                "size": None if size is None else list(size), "limit": limit, "seed": seed,
                "ignore_index": ignore,
                "source_size": [h, w],  # the frames' geometry: queries of it are preprocessed alike
            },
            palette=jet_palette(num_classes) if palette is None else palette,
            class_names=class_names,
        )

    def _read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        path, annot = self._files[i], self._annotations[i]
        img = read_photo(path)
        labels = read_annotation(annot)
        w, h = img.size
        if labels.shape != (h, w):
            raise DataError(
                f"{annot}: annotation is {labels.shape[0]}×{labels.shape[1]} (H×W) but its image "
                f"{path.name} is {h}×{w}"
            )
        if self._size is None and (h, w) != self.image_size:
            eh, ew = self.image_size
            raise DataError(
                f"{path}: expected {eh}×{ew} (H×W) like {self._files[0].name}, got {h}×{w}; "
                "pass size= to resize every image"
            )
        bad = (labels >= self.num_classes) & (labels != self.ignore_index)
        if bad.any():
            raise DataError(
                f"{annot}: found label {int(labels[bad].max())}, expected 0..{self.num_classes - 1} "
                f"or ignore_index = {self.ignore_index}"
            )
        inp = to_network(resize_photo(img, self.image_size))
        return inp, np.ascontiguousarray(resize_labels(labels, self.image_size))

    def _meta(self, i: int) -> dict[str, Any]:
        split = self.identity["split"]
        return {
            "file": f"{split}/{self._files[i].name}",
            "annotation": f"{split}annot/{self._annotations[i].name}",
        }
