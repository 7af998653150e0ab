"""Explanation pictures: correspondence maps, correspondence lines, label colouring, report grids.

Everything returns a PIL image (RGB) or a uint8 ``(H, W, 3)`` array and draws with PIL and NumPy
only. Images can be given as uint8 ``(H, W, 3)`` / ``(H, W)`` arrays, float ``(3, H, W)`` arrays
in ``[-1, 1]`` (the project's convention) or PIL images.

- ``convert.py``: :func:`to_rgb`, :func:`image_to_uint8`, :func:`label_to_rgb`, :func:`as_rgb`,
  :func:`source_colours`, :func:`outline`, :func:`outline_region`;
- ``layout.py``: :func:`grid` (pictures with captions);
- ``maps.py``: :func:`correspondence_map`, :func:`correspondence_pairs`.
"""
from .convert import (OTHER_COLOUR, PictureLike, as_rgb, image_to_uint8, label_to_rgb, outline,
                      outline_region, source_colours, to_rgb)
from .layout import grid
from .maps import correspondence_map, correspondence_pairs

__all__ = [
    "OTHER_COLOUR",
    "PictureLike",
    "as_rgb",
    "correspondence_map",
    "correspondence_pairs",
    "grid",
    "image_to_uint8",
    "label_to_rgb",
    "outline",
    "outline_region",
    "source_colours",
    "to_rgb",
]
