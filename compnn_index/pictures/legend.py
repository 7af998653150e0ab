"""Legends: class names beside label maps, source images beside correspondence maps.

Every picture function that draws a legend returns a PIL image whose ``legend`` attribute lists
the :class:`LegendEntry` items drawn (in order), so callers and tests can read what the picture
says without looking at its pixels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from ..errors import QueryError
from .convert import PictureLike, as_rgb, default_palette, label_to_rgb
from .layout import _font

#: Text colour of legends and captions.
INK = (34, 34, 34)


@dataclass(frozen=True)
class LegendEntry:
    """One line of a legend.

    Attributes
    ----------
    label : the text drawn (a class name, or ``#id name``).
    colour : the swatch colour, RGB.
    key : the class index or database image id (None for "other").
    kind : ``"class"``, ``"source"`` or ``"other"``.
    share : fraction of the picture's pixels it covers, when known.
    """

    label: str
    colour: tuple[int, int, int]
    key: int | None = None
    kind: str = "class"
    share: float | None = None

    def text(self) -> str:
        return self.label if self.share is None else f"{self.label}  {self.share:.0%}"


def class_names_for(num_classes: int, names: Sequence[str] | None = None) -> list[str]:
    """Names of ``num_classes`` classes: ``names`` where given, ``class i`` for the rest."""
    names = list(names or [])
    return [str(names[i]) if i < len(names) and names[i] else f"class {i}" for i in range(num_classes)]


def resolve_palette(palette, num_classes: int | None = None) -> np.ndarray:
    """The palette as uint8 (K, 3); :func:`default_palette` when None."""
    if palette is None:
        return default_palette(int(num_classes or 1))
    pal = np.asarray(palette, dtype=np.uint8)
    if pal.ndim != 2 or pal.shape[1] != 3 or len(pal) == 0:
        raise QueryError(f"Expected a (K, 3) palette, got shape {pal.shape}")
    if num_classes is not None and len(pal) < num_classes:  # extend a short palette
        pal = np.vstack([pal, default_palette(num_classes)[len(pal):]])
    return pal


def class_legend(palette, names: Sequence[str] | None = None, *, labels: np.ndarray | None = None,
                 num_classes: int | None = None) -> list[LegendEntry]:
    """Legend entries of a label map's classes.

    Parameters
    ----------
    palette : (K, 3) colours, or None for :func:`default_palette`.
    names : class names (index order); missing ones read ``class i``.
    labels : if given, only the classes present in it are listed, with their pixel share.
    num_classes : number of classes (default: the palette's length).
    """
    k = int(num_classes or (len(palette) if palette is not None else
                            (int(np.max(labels)) + 1 if labels is not None and labels.size else 1)))
    pal = resolve_palette(palette, k)
    text = class_names_for(k, names)
    if labels is None:
        return [LegendEntry(text[c], tuple(int(v) for v in pal[c]), c) for c in range(k)]
    labels = np.asarray(labels)
    ids, counts = np.unique(labels[(labels >= 0) & (labels < k)], return_counts=True)
    total = max(labels.size, 1)
    return [LegendEntry(text[c], tuple(int(v) for v in pal[c]), int(c), share=float(n / total))
            for c, n in zip(ids.tolist(), counts.tolist())]


def legend_panel(entries: Sequence[LegendEntry], *, max_height: int | None = None, font_size: int = 13,
                 swatch: int = 14, title: str | None = None, background=(255, 255, 255)) -> np.ndarray:
    """Draw legend entries as a uint8 (H, W, 3) panel: a swatch and the entry's text per line.

    Lines flow into further columns when ``max_height`` would be exceeded.
    """
    font = _font(font_size)
    line_h = max(swatch, font_size) + 5
    title_h = line_h if title else 0
    n = max(len(entries), 1)
    per_col = n if not max_height else max(1, (max_height - title_h - 8) // line_h)
    cols = -(-n // per_col)
    col_w = [0] * cols
    for i, e in enumerate(entries):
        col_w[i // per_col] = max(col_w[i // per_col], swatch + 6 + int(np.ceil(font.getlength(e.text()))))
    width = max(sum(col_w) + 14 * cols + 4, int(font.getlength(title)) + 12 if title else 0, 20)
    height = title_h + min(n, per_col) * line_h + 8
    img = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((6, 4), title, fill=INK, font=font)
    x0 = 6
    for c in range(cols):
        for j, e in enumerate(entries[c * per_col:(c + 1) * per_col]):
            y = title_h + 4 + j * line_h
            if e.kind == "other":  # hatched grey: "everything else"
                draw.rectangle([x0, y, x0 + swatch, y + swatch], fill=(235, 235, 235), outline=(120, 120, 120))
                for d in range(-swatch, swatch, 4):
                    draw.line([(x0 + max(d, 0), y + max(-d, 0)),
                               (x0 + min(swatch, swatch + d), y + min(swatch, swatch - d))], fill=(120, 120, 120))
            else:
                draw.rectangle([x0, y, x0 + swatch, y + swatch], fill=e.colour, outline=(60, 60, 60))
            draw.text((x0 + swatch + 6, y + (swatch - font_size) // 2 - 1), e.text(), fill=INK, font=font)
        x0 += col_w[c] + 14
    return np.asarray(img)


def beside(picture: PictureLike, entries: Sequence[LegendEntry], *, title: str | None = None,
           gap: int = 8, background=(255, 255, 255)) -> Image.Image:
    """``picture`` with a legend of ``entries`` to its right; the result's ``legend`` lists them."""
    pic = as_rgb(picture)
    panel = legend_panel(entries, max_height=max(pic.shape[0], 80), title=title)
    h = max(pic.shape[0], panel.shape[0])
    canvas = Image.new("RGB", (pic.shape[1] + gap + panel.shape[1], h), background)
    canvas.paste(Image.fromarray(pic), (0, 0))
    canvas.paste(Image.fromarray(panel), (pic.shape[1] + gap, 0))
    canvas.legend = list(entries)
    return canvas


def label_picture(labels: np.ndarray, palette=None, names: Sequence[str] | None = None, *,
                  scale: int = 1, num_classes: int | None = None, all_classes: bool = False) -> Image.Image:
    """A label map drawn with its palette, scaled by ``scale`` (nearest), and its class legend.

    The legend lists the classes present (with their pixel share), or every class with
    ``all_classes``. Returns a PIL image whose ``legend`` holds the :class:`LegendEntry` items.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise QueryError(f"Expected integer labels of shape (H, W), got dtype {labels.dtype} shape {labels.shape}")
    k = num_classes or (len(palette) if palette is not None else int(labels.max()) + 1 if labels.size else 1)
    pal = resolve_palette(palette, k)
    rgb = label_to_rgb(labels, pal)
    if scale != 1:
        rgb = np.asarray(Image.fromarray(rgb).resize((rgb.shape[1] * scale, rgb.shape[0] * scale), Image.NEAREST))
    entries = class_legend(pal, names, labels=None if all_classes else labels, num_classes=k)
    return beside(rgb, entries)
