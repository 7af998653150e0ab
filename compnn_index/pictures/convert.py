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



def _colormap(name: str) -> np.ndarray:
    """A qualitative matplotlib colormap's colours as uint8 (n, 3) (``matplotlib.colormaps``)."""
    from matplotlib import colormaps

    return np.rint(np.asarray(colormaps[name].colors)[:, :3] * 255).astype(np.uint8)


def _hues(n: int, *, offset: int = 0) -> np.ndarray:
    """``n`` further colours: golden-ratio hues at alternating brightness."""
    return np.array([
        tuple(int(255 * c) for c in colorsys.hsv_to_rgb(((i + offset) * 0.618033988749895) % 1.0,
                                                        0.8, 0.95 if i % 2 else 0.7))
        for i in range(n)], dtype=np.uint8).reshape(-1, 3)


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
    """``n`` distinct, saturated colours (uint8 ``(n, 3)``) for source images.

    matplotlib's ``tab10`` without its grey (which means "other"), orange first so that the first
    source never disappears on a blue label map, then golden-ratio hues.
    """
    tab10 = _colormap("tab10")[[1, 0, 2, 3, 4, 9, 6, 5, 8]]
    if n <= len(tab10):
        return tab10[:n].copy()
    return np.vstack([tab10, _hues(n - len(tab10))])


def default_palette(n: int) -> np.ndarray:
    """A perceptually distinct label palette of ``n`` colours (uint8 ``(n, 3)``).

    For datasets whose index records no palette: matplotlib's ``tab20`` with the saturated shade
    of each pair first (so 10 classes get 10 clearly different colours), then golden-ratio hues.
    """
    tab20 = _colormap("tab20")
    order = np.r_[0:20:2, 1:20:2]
    base = tab20[order]
    if n <= len(base):
        return base[:n].copy()
    return _farthest(base, n)


def _farthest(base: np.ndarray, n: int) -> np.ndarray:
    """Extend ``base`` to ``n`` colours, each new one the candidate farthest from all chosen
    ("redmean" weighted RGB distance, a cheap approximation of perceived difference)."""
    levels = np.linspace(20, 235, 12)
    cand = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3)

    def dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        rm = (a[:, None, 0] + b[None, :, 0]) / 2.0
        d = a[:, None] - b[None]
        return np.sqrt((2 + rm / 256) * d[..., 0] ** 2 + 4 * d[..., 1] ** 2 + (2 + (255 - rm) / 256) * d[..., 2] ** 2)

    chosen = [c for c in base.astype(np.float64)]
    best = dist(cand, np.asarray(chosen)).min(axis=1)
    while len(chosen) < n:
        i = int(np.argmax(best))
        chosen.append(cand[i])
        best = np.minimum(best, dist(cand, cand[i:i + 1])[:, 0])
    return np.rint(np.asarray(chosen)).astype(np.uint8)


# --------------------------------------------------------------------------- masks and fonts


def _erode(mask: np.ndarray, width: int) -> np.ndarray:
    """Binary erosion by a (2*width+1)^2 square; pixels outside the array count as outside."""
    from scipy import ndimage

    if width <= 0:
        return mask.copy()
    return ndimage.binary_erosion(mask, structure=np.ones((2 * width + 1,) * 2, bool), border_value=0)


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
    """A float (3, H, W) image in [-1, 1] or an int (H, W) label map → uint8 (H, W, 3).

    A label map without a palette is drawn with :func:`default_palette`.
    """
    if arr.ndim == 2:
        if palette is None:
            top = int(np.max(arr)) + 1 if arr.size else 1
            palette = default_palette(max(top, 1))
        return label_to_rgb(arr, np.asarray(palette, dtype=np.uint8))
    return image_to_uint8(arr)
