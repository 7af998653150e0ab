"""Report layout: grids of pictures with captions."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import QueryError
from .convert import PictureLike, as_rgb



def _font(size: int = 12) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError):  # Pillow without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def _wrap(text: str, font: Any, width: int) -> list[str]:
    """Greedy word wrap of ``text`` to ``width`` pixels (long words are cut)."""
    lines: list[str] = []
    for para in str(text).split("\n"):
        line = ""
        for word in para.split(" "):
            cand = f"{line} {word}" if line else word
            if font.getlength(cand) <= width or not line:
                line = cand
            else:
                lines.append(line)
                line = word
            while font.getlength(line) > width and len(line) > 1:
                cut = len(line) - 1
                while cut > 1 and font.getlength(line[:cut]) > width:
                    cut -= 1
                lines.append(line[:cut])
                line = line[cut:]
        lines.append(line)
    return lines


# --------------------------------------------------------------------------- report grid


def grid(
    images: Sequence[Sequence[PictureLike | None]],
    captions: Sequence[str] | Sequence[Sequence[str]] | None = None,
    *,
    scale: float = 1.0,
    pad: int = 6,
    font_size: int = 12,
    background: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """Lay out rows of pictures with captions.

    Parameters
    ----------
    images : list of rows, each a list of pictures (see :func:`as_rgb`); ``None`` leaves a cell empty
    captions : list of str, or list of rows of str, optional
        A flat list gives column headers, drawn once above the first row; a nested list gives one
        caption under each cell (wrapped to the cell's width).
    scale : float
        Resize factor for every picture (nearest neighbour when enlarging, so label maps stay sharp).
    pad : int
        Pixels between cells and around the border.
    font_size : int
    background : (int, int, int)

    Returns
    -------
    PIL.Image.Image (RGB)
    """
    if not images or any(not isinstance(r, Sequence) or isinstance(r, (str, bytes)) for r in images):
        raise QueryError("Expected images as a non-empty list of rows (lists of pictures)")
    if not scale > 0:
        raise QueryError(f"Expected scale > 0, got scale = {scale!r}")
    per_cell = captions is not None and len(captions) > 0 and not isinstance(captions[0], str)
    if per_cell and len(captions) != len(images):
        raise QueryError(f"Expected one caption row per image row, got {len(captions)} caption rows for {len(images)} rows")

    def prep(p: PictureLike | None) -> Image.Image | None:
        if p is None:
            return None
        img = Image.fromarray(as_rgb(p))
        if scale != 1.0:
            size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
            img = img.resize(size, Image.NEAREST if scale > 1 else Image.BOX)
        return img

    cells = [[prep(p) for p in row] for row in images]
    ncols = max(len(r) for r in cells)
    col_w = [max((r[c].width for r in cells if c < len(r) and r[c] is not None), default=0) for c in range(ncols)]
    row_h = [max((p.height for p in r if p is not None), default=0) for r in cells]
    font = _font(font_size)
    line_h = font_size + 3

    all_caps = [(c, t) for c, t in enumerate(captions or []) if not per_cell] + [
        (c, t) for row in (captions if per_cell else []) for c, t in enumerate(row)
    ]
    for c, text in all_caps:  # widen narrow columns so short captions need not wrap
        if c < ncols and text:
            col_w[c] = max(col_w[c], min(int(np.ceil(max(font.getlength(t) for t in str(text).split("\n")))), 110))

    def lines_for(text: str, c: int) -> list[str]:
        return _wrap(text, font, col_w[c]) if text else []

    header = [lines_for(captions[c], c) if (captions and not per_cell and c < len(captions)) else [] for c in range(ncols)]
    header_h = max((len(h) for h in header), default=0) * line_h
    cap_lines = [
        [lines_for(captions[r][c], c) if per_cell and c < len(captions[r]) else [] for c in range(ncols)]
        for r in range(len(cells))
    ]
    cap_h = [max((len(x) for x in row), default=0) * line_h for row in cap_lines]

    width = pad + sum(w + pad for w in col_w)
    height = pad + (header_h + pad if header_h else 0) + sum(h + ch + pad for h, ch in zip(row_h, cap_h))
    canvas = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(canvas)
    xs = np.cumsum([pad] + [w + pad for w in col_w])[:-1]
    for c, lines in enumerate(header):
        for i, line in enumerate(lines):
            draw.text((int(xs[c]), pad + i * line_h), line, fill=(0, 0, 0), font=font)
    y = pad + (header_h + pad if header_h else 0)
    for r, row in enumerate(cells):
        for c, img in enumerate(row):
            if img is not None:
                canvas.paste(img, (int(xs[c]), y))  # left-aligned, like the captions
            for i, line in enumerate(cap_lines[r][c]):
                draw.text((int(xs[c]), y + row_h[r] + 2 + i * line_h), line, fill=(0, 0, 0), font=font)
        y += row_h[r] + cap_h[r] + pad
    return canvas
