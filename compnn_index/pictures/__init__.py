"""Explanation pictures: correspondence maps, correspondence lines, label colouring, legends, grids.

Everything returns a PIL image (RGB) or a uint8 ``(H, W, 3)`` array. Images can be given as
uint8 ``(H, W, 3)`` / ``(H, W)`` arrays, float ``(3, H, W)`` arrays in ``[-1, 1]`` (the project's
convention) or PIL images. Pictures with a legend carry its entries in their ``legend`` attribute
(a list of :class:`LegendEntry`).

- ``convert.py``: :func:`to_rgb`, :func:`image_to_uint8`, :func:`label_to_rgb`, :func:`as_rgb`,
  :func:`source_colours`, :func:`default_palette`, :func:`outline`, :func:`outline_region`;
- ``legend.py``: :class:`LegendEntry`, :func:`class_legend`, :func:`legend_panel`,
  :func:`beside`, :func:`label_picture`;
- ``layout.py``: :func:`grid` (pictures with captions);
- ``maps.py``: :func:`correspondence_map`, :func:`correspondence_pairs`;
- ``plots.py``: :func:`quality_vs_throughput` (the comparison plot, matplotlib).
"""
from .convert import (OTHER_COLOUR, PictureLike, as_rgb, default_palette, image_to_uint8, label_to_rgb,
                      outline, outline_region, source_colours, to_rgb)
from .layout import grid
from .legend import LegendEntry, beside, class_legend, class_names_for, label_picture, legend_panel
from .maps import correspondence_map, correspondence_pairs

__all__ = [
    "OTHER_COLOUR",
    "LegendEntry",
    "PictureLike",
    "as_rgb",
    "beside",
    "class_legend",
    "class_names_for",
    "correspondence_map",
    "correspondence_pairs",
    "default_palette",
    "grid",
    "image_to_uint8",
    "label_picture",
    "label_to_rgb",
    "legend_panel",
    "outline",
    "outline_region",
    "source_colours",
    "to_rgb",
]
