"""Colour palettes for label maps, and conversion between colours and class indices.

The pix2pix Facades label maps colour the 12 CMP classes with a 12-step "jet" colormap, blurred
by JPEG compression. :data:`FACADES_PALETTE` holds the colours those maps *actually* carry (the
median RGB of each nearest-jet cluster, measured over 50 training maps, see
``../shared/data/facades/README.md``); it is used both to read label maps (nearest colour) and to
draw them, so a map drawn with :func:`colorize` reads back exactly and looks like the real data.
The nominal ``jet(i/11)`` colours are *not* a safe matching palette: ``jet(11/11) = (128, 0, 0)``
lies nearer to the measured colour of class 10 than to that of class 11.
"""
from __future__ import annotations

import numpy as np

from ..errors import DataError

FACADES_PALETTE: np.ndarray = np.array(
    [
        [58, 42, 142],
        [0, 0, 222],
        [0, 48, 254],
        [8, 126, 254],
        [35, 244, 242],
        [113, 237, 186],
        [192, 250, 78],
        [249, 239, 22],
        [244, 158, 25],
        [242, 82, 13],
        [177, 2, 2],
        [152, 15, 54],
    ],
    dtype=np.uint8,
)
FACADES_PALETTE.setflags(write=False)

#: Class names for the 12 Facades indices. The real data does not record which index is which
#: CMP class; this is our reading of the real maps (index 1 fills the sky and the sides, 2 the
#: wall, 3 the windows, 7 the shutters, 10 the shop fronts, ...). The synthetic generator draws
#: with exactly these indices.
FACADES_CLASSES: tuple[str, ...] = (
    "molding",     # 0
    "background",  # 1
    "facade",      # 2
    "window",      # 3
    "door",        # 4
    "sill",        # 5
    "balcony",     # 6
    "blind",       # 7
    "deco",        # 8
    "cornice",     # 9
    "shop",        # 10
    "pillar",      # 11
)


def jet_palette(n: int) -> np.ndarray:
    """Return ``n`` colours evenly spaced along the "jet" colormap.

    Parameters
    ----------
    n : int
        Number of colours, at least 1. Colour ``i`` is ``jet(i / (n - 1))``.

    Returns
    -------
    ndarray of uint8, shape (n, 3)
        RGB colours, e.g. ``jet_palette(12)`` gives the nominal Facades colours.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise DataError(f"Expected a palette size n >= 1, but n = {n!r}")
    x = np.linspace(0.0, 1.0, int(n)) if n > 1 else np.zeros(1)
    channels = [np.clip(1.5 - np.abs(4.0 * x - c), 0.0, 1.0) for c in (3.0, 2.0, 1.0)]
    return np.round(np.stack(channels, axis=1) * 255.0).astype(np.uint8)


def _check_palette(palette: np.ndarray) -> np.ndarray:
    palette = np.asarray(palette)
    if palette.ndim != 2 or palette.shape[1] != 3 or palette.shape[0] < 1:
        raise DataError(f"Expected a palette of shape (K, 3) with K >= 1, got shape {palette.shape}")
    if palette.dtype != np.uint8:
        raise DataError(f"Expected a uint8 palette, got dtype {palette.dtype}")
    return palette


def labels_from_colors(rgb: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Convert a colour-coded label map to class indices by nearest palette colour.

    Parameters
    ----------
    rgb : ndarray of uint8, shape (H, W, 3)
        The colour label map (JPEG noise is fine: each pixel goes to the nearest colour).
    palette : ndarray of uint8, shape (K, 3)
        One colour per class, e.g. :data:`FACADES_PALETTE`.

    Returns
    -------
    ndarray of int64, shape (H, W)
        Index of the palette colour nearest (Euclidean in RGB) to each pixel; ties go to the
        lower index.
    """
    rgb = np.asarray(rgb)
    palette = _check_palette(palette)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise DataError(f"Expected an RGB label map of shape (H, W, 3), got shape {rgb.shape}")
    if rgb.dtype != np.uint8:
        raise DataError(f"Expected a uint8 RGB label map, got dtype {rgb.dtype}")
    h, w, _ = rgb.shape
    pixels = rgb.reshape(-1, 3).astype(np.float32)
    pal = palette.astype(np.float32)
    # |x - p|^2 = |x|^2 - 2 x.p + |p|^2; |x|^2 is the same for every p. All terms are integers
    # below 2^24, so float32 is exact and the argmin matches integer arithmetic.
    scores = pixels @ (-2.0 * pal.T)
    scores += (pal * pal).sum(axis=1)
    return scores.argmin(axis=1).astype(np.int64).reshape(h, w)


def colorize(
    labels: np.ndarray, palette: np.ndarray, *, ignore_index: int | None = None
) -> np.ndarray:
    """Draw class indices with a palette.

    Parameters
    ----------
    labels : ndarray of int, shape (H, W) (any shape works)
        Class indices in ``0 .. K-1``.
    palette : ndarray of uint8, shape (K, 3)
        One colour per class.
    ignore_index : int, optional
        A label value outside the palette that is drawn black (e.g. CamVid's void).

    Returns
    -------
    ndarray of uint8, shape labels.shape + (3,)
    """
    labels = np.asarray(labels)
    palette = _check_palette(palette)
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"Expected integer class labels, got dtype {labels.dtype}")
    k = palette.shape[0]
    if labels.size == 0 or (labels.min() >= 0 and labels.max() < k):
        return np.take(palette, labels, axis=0)
    void = labels == ignore_index if ignore_index is not None else np.zeros(labels.shape, bool)
    bad = ((labels < 0) | (labels >= k)) & ~void
    if bad.any():
        value = int(labels[bad].flat[0])
        raise DataError(
            f"Expected labels in 0..{k - 1} for a {k}-colour palette"
            + (f" (or ignore_index = {ignore_index})" if ignore_index is not None else "")
            + f", but found label {value}"
        )
    out = palette[np.where(void, 0, labels)]
    out[void] = 0
    return out
