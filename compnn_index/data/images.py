"""Reading image files into arrays, with errors that name the file at fault."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError

#: File extensions read as images (lower case, compared case-insensitively).
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png")
#: PIL modes accepted for photos (converted to RGB) and for annotations (class indices).
PHOTO_MODES = frozenset({"RGB", "RGBA", "L", "LA", "P", "CMYK", "YCbCr"})
ANNOTATION_MODES = frozenset({"L", "P", "I", "I;16"})
#: Network inputs must be a multiple of this many pixels on each side.
SIZE_MULTIPLE = 32


def natural_key(name: str) -> tuple:
    """Sort key that orders embedded numbers numerically (``2.jpg`` before ``10.jpg``).

    Only ASCII digit runs are numbers (what :func:`compnn_index.checks.parse_int` reads): they
    are the odd items of the split, so every key alternates text, number, text, ...
    """
    parts = re.split(r"([0-9]+)", name)
    return tuple(int(t) if i % 2 else t.lower() for i, t in enumerate(parts))


def list_images(folder: Path) -> list[Path]:
    """Image files in ``folder`` (not recursive), in natural order by name."""
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(files, key=lambda p: natural_key(p.name))


def describe_listing(folder: Path, limit: int = 5) -> str:
    """A short ``a, b, c, ... (N entries)`` listing of a folder for error messages."""
    names = sorted((p.name + ("/" if p.is_dir() else "") for p in folder.iterdir()), key=natural_key)
    if not names:
        return "nothing"
    shown = ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")
    return f"{shown} ({len(names)} entries)"


def header_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot read image header ({exc})") from exc


def open_image(path: Path, *, modes: frozenset[str]) -> Image.Image:
    """Open and fully decode ``path``; raise :class:`DataError` if it is unreadable.

    Parameters
    ----------
    path : Path
        The image file.
    modes : frozenset of str
        Accepted PIL modes (:data:`PHOTO_MODES` or :data:`ANNOTATION_MODES`).
    """
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode not in modes:
                raise DataError(
                    f"{path}: expected an image of mode {' / '.join(sorted(modes))}, "
                    f"got mode {img.mode}"
                )
            return img.copy()
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: unreadable or truncated image ({exc})") from exc


def read_photo(path: Path) -> Image.Image:
    """Decode a photo (or colour label map) as an RGB image."""
    img = open_image(path, modes=PHOTO_MODES)
    return img if img.mode == "RGB" else img.convert("RGB")


def read_annotation(path: Path) -> np.ndarray:
    """Decode a single-channel annotation as int64 class indices ``(H, W)``."""
    img = open_image(path, modes=ANNOTATION_MODES)
    labels = np.asarray(img).astype(np.int64)
    if labels.ndim != 2:
        raise DataError(f"{path}: expected a single-channel annotation, got shape {labels.shape}")
    if labels.size and labels.min() < 0:
        raise DataError(f"{path}: class labels must be >= 0, found {int(labels.min())}")
    return labels


def resize_photo(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Bilinear resize to ``size = (H, W)`` (no-op when already that size)."""
    h, w = size
    return img if img.size == (w, h) else img.resize((w, h), Image.BILINEAR)


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an integer label map to ``size = (H, W)``."""
    h, w = size
    src_h, src_w = labels.shape
    if (src_h, src_w) == (h, w):
        return labels
    rows = np.minimum(((np.arange(h) + 0.5) * src_h / h).astype(np.int64), src_h - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * src_w / w).astype(np.int64), src_w - 1)
    return labels[rows[:, None], cols[None, :]]


def to_network(img: Image.Image | np.ndarray) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)`` → float32 ``(3, H, W)`` in ``[-1, 1]``, C-contiguous."""
    arr = np.asarray(img, dtype=np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1) / 127.5 - 1.0, dtype=np.float32)


def suggest_size(h: int, w: int, multiple: int = SIZE_MULTIPLE) -> tuple[int, int]:
    """Nearest sizes ``(H, W)`` that are multiples of ``multiple`` (at least one multiple)."""
    def snap(v: int) -> int:
        return max(multiple, int(round(v / multiple)) * multiple)
    return snap(h), snap(w)


def check_multiple(path: Path, h: int, w: int, what: str) -> None:
    """Raise unless ``h`` and ``w`` are multiples of :data:`SIZE_MULTIPLE`."""
    if h % SIZE_MULTIPLE or w % SIZE_MULTIPLE:
        sh, sw = suggest_size(h, w)
        raise DataError(
            f"{path}: {what} is {h}×{w} (H×W); height and width must be multiples of "
            f"{SIZE_MULTIPLE}: pass size= to resize, e.g. size=({sh}, {sw}) (--size {sh}x{sw})"
        )
