"""Picture conversions: float images and label maps to RGB, source colours, outlines."""
from __future__ import annotations

import colorsys
from typing import Sequence, Union

import numpy as np
from PIL import Image

from ..errors import QueryError

PictureLike = Union[np.ndarray, Image.Image]

#: Grey for "other" sources (not among the top ``max_sources``).
OTHER_COLOUR = (150, 150, 150)

# matplotlib's tab10 without its grey, then tab20's light shades (again without grey).
_QUALITATIVE = np.array(
    [
        (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
        (140, 86, 75), (227, 119, 194), (188, 189, 34), (23, 190, 207),
        (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
        (196, 156, 148), (247, 182, 210), (219, 219, 141), (158, 218, 229),
    ],
    dtype=np.uint8,
)



# --------------------------------------------------------------------------- conversions


def image_to_uint8(image: np.ndarray) -> np.ndarray:
    """Convert a float ``(3, H, W)`` image in ``[-1, 1]`` to uint8 ``(H, W, 3)``.

    Values outside ``[-1, 1]`` are clipped; ``x`` maps to ``round((x + 1) * 127.5)``.

    Raises
    ------
    QueryError
        If the array is not ``(C, H, W)`` float with C in {1, 3}.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[0] not in (1, 3) or not np.issubdtype(image.dtype, np.floating):
        raise QueryError(f"Expected a float (3, H, W) image in [-1, 1], got dtype {image.dtype} shape {image.shape}")
    out = np.rint((np.clip(image, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
    out = np.moveaxis(out, 0, -1)
    return np.ascontiguousarray(np.repeat(out, 3, axis=-1) if out.shape[-1] == 1 else out)


def label_to_rgb(labels: np.ndarray, palette: np.ndarray, *, other_colour: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """Colour a class-label map with a palette.

    Parameters
    ----------
    labels : ndarray of int, shape (H, W)
    palette : array_like of uint8, shape (K, 3)
    other_colour : (int, int, int)
        Colour of labels outside ``[0, K)`` (e.g. an ignore index).

    Returns
    -------
    ndarray of uint8, shape (H, W, 3)
    """
    labels = np.asarray(labels)
    palette = np.asarray(palette, dtype=np.uint8)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise QueryError(f"Expected integer labels of shape (H, W), got dtype {labels.dtype} shape {labels.shape}")
    if palette.ndim != 2 or palette.shape[1] != 3 or len(palette) == 0:
        raise QueryError(f"Expected a (K, 3) palette, got shape {palette.shape}")
    table = np.vstack([palette, np.asarray(other_colour, np.uint8)[None]])
    idx = np.where((labels >= 0) & (labels < len(palette)), labels, len(palette))
    return table[idx]


def as_rgb(image: PictureLike) -> np.ndarray:
    """Any supported picture as uint8 ``(H, W, 3)``.

    Accepted: PIL image; uint8 ``(H, W, 3)``, ``(H, W, 4)`` or ``(H, W)``; float ``(3, H, W)``
    or ``(1, H, W)`` in ``[-1, 1]``.
    """
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    a = np.asarray(image)
    if a.dtype == np.uint8:
        if a.ndim == 2:
            return np.repeat(a[..., None], 3, axis=-1)
        if a.ndim == 3 and a.shape[-1] in (3, 4):
            return np.ascontiguousarray(a[..., :3])
    elif np.issubdtype(a.dtype, np.floating) and a.ndim == 3 and a.shape[0] in (1, 3):
        return image_to_uint8(a)
    raise QueryError(
        "Expected a picture as uint8 (H, W, 3) / (H, W), float (3, H, W) in [-1, 1] or PIL image, "
        f"got dtype {a.dtype} shape {a.shape}"
    )


def source_colours(n: int) -> np.ndarray:
    """``n`` distinct colours (uint8 ``(n, 3)``): tab10 then tab20's light shades, then hues."""
    if n <= len(_QUALITATIVE):
        return _QUALITATIVE[:n].copy()
    extra = [
        tuple(int(255 * c) for c in colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 0.9))
        for i in range(n - len(_QUALITATIVE))
    ]
    return np.vstack([_QUALITATIVE, np.array(extra, np.uint8)])


# --------------------------------------------------------------------------- masks and fonts


def _erode(mask: np.ndarray, width: int) -> np.ndarray:
    """Binary erosion by a (2*width+1)^2 square; pixels outside the array count as outside."""
    out = mask.copy()
    h, w = mask.shape
    for _ in range(width):
        p = np.pad(out, 1, constant_values=False)
        nxt = p[1:-1, 1:-1].copy()
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                nxt &= p[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
        out = nxt
    return out


def outline(mask: np.ndarray, *, width: int = 2) -> np.ndarray:
    """The inner boundary of a boolean mask, ``width`` pixels thick."""
    mask = np.asarray(mask, bool)
    return mask & ~_erode(mask, width)


def outline_region(
    image: PictureLike, mask: np.ndarray, colour: Sequence[int], *, width: int = 2, dim: float = 0.45
) -> np.ndarray:
    """Draw the boundary of ``mask`` on ``image`` in ``colour`` and fade what lies outside it.

    Parameters
    ----------
    image : picture (see :func:`as_rgb`)
    mask : ndarray of bool, shape (H, W)
    colour : (int, int, int)
    width : int
        Outline thickness in pixels.
    dim : float
        Strength of the fade towards white outside the mask (0 = none).

    Returns
    -------
    ndarray of uint8, shape (H, W, 3)
    """
    rgb = as_rgb(image).astype(np.float32)
    mask = np.asarray(mask, bool)
    if mask.shape != rgb.shape[:2]:
        raise QueryError(f"Expected a mask of the image's shape {rgb.shape[:2]}, got {mask.shape}")
    rgb[~mask] = rgb[~mask] * (1.0 - dim) + 255.0 * dim
    out = rgb.astype(np.uint8)
    out[outline(mask, width=width)] = np.asarray(colour, np.uint8)
    return out

def to_rgb(arr: np.ndarray, palette: np.ndarray | None) -> np.ndarray:
    """A float (3, H, W) image in [-1, 1] or an int (H, W) label map → uint8 (H, W, 3)."""
    if arr.ndim == 2:
        if palette is None:
            raise QueryError("cannot draw a label map: the index has no palette")
        return label_to_rgb(arr, np.asarray(palette, dtype=np.uint8))
    return image_to_uint8(arr)
