"""Explanation pictures: correspondence maps, correspondence lines, label colouring, report grids.

Everything returns a PIL image (RGB) or a uint8 ``(H, W, 3)`` array and draws with PIL and NumPy
only. Images can be given as uint8 ``(H, W, 3)`` / ``(H, W)`` arrays, float ``(3, H, W)`` arrays
in ``[-1, 1]`` (the project's convention) or PIL images.
"""
from __future__ import annotations

import colorsys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .compose import resolve_geometry, source_map, used_mask
from .errors import QueryError
from .search.field import NNField

__all__ = [
    "image_to_uint8",
    "label_to_rgb",
    "as_rgb",
    "source_colours",
    "outline",
    "outline_region",
    "correspondence_map",
    "correspondence_pairs",
    "grid",
]

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


# --------------------------------------------------------------------------- correspondence map


def _lookup(source: Mapping | Sequence | Callable | None, key: int, what: str) -> Any:
    if source is None:
        return None
    try:
        return source(key) if callable(source) else source[key]
    except (KeyError, IndexError) as exc:
        raise QueryError(f"{what}: no entry for database image id {key}") from exc


def correspondence_map(
    field: NNField,
    spec: Any = None,
    *,
    stride: int | None = None,
    region: int | None = None,
    out_size: tuple[int, int],
    db_images: Mapping[int, PictureLike] | Callable[[int], PictureLike],
    query_image: PictureLike | None = None,
    max_sources: int = 8,
    names: Mapping[int, str] | Sequence[str] | Callable[[int], str] | None = None,
    alpha: float = 0.6,
    thumb_height: int | None = None,
) -> Image.Image:
    """Picture of which training image each output pixel came from (CompNN papers, Fig. 7 / 11).

    Left: the output pixels coloured by their source image (:func:`compnn_index.compose.source_map`),
    one colour per top source, grey for the rest, blended over ``query_image`` if given. Right:
    the ``max_sources`` most-used training images, in order of their share of output pixels, each
    with the blocks the field matched in it outlined in its colour (2 px) and the rest faded,
    captioned ``#id name: share``.

    Parameters
    ----------
    field : NNField
    spec : LayerSpec-like, optional
        Alternative to ``stride``/``region``.
    stride, region : int, optional
    out_size : (int, int)
        ``(H, W)`` of the query output.
    db_images : mapping or callable
        Database image id -> picture (uint8 ``(H, W, 3)``, float ``(3, H, W)``, or PIL).
    query_image : picture, optional
        Drawn under the colours (``alpha`` = opacity of the colours); must be ``out_size``.
    max_sources : int
        Number of sources shown with their own colour.
    names : mapping, sequence or callable, optional
        Database image id -> name for the captions.
    alpha : float
    thumb_height : int, optional
        Height of each training-image thumbnail (default: half the map height, two rows).

    Returns
    -------
    PIL.Image.Image (RGB)
    """
    stride, region = resolve_geometry(spec, stride, region)
    if isinstance(max_sources, bool) or not isinstance(max_sources, (int, np.integer)) or max_sources < 1:
        raise QueryError(f"Expected max_sources to be a positive int, got max_sources = {max_sources!r}")
    sm = source_map(field, stride=stride, region=region, out_size=out_size)
    h, w = sm.shape
    ids, counts = np.unique(sm, return_counts=True)
    order = np.lexsort((ids, -counts))  # most pixels first, ties to the lowest id
    top, top_counts = ids[order][:max_sources], counts[order][:max_sources]
    colours = source_colours(len(top))

    by_rank = np.tile(np.array(OTHER_COLOUR, np.uint8), (len(ids), 1))  # colour per unique id
    by_rank[order[:max_sources]] = colours
    left = by_rank[np.searchsorted(ids, sm)]
    if query_image is not None:
        q = as_rgb(query_image)
        if q.shape[:2] != (h, w):
            raise QueryError(f"Expected query_image of out_size {(h, w)}, got shape {q.shape[:2]}")
        left = np.rint(alpha * left + (1.0 - alpha) * q).astype(np.uint8)
    other_share = 1.0 - top_counts.sum() / sm.size

    th = thumb_height or max(32, h // 2)
    thumbs, caps = [], []
    for i, (n, cnt) in enumerate(zip(top.tolist(), top_counts.tolist())):
        img = as_rgb(_lookup(db_images, n, "db_images"))
        mask = used_mask(field, n, stride=stride, region=region, source_size=img.shape[:2])
        size = (max(1, round(img.shape[1] * th / img.shape[0])), th)  # outline at thumbnail scale
        img = np.asarray(Image.fromarray(img).resize(size, Image.BILINEAR))
        mask = np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST))
        thumb = outline_region(img, mask, colours[i])
        thumb[:5] = colours[i]  # colour key along the top edge
        thumbs.append(thumb)
        name = _lookup(names, n, "names")
        caps.append(f"#{n}{' ' + str(name) if name is not None else ''}: {cnt / sm.size:.1%}")

    ncols = -(-len(thumbs) // 2) if len(thumbs) > 2 else len(thumbs)
    rows = [thumbs[i : i + ncols] for i in range(0, len(thumbs), ncols)]
    cap_rows = [caps[i : i + ncols] for i in range(0, len(caps), ncols)]
    legend = "output pixels by source image"
    if other_share > 0:
        legend += f"; grey = other ({other_share:.1%})"
    left_panel = grid([[left]], [[legend]])
    right_panel = grid(rows, cap_rows)
    canvas = Image.new("RGB", (left_panel.width + right_panel.width, max(left_panel.height, right_panel.height)), "white")
    canvas.paste(left_panel, (0, 0))
    canvas.paste(right_panel, (left_panel.width, 0))
    return canvas


# --------------------------------------------------------------------------- correspondence lines


def correspondence_pairs(
    image_a: PictureLike,
    image_b: PictureLike,
    field_ab: NNField,
    spec: Any = None,
    *,
    stride: int | None = None,
    region: int | None = None,
    n_lines: int = 40,
    seed: int = 0,
    gap: int = 16,
) -> Image.Image:
    """Two images side by side, with lines joining a sample of matched points.

    ``field_ab`` matches positions of image A's grid to positions in image B (its image ids are not
    used). Each line joins block centres ``(y*stride + region/2, x*stride + region/2)`` and is
    coloured by its position in A (red grows left to right, green top to bottom), so a smooth
    colour layout in B means the correspondences keep the geometry.

    Parameters
    ----------
    image_a, image_b : picture (see :func:`as_rgb`)
    field_ab : NNField
    spec : LayerSpec-like, optional
    stride, region : int, optional
    n_lines : int
        Number of positions drawn (sampled without replacement; all if fewer).
    seed : int
        Seed of the sample.
    gap : int
        Pixels between the two images.

    Returns
    -------
    PIL.Image.Image (RGB), width ``W_a + gap + W_b``, height ``max(H_a, H_b)``
    """
    stride, region = resolve_geometry(spec, stride, region)
    if not isinstance(field_ab, NNField):
        raise QueryError(f"Expected field_ab to be an NNField, got {type(field_ab).__name__}")
    if isinstance(n_lines, bool) or not isinstance(n_lines, (int, np.integer)) or n_lines < 0:
        raise QueryError(f"Expected n_lines to be an int >= 0, got n_lines = {n_lines!r}")
    a, b = as_rgb(image_a), as_rgb(image_b)
    (ha, wa), (hb, wb) = a.shape[:2], b.shape[:2]
    canvas = Image.new("RGB", (wa + gap + wb, max(ha, hb)), "white")
    canvas.paste(Image.fromarray(a), (0, 0))
    canvas.paste(Image.fromarray(b), (wa + gap, 0))
    hq, wq = field_ab.shape
    take = np.random.default_rng(seed).choice(hq * wq, size=min(n_lines, hq * wq), replace=False)
    qy, qx = np.divmod(take, wq)
    half = region / 2.0
    ya = np.clip(qy * stride + half, 0, ha - 1)
    xa = np.clip(qx * stride + half, 0, wa - 1)
    yb = np.clip(field_ab.y.ravel()[take] * stride + half, 0, hb - 1)
    xb = np.clip(field_ab.x.ravel()[take] * stride + half, 0, wb - 1) + wa + gap
    draw = ImageDraw.Draw(canvas)
    r = 3
    for y0, x0, y1, x1 in zip(ya, xa, yb, xb):
        colour = (int(255 * x0 / max(wa - 1, 1)), int(255 * y0 / max(ha - 1, 1)), int(255 * (1 - x0 / max(wa - 1, 1))))
        draw.line([(x0, y0), (x1, y1)], fill=(0, 0, 0), width=4)  # dark casing for contrast
        draw.line([(x0, y0), (x1, y1)], fill=colour, width=2)
        for cx, cy in ((x0, y0), (x1, y1)):
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour, outline=(0, 0, 0))
    return canvas
